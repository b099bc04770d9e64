"""The SB3 front end: real SB3 algorithms train on it exactly as on DummyVecEnv, all recorded."""

from __future__ import annotations

import subprocess
import sys
import warnings
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from tests_helpers import make_testing_env

import relayrl_gym
from relayrl_gym.data.columns import decode
from relayrl_gym.errors import ConfigError, MissingDependencyError, StateError

pytest.importorskip("stable_baselines3")
import torch
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecCheckNan,
    VecEnv,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
)

from relayrl_gym.wrappers.sb3 import RelayRLSB3VecEnv

FLAT_DICT = spaces.Dict({"pos": spaces.Box(-1, 1, (2,), np.float32), "flag": spaces.Discrete(2)})

ENVS = {
    # (factory, action sampler seed space): truncation, termination, Box actions, Dict obs, infos
    "cartpole-truncating": lambda: gym.make("CartPole-v1", max_episode_steps=15),
    "pendulum": lambda: gym.make("Pendulum-v1", max_episode_steps=12),
    "dict-obs-infos": make_testing_env(obs_space=FLAT_DICT, info=True, truncate=True, length=4),
}


def _dummy(make, n, monitor=True):
    return DummyVecEnv([(lambda: Monitor(make())) if monitor else make for _ in range(n)])


def _without_time(info):
    info = dict(info)
    if "episode" in info:
        info["episode"] = {k: v for k, v in info["episode"].items() if k != "t"}
    return info


def _assert_step_equal(ours, theirs):
    obs, rew, done, infos = ours
    d_obs, d_rew, d_done, d_infos = theirs
    np.testing.assert_equal(obs, d_obs)
    assert rew.dtype == d_rew.dtype == np.float32 and done.dtype == d_done.dtype == np.bool_
    np.testing.assert_array_equal(rew, d_rew)
    np.testing.assert_array_equal(done, d_done)
    assert len(infos) == len(d_infos)
    for got, want in zip(infos, d_infos):
        got, want = _without_time(got), _without_time(want)
        assert sorted(got) == sorted(want)
        np.testing.assert_equal(got, want)


@pytest.mark.parametrize("monitor", [True, False], ids=["monitor", "bare"])
@pytest.mark.parametrize("name", list(ENVS))
@pytest.mark.parametrize("router_scale", [0, 3], ids=["inline", "threaded"])
def test_same_steps_as_dummy_vec_env(name, router_scale, monitor, sink_dir):
    """Step by hand: obs, float32 rewards, dones, infos (terminal_observation, TimeLimit.truncated,
    Monitor's episode when the factory has one) and reset_infos all equal DummyVecEnv's over
    the same factory."""
    make, n = ENVS[name], 3
    factory = (lambda: Monitor(make())) if monitor else make
    ours = relayrl_gym.wrap(factory, actors=n, api="sb3", sink=sink_dir,
                            router_scale=router_scale)
    theirs = _dummy(make, n, monitor)
    try:
        assert ours.observation_space == theirs.observation_space
        assert ours.action_space == theirs.action_space and ours.num_envs == n
        assert ours.seed(11) == theirs.seed(11) == [11, 12, 13]
        np.testing.assert_equal(ours.reset(), theirs.reset())
        np.testing.assert_equal(ours.reset_infos, theirs.reset_infos)
        ours.action_space.seed(5)
        saw = {"truncated": 0, "terminated": 0}
        for _ in range(40):
            actions = np.stack([ours.action_space.sample() for _ in range(n)])
            step = ours.step(actions)
            _assert_step_equal(step, theirs.step(actions))
            np.testing.assert_equal(ours.reset_infos, theirs.reset_infos)
            for info, done in zip(step[3], step[2]):
                if done:
                    saw["truncated" if info["TimeLimit.truncated"] else "terminated"] += 1
        np.testing.assert_equal(ours.reset(), theirs.reset())  # seeds were used once
        if name == "cartpole-truncating":  # the others only truncate
            assert saw["terminated"] > 0
        assert saw["truncated"] > 0
    finally:
        ours.close()
        theirs.close()


