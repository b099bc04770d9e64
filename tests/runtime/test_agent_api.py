"""The RelayRL client API on real exported policies, real envs and the real Arrow sink."""

from __future__ import annotations

import threading
import uuid

import gymnasium as gym
import numpy as np
import pyarrow.compute as pc
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import relayrl_gym  # noqa: E402
from relayrl_gym.errors import ConfigError, RelayRLError, StateError  # noqa: E402
from relayrl_gym.policies import ModelModule  # noqa: E402
from relayrl_gym.runtime.builder import AgentBuilder  # noqa: E402

CARTPOLE = gym.make("CartPole-v1")
OBS_SPACE, ACT_SPACE = CARTPOLE.observation_space, CARTPOLE.action_space


def _policy(tmp_path, name="pi", seed=0, head=None, version=0, **kwargs):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    return ModelModule.from_torch(net, OBS_SPACE, ACT_SPACE, path=tmp_path / name,
                                  format="onnx", action_head=head, version=version, **kwargs)


def _agent(tmp_path, actors=4, model=None, **builder):
    b = AgentBuilder().actor_count(actors).default_model(model or _policy(tmp_path)).sink(
        tmp_path / "runs")
    for key, value in builder.items():
        getattr(b, key)(value)
    agent, params = b.build()
    agent.start(params)
    return agent


def test_quick_start_flow_records_what_request_action_returned(tmp_path):
    agent = _agent(tmp_path)
    ids = agent.get_actor_ids()
    envs = [gym.make("CartPole-v1") for _ in ids]
    obs = np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])
    rewards = np.zeros(4)
    log: dict[uuid.UUID, list] = {i: [] for i in ids}
    finished = 0
    for t in range(300):
        if t == 150:
            version = agent.update_model(_policy(tmp_path, "pi2", seed=1))
            assert version == 1 and agent.get_model_version(ids) == [1, 1, 1, 1]
        versions = agent.get_model_version(ids)
        actions = agent.request_action(ids, obs, reward=rewards)
        assert actions.shape == (4,) and all(ACT_SPACE.contains(a) for a in actions)
        for k, i in enumerate(ids):
            log[i].append((obs[k].copy(), int(actions[k]), versions[k]))
        for k, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(int(actions[k]))
            rewards[k] = r
            if term or trunc:
                agent.flag_last_action([ids[k]], reward=r, final_obs=o[None], truncated=trunc)
                log[ids[k]][-1] += (r, o.copy(), term, trunc)
                log[ids[k]].append("end")
                finished += 1
                o, _ = env.reset()
                rewards[k] = 0.0
            elif t < 299:
                log[ids[k]][-1] += (r, o.copy(), False, False)
            obs[k] = o
    agent.shutdown()
    assert finished > 5
    ds = relayrl_gym.load(agent.run_path)
    for i in ids:
        expected = [e for e in log[i] if e != "end" and len(e) == 7]
        mine = ds.table.filter(pc.equal(ds.table["actor_id"], str(i)))
        assert mine.num_rows == len(expected)
        got_obs = np.stack(mine["obs"].to_pylist())
        np.testing.assert_array_equal(got_obs, np.stack([e[0] for e in expected]))
        assert mine["action"].to_pylist() == [e[1] for e in expected]
        assert mine["model_version"].to_pylist() == [e[2] for e in expected]
        assert mine["reward"].to_pylist() == [e[3] for e in expected]
        np.testing.assert_array_equal(np.stack(mine["next_obs"].to_pylist()),
                                      np.stack([e[4] for e in expected]))
        assert mine["terminated"].to_pylist() == [e[5] for e in expected]
    summary = ds.summary()
    assert summary.episodes == finished


def test_one_batched_model_call_per_request_for_actors_sharing_a_model(tmp_path):
    module = _policy(tmp_path)
    calls = []
    step = module.step
    module.step = lambda obs, mask=None, **kw: (calls.append(len(obs)), step(obs, mask))[1]
    agent = _agent(tmp_path, actors=64, model=module)
    calls.clear()
    ids = agent.get_actor_ids()
    agent.request_action(ids, np.zeros((64, 4), np.float32))
    assert calls == [64]
    other = agent.new_actors(2, model=_policy(tmp_path, "other", seed=3))
    calls.clear()
    agent.request_action(ids + other, np.zeros((66, 4), np.float32))
    assert calls == [64]  # the other model's group went through its own module
    agent.shutdown()


def test_sampled_head_records_log_prob_and_masks(tmp_path):
    agent = _agent(tmp_path, actors=3, model=_policy(tmp_path, head="sample"))
    ids = agent.get_actor_ids()
    mask = np.array([[True, False], [False, True], [True, True]])
    for _ in range(5):
        actions = agent.request_action(ids, np.ones((3, 4), np.float32), mask=mask, reward=1.0)
        assert actions[0] == 0 and actions[1] == 1
    agent.flag_last_action(ids, reward=1.0)
    agent.shutdown()
    table = relayrl_gym.load(agent.run_path).table
    assert table.num_rows == 15
    log_probs = [d["log_prob"] for d in table["data"].to_pylist()]
    assert all(lp <= 0 for lp in log_probs)
    masks = table["mask"].to_pylist()
    assert masks[0] == [True, False] and masks[1] == [False, True]


def test_actors_added_removed_and_renamed_while_running(tmp_path):
    agent = _agent(tmp_path, actors=2)
    a, b = agent.get_actor_ids()
    obs = np.zeros((1, 4), np.float32)
    agent.request_action([a], obs)
    agent.request_action([a], obs, reward=1.0)  # one transition of a under its first id
    new_id = uuid.uuid4()
    agent.set_actor_id(a, new_id)
    assert agent.get_actor_ids() == [new_id, b]
    agent.request_action([new_id], obs, reward=2.0)  # completes the step begun as `a`
    c = agent.new_actor()
    agent.request_action([c, b], np.zeros((2, 4), np.float32))
    agent.remove_actor(b)  # its action never got a reward: not recorded
    assert agent.get_actor_ids() == [new_id, c]
    with pytest.raises(ConfigError, match="unknown actor id"):
        agent.request_action([b], obs)
    with pytest.raises(ConfigError, match="already in use"):
        agent.set_actor_id(new_id, c)
    agent.flag_last_action([new_id, c], reward=3.0)
    agent.shutdown()
    table = relayrl_gym.load(agent.run_path).table
    rows = list(zip(table["actor_id"].to_pylist(), table["reward"].to_pylist()))
    assert rows.count((str(a), 1.0)) == 1 and (str(new_id), 2.0) in rows
    assert (str(c), 3.0) in rows and not any(r[0] == str(b) for r in rows)


def test_bad_input_is_refused_and_the_agent_keeps_running(tmp_path):
    agent, params = AgentBuilder().default_model(_policy(tmp_path)).sink(None).build()
    with pytest.raises(StateError, match=r"not started; call agent.start\(params\)"):
        agent.get_actor_ids()
    agent.start(params)
    (i,) = agent.get_actor_ids()
    with pytest.raises(ConfigError, match=r"one row per id: shape \(1, 4\), got \(4,\)"):
        agent.request_action([i], np.zeros(4, np.float32))
    with pytest.raises(ConfigError, match="names an actor twice"):
        agent.request_action([i, i], np.zeros((2, 4), np.float32))
    wrong = ModelModule.from_torch(torch.nn.Linear(3, 2), gym.spaces.Box(-1, 1, (3,)),
                                   ACT_SPACE, path=tmp_path / "wrong", format="onnx")
    with pytest.raises(ConfigError, match=r"do not fit the agent's.*old model keeps running"):
        agent.update_model(wrong)
    assert agent.get_model_version([i]) == [0]
    assert agent.request_action([i], np.zeros((1, 4), np.float32)).shape == (1,)
    with pytest.raises(RelayRLError):
        agent.update_model(tmp_path / "no-such-model")
    with pytest.raises(StateError, match="already started"):
        agent.start(params)
    agent.shutdown()
    with pytest.raises(StateError, match="shut down"):
        agent.request_action([i], np.zeros((1, 4), np.float32))
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=None)
    with pytest.raises(StateError, match="belongs to a wrapped env"):
        envs.agent.request_action(envs.agent.get_actor_ids(), np.zeros((2, 4)))
    envs.close()