def test_ppo_learns_exactly_as_on_dummy_vec_env(sink_dir):
    """Same seed: same rollout buffer (rewards bootstrapped on truncation) and parameters."""
    def make():
        return gym.make("CartPole-v1", max_episode_steps=20)

    def train(env):
        model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=2, seed=3)
        model.learn(total_timesteps=3 * 64 * 2)
        return model

    ours = train(relayrl_gym.wrap(lambda: Monitor(make()), actors=2, api="sb3", sink=sink_dir))
    theirs = train(_dummy(make, 2))
    ours.env.close()
    theirs.env.close()
    for field in ("observations", "actions", "rewards", "episode_starts", "values",
                  "advantages", "returns"):
        np.testing.assert_array_equal(getattr(ours.rollout_buffer, field),
                                      getattr(theirs.rollout_buffer, field), err_msg=field)
    mine, want = ours.policy.state_dict(), theirs.policy.state_dict()
    assert all(torch.equal(mine[k], want[k]) for k in want)
    assert [(e["r"], e["l"]) for e in ours.ep_info_buffer] == \
        [(e["r"], e["l"]) for e in theirs.ep_info_buffer]
    assert len(relayrl_gym.load(ours.env.run_path)) == ours.num_timesteps


class _Seen(BaseCallback):
    """Records what the algorithm got back from each env.step (as its collect loop saw it)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple] = []

    def _on_step(self) -> bool:
        loc = self.locals
        self.steps.append((np.array(loc["new_obs"]), np.array(loc["rewards"]),
                           np.array(loc["dones"]), [dict(i) for i in loc["infos"]]))
        return True


ALGOS = {
    "ppo": (PPO, "CartPole-v1", {"n_steps": 32, "batch_size": 32, "n_epochs": 1}, 128),
    "a2c": (A2C, "CartPole-v1", {"n_steps": 8}, 128),
    "dqn": (DQN, "CartPole-v1", {"learning_starts": 40, "train_freq": 4, "buffer_size": 500}, 128),
    "sac-box": (SAC, "Pendulum-v1", {"learning_starts": 50, "buffer_size": 500,
                                     "batch_size": 32}, 120),
}


@pytest.mark.parametrize("algo", list(ALGOS))
def test_learn_records_exactly_what_sb3_saw(algo, sink_dir):
    cls, env_id, kwargs, steps = ALGOS[algo]
    n = 2
    env = relayrl_gym.wrap(env_id, actors=n, api="sb3", sink=sink_dir, max_episode_steps=30)
    seen = _Seen()
    model = cls("MlpPolicy", env, seed=1, **kwargs).learn(total_timesteps=steps, callback=seen)
    env.close()
    ds = relayrl_gym.load(env.run_path)
    assert len(ds) == model.num_timesteps == n * len(seen.steps)
    assert ds.summary().episodes == sum(int(s[2].sum()) for s in seen.steps)

    table = ds.table.sort_by([("env_index", "ascending"), ("episode_id", "ascending"),
                              ("step", "ascending")])
    t = SimpleNamespace(**decode(table, ds.schema))
    env_index = table.column("env_index").to_numpy()
    for i in range(n):
        rows = np.flatnonzero(env_index == i)
        assert len(rows) == len(seen.steps)
        for r, (new_obs, rewards, dones, infos) in zip(rows, seen.steps):
            assert np.float32(t.reward[r]) == rewards[i]
            assert bool(t.terminated[r] or t.truncated[r]) == dones[i]
            if dones[i]:
                np.testing.assert_array_equal(t.next_obs[r], infos[i]["terminal_observation"])
                assert bool(t.truncated[r] and not t.terminated[r]) == \
                    infos[i]["TimeLimit.truncated"]
            else:
                np.testing.assert_array_equal(t.next_obs[r], new_obs[i])


def test_recorded_rows_equal_the_gymnasium_front_end(tmp_path):
    """The SB3 front end changes nothing that is recorded: same seed and actions, same rows."""
    make = ENVS["dict-obs-infos"]
    actions = np.random.default_rng(0).integers(0, 2, (25, 2))
    gym_envs = relayrl_gym.wrap(make, actors=2, sink=tmp_path / "gym", autoreset_mode="same_step")
    gym_envs.reset(seed=4)
    for a in actions:
        gym_envs.step(a)
    gym_envs.close()
    sb3_env = relayrl_gym.wrap(make, actors=2, api="sb3", sink=tmp_path / "sb3")
    sb3_env.seed(4)
    sb3_env.reset()
    for a in actions:
        sb3_env.step(a)
    sb3_env.close()
    a = relayrl_gym.load(gym_envs.run_path).table
    b = relayrl_gym.load(sb3_env.run_path).table
    skip = {"run_id", "actor_id", "timestamp"}
    assert a.num_rows == b.num_rows == 50
    for column in a.column_names:
        if column not in skip:
            assert a.column(column).equals(b.column(column)), column


def test_seed_and_options_are_used_at_the_next_reset_only(sink_dir):
    make = ENVS["cartpole-truncating"]
    ours = relayrl_gym.wrap(make, actors=3, api="sb3", sink=sink_dir)
    theirs = _dummy(make, 3)
    try:
        for env in (ours, theirs):
            env.seed(7)
            env.set_options([{"low": -0.01, "high": 0.01}, {}, {"low": -0.3, "high": 0.3}])
        first = ours.reset()
        np.testing.assert_array_equal(first, theirs.reset())
        assert np.abs(first[0]).max() <= 0.01 and np.abs(first[2]).max() > 0.05
        np.testing.assert_array_equal(ours.reset(), theirs.reset())  # no seeds, no options
        for env in (ours, theirs):
            env.seed(7)
            env.set_options({"low": -0.2, "high": 0.2})  # one dict: the same for every env
        again = ours.reset()
        np.testing.assert_array_equal(again, theirs.reset())
        assert np.abs(again).max() > 0.05
    finally:
        ours.close()
        theirs.close()


def test_attr_and_method_calls_with_indices_run_on_the_actor_threads(sink_dir):
    env = relayrl_gym.wrap(make_testing_env(length=5), actors=3, api="sb3", sink=sink_dir,
                           router_scale=3)
    try:
        assert env.get_attr("length") == [5, 5, 5]
        env.set_attr("length", 2, indices=[1])
        assert env.get_attr("length") == [5, 2, 5]
        assert env.get_attr("length", indices=1) == [2]
        assert env.has_attr("length") and not env.has_attr("no_such_attribute")
        env.reset()
        frames = env.env_method("render", indices=[0, 2])
        assert len(frames) == 2 and frames[0].shape == (4, 4, 3)
        _, _, dones, _ = env.step(np.array([0, 1, 0]))
        _, _, dones, _ = env.step(np.array([0, 1, 0]))
        assert dones.tolist() == [False, True, False]
        import threading
        main = threading.get_ident()
        assert all(main not in threads for threads in env.get_attr("threads"))
    finally:
        env.close()


def test_monitor_statistics_and_env_is_wrapped(sink_dir):
    env = relayrl_gym.wrap("CartPole-v1", actors=2, api="sb3", sink=sink_dir)
    monitored = relayrl_gym.wrap(lambda: Monitor(gym.make("CartPole-v1")), actors=2, api="sb3",
                                 sink=None)
    try:
        # Monitor: reported as wrapped, because this VecEnv adds Monitor's info["episode"].
        assert env.env_is_wrapped(Monitor) == [True, True]
        assert env.env_is_wrapped(gym.wrappers.TimeLimit) == [True, True]
        assert env.env_is_wrapped(gym.wrappers.ClipAction, indices=[0]) == [False]
        model = PPO("MlpPolicy", env, n_steps=16, batch_size=32, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "not wrapped with a Monitor" warning
            rewards, lengths = evaluate_policy(model, env, n_eval_episodes=4,
                                               return_episode_rewards=True)
        assert rewards == [float(x) for x in lengths]  # CartPole: +1 per step
        # A real Monitor is kept: its own statistics come through, none are added.
        monitored.reset()
        ends = []
        while len(ends) < 2:
            _, _, dones, infos = monitored.step(np.array([0, 0]))
            if dones[0]:
                ends.append(infos[0]["episode"])
        assert [e["r"] for e in ends] == monitored.get_attr("episode_returns")[0][:2]
    finally:
        env.close()
        monitored.close()


def test_sb3_vec_env_wrappers_stack_on_top(sink_dir):
    env = relayrl_gym.wrap("CartPole-v1", actors=4, api="sb3", sink=sink_dir)
    assert isinstance(env, VecEnv)
    try:
        with pytest.warns(UserWarning, match="the `Monitor` statistics will be ?overwritten"):
            monitor = VecMonitor(env)  # true: VecMonitor's statistics replace ours
        stacked = VecCheckNan(VecNormalize(VecFrameStack(monitor, n_stack=2)))
        obs = stacked.reset()
        assert obs.shape == (4, 8)
        for _ in range(30):
            obs, rewards, dones, _infos = stacked.step(np.array([0, 1, 0, 1]))
            assert obs.shape == (4, 8) and rewards.shape == dones.shape == (4,)
        env.flush()
        assert len(relayrl_gym.load(env.run_path)) == 4 * 30
        assert env.agent.router_scale >= 0 and env.run_id in str(env.run_path)
    finally:
        env.close()
    stacked.close()  # idempotent, also through the wrappers
    assert env.closed


def test_rendering_rgb_array(sink_dir):
    env = relayrl_gym.wrap(make_testing_env(render_mode="rgb_array"), actors=4, api="sb3",
                           sink=sink_dir, router_scale=2)
    try:
        assert env.render_mode == "rgb_array"
        assert env.metadata["render_modes"] == ["rgb_array"]
        env.reset()
        images = env.get_images()
        assert len(images) == 4 and images[0].shape == (4, 4, 3)
        assert env.render().shape == (8, 8, 3)  # tiled 2 x 2
        assert env.render("rgb_array").shape == (8, 8, 3)
    finally:
        env.close()


def test_as_sb3_switches_a_fresh_env_and_refuses_one_reset_in_another_mode(sink_dir):
    fresh = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir)
    used = relayrl_gym.wrap("CartPole-v1", actors=2, sink=None)
    try:
        sb3_env = fresh.as_sb3()
        assert isinstance(sb3_env, RelayRLSB3VecEnv)
        assert fresh.autoreset_mode is AutoresetMode.SAME_STEP
        assert sb3_env.run_id == fresh.run_id and sb3_env.vector_env is fresh
        PPO("MlpPolicy", sb3_env, n_steps=16, batch_size=32, n_epochs=1, seed=0).learn(32)
        used.reset(seed=0)
        with pytest.raises(StateError, match=r"as_sb3\(\) needs autoreset_mode 'same_step'.*"
                                             r"already reset in 'next_step' mode"):
            used.as_sb3()
        with pytest.raises(ConfigError, match="needs a RelayRLVectorEnv in SAME_STEP"):
            RelayRLSB3VecEnv(used)
    finally:
        fresh.close()
        used.close()
    assert len(relayrl_gym.load(fresh.run_path)) == 32


def test_errors_a_user_can_meet(sink_dir):
    with pytest.raises(ConfigError, match=r"`api` must be one of 'gymnasium', 'sb3', got 'sb2'"):
        relayrl_gym.wrap("CartPole-v1", api="sb2")
    with pytest.raises(ConfigError, match=r"api='sb3' resets a finished env in the same step.*"
                                          r"got 'next_step'"):
        relayrl_gym.wrap("CartPole-v1", api="sb3", autoreset_mode="next_step")
    env = relayrl_gym.wrap("CartPole-v1", actors=2, api="sb3", sink=sink_dir)
    with pytest.raises(RuntimeError, match="Tried to step environment that needs reset"):
        env.step(np.array([0, 1]))  # Monitor's own error, as under make_vec_env
    env.reset()
    with pytest.raises(StateError, match=r"step_wait\(\) called without a pending step_async"):
        env.step_wait()
    with pytest.warns(UserWarning, match="get_images.. needs render_mode='rgb_array'"):
        assert env.get_images() == [None, None]
    with pytest.raises(ValueError, match=r"holds 1 actions, expected 2"):
        env.step(np.array([0]))  # too few: no env steps (DummyVecEnv raises IndexError midway)
    env.step(np.array([0, 1]))  # still usable
    env.close()
    with pytest.raises(StateError, match="this env is closed"):
        env.step(np.array([0, 1]))
    with pytest.raises(StateError, match="this env is closed"):
        env.get_attr("render_mode")
    closed = relayrl_gym.wrap("CartPole-v1", actors=1, sink=None)
    closed.close()
    with pytest.raises(StateError, match="this env is closed"):
        closed.as_sb3()


def test_missing_sb3_names_the_extra(monkeypatch, sink_dir):
    for name in [m for m in sys.modules if m.startswith(("stable_baselines3",
                                                         "relayrl_gym.wrappers.sb3"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "relayrl-gym\[sb3\]"'):
        relayrl_gym.wrap("CartPole-v1", actors=1, api="sb3", sink=sink_dir)
    assert not sink_dir.exists()  # checked before any env or run directory is made
    envs = relayrl_gym.wrap("CartPole-v1", actors=1, sink=None)
    with pytest.raises(MissingDependencyError, match=r"'stable_baselines3' is not installed"):
        envs.as_sb3()
    assert envs.autoreset_mode is AutoresetMode.NEXT_STEP  # left as it was
    envs.close()


def test_import_relayrl_gym_does_not_import_sb3_or_torch():
    code = ("import sys, relayrl_gym; relayrl_gym.wrap('CartPole-v1', sink=None).close(); "
            "print(sorted(m for m in ('stable_baselines3', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