def test_config_file_sets_sinks_and_cuts_long_trajectories(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(f'[sink]\ntargets = ["{tmp_path / "from-config"}"]\n'
                      "[trajectory]\nmax_length = 3\n")
    agent, params = (AgentBuilder().default_model(_policy(tmp_path)).config_path(config)
                     .build())
    agent.start(params)
    (i,) = agent.get_actor_ids()
    for _ in range(7):
        agent.request_action([i], np.zeros((1, 4), np.float32), reward=1.0)
    agent.shutdown()
    assert agent.run_path.parent == tmp_path / "from-config"
    table = relayrl_gym.load(agent.run_path).table
    assert table["step"].to_pylist() == [0, 1, 2, 0, 1, 2]
    assert table["truncated"].to_pylist() == [False, False, True, False, False, True]


def test_many_threads_requesting_while_actors_come_and_go_then_shutdown(tmp_path):
    agent = _agent(tmp_path, actors=64, router_scale=2)
    ids = agent.get_actor_ids()
    groups = [ids[k::4] for k in range(4)]
    completed = [0] * 4
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker(k):
        rng = np.random.default_rng(k)
        mine = groups[k]
        try:
            for t in range(200):
                obs = rng.standard_normal((len(mine), 4)).astype(np.float32)
                agent.request_action(mine, obs, reward=1.0)
                if t:
                    completed[k] += len(mine)
                if stop.is_set():
                    return
        except StateError:  # shut down during traffic: the expected way out
            return
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for _ in range(20):  # actors come and go beside the traffic
        extra = agent.new_actors(3)
        agent.request_action(extra, np.zeros((3, 4), np.float32))
        for e in extra:
            agent.remove_actor(e)
    for th in threads:
        th.join(timeout=60)
    assert not errors and not any(th.is_alive() for th in threads)
    agent.shutdown()
    table = relayrl_gym.load(agent.run_path).table
    assert table.num_rows == sum(completed)
    keys = list(zip(table["actor_id"].to_pylist(), table["episode_id"].to_pylist(),
                    table["step"].to_pylist()))
    assert len(keys) == len(set(keys))  # nothing recorded twice


def test_shutdown_during_traffic_does_not_deadlock(tmp_path):
    agent = _agent(tmp_path, actors=16, router_scale=1)
    ids = agent.get_actor_ids()
    done = threading.Event()

    def traffic():
        try:
            while True:
                agent.request_action(ids, np.zeros((16, 4), np.float32), reward=1.0)
        except StateError:
            done.set()

    th = threading.Thread(target=traffic)
    th.start()
    agent.shutdown()
    th.join(timeout=30)
    assert done.is_set() and not th.is_alive()


def test_models_from_paths_devices_and_live_worker_scaling(tmp_path):
    _policy(tmp_path, "a", seed=0)
    _policy(tmp_path, "b", seed=5)
    agent, params = (AgentBuilder().actor_count(3).default_model(tmp_path / "a")
                     .default_device("cpu").router_scale(0).sink(tmp_path / "runs").build())
    agent.start(params)
    ids = agent.get_actor_ids() + agent.new_actors(3, model=tmp_path / "b")
    obs = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    inline = agent.request_action(ids, obs)
    agent.scale_throughput(2)  # two inference threads: the two models' groups run at once
    assert agent.router_scale == 2
    assert (agent.request_action(ids, obs, reward=1.0) == inline).all()
    assert any(t.name.startswith("relayrl-infer") for t in threading.enumerate())
    agent.scale_throughput(0)
    assert (agent.request_action(ids, obs, reward=1.0) == inline).all()
    a = ModelModule.load_from_path(tmp_path / "a")
    b = ModelModule.load_from_path(tmp_path / "b")
    np.testing.assert_array_equal(inline, np.concatenate([a.step(obs[:3])[0], b.step(obs[3:])[0]]))
    with pytest.raises(ConfigError, match="`device` must be one of"):
        AgentBuilder().default_device("tpu")
    agent.shutdown()
    assert len(relayrl_gym.load(agent.run_path)) == 12


def test_review_regressions_rewards_versions_and_failed_start(tmp_path):
    agent = _agent(tmp_path, actors=3)
    ids = agent.get_actor_ids()
    obs = np.zeros((3, 4), np.float32)
    agent.request_action(ids, obs)
    with pytest.raises(ConfigError, match=r"`reward` must be one number or one per id \(3\)"):
        agent.request_action(ids, obs, reward=[1.0, 2.0])
    with pytest.raises(ConfigError, match="`ids` is empty"):
        agent.request_action([], np.zeros((0, 4), np.float32))
    agent.request_action(ids, obs, reward=[1.0, 2.0, 3.0])
    # Each new model object gets a version above all earlier ones; a known one keeps its own.
    m1, m2 = _policy(tmp_path, "m1", seed=1), _policy(tmp_path, "m2", seed=2)
    assert agent.update_model(m1, [ids[0]]) == 1
    assert agent.update_model(m2, ids[1]) == 2
    assert agent.get_model_version(ids) == [1, 2, 0]
    extra = agent.new_actor(model=m1)
    assert agent.get_model_version([extra]) == [1]
    agent.shutdown()
    assert relayrl_gym.load(agent.run_path).table["reward"].to_pylist() == [1.0, 2.0, 3.0]

    class DictObsModel:  # a policy whose observations the agent API cannot take
        observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (2,))})
        action_space = ACT_SPACE
        version = 0

        def step(self, obs, mask=None):
            return np.zeros(len(obs["x"]) if isinstance(obs, dict) else 2, np.int64), {}

    before = {t.name for t in threading.enumerate()}
    agent, params = AgentBuilder().default_model(DictObsModel()).sink(tmp_path / "dict").build()
    with pytest.raises(RelayRLError, match="Dict spaces are not supported"):
        agent.start(params)
    assert {t.name for t in threading.enumerate()} == before
    assert not (tmp_path / "dict").exists()


def test_one_reward_for_all_and_one_per_id_mix_in_a_steady_stream(tmp_path):
    # A scalar reward is spread over the actors' rows on the writer thread; arrays, ints,
    # floats and numpy scalars in the same stream each land on the right rows.
    agent = _agent(tmp_path, actors=3)
    ids = agent.get_actor_ids()
    obs = np.zeros((3, 4), np.float32)
    rewards = [0.0, 1.5, np.array([1.0, 2.0, 3.0]), 2, np.float32(0.25), [4.0, 5.0, 6.0], -1.0]
    for reward in rewards:
        agent.request_action(ids, obs, reward=reward)
    agent.flag_last_action(ids, reward=7.0)
    agent.shutdown()
    table = relayrl_gym.load(agent.run_path).table
    per_actor = {}
    for actor, reward in zip(table["actor_id"].to_pylist(), table["reward"].to_pylist()):
        per_actor.setdefault(actor, []).append(reward)
    for k, actor_id in enumerate(ids):
        assert per_actor[str(actor_id)] == [1.5, [1.0, 2.0, 3.0][k], 2.0, 0.25,
                                            [4.0, 5.0, 6.0][k], -1.0, 7.0]
