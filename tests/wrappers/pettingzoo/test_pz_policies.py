"""policies={agent: ModelModule | path | callable}: agents played by real exported models,
batched across game copies, recorded with their versions; the caller's one agent as a
gymnasium.Env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

pytest.importorskip("pettingzoo")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from pettingzoo.classic import rps_v2, tictactoe_v3

import relayrl_gym
from relayrl_gym.errors import ConfigError


def _counting(module, calls):
    """Counts the batched model calls (and their batch sizes) of a real module."""
    step = module.step

    def counted(obs, mask=None, **kwargs):
        calls.append(len(obs))
        return step(obs, mask, **kwargs)

    module.step = counted
    return module


def _legal(infos):
    return np.array([int(np.flatnonzero(m)[0]) for m in infos["action_mask"]])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("caller", ["player_1", "player_2"])
def test_check_env_on_the_single_agent_view(caller, ttt_module, tmp_path):
    other = "player_2" if caller == "player_1" else "player_1"
    env = relayrl_gym.wrap(tictactoe_v3.env(), policies={other: ttt_module()}, sink=tmp_path)
    assert isinstance(env, gym.Env) and env.agent_name == caller
    check_env(env, skip_render_check=True)
    env.close()
    rps = relayrl_gym.wrap(rps_v2.parallel_env(), policies={"player_0": lambda obs: 2},
                           sink=None)
    check_env(rps, skip_render_check=True)
    rps.close()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_policy_agents_recorded_with_version_and_batched(fmt, ttt_module, tmp_path):
    module = _counting(ttt_module(fmt), calls := [])
    envs = relayrl_gym.wrap(tictactoe_v3.env, actors=4, policies={"player_1": module},
                            sink=tmp_path / "runs")
    assert envs.num_envs == 4 and envs.agents == ["player_2"]
    calls.clear()  # wrap's own check of the model's outputs
    _, infos = envs.reset(seed=0)
    assert calls == [4]  # player_1 moves first: one call for the 4 copies
    calls.clear()
    for _ in range(12):
        _, _, _, _, infos = envs.step(_legal(infos))
        assert len(calls) <= 1  # one model call per step for every copy
        calls.clear()
    envs.close()
    rows = relayrl_gym.load(envs.run_path).to_pandas()
    mine, theirs = rows[rows["agent_id"] == "player_2"], rows[rows["agent_id"] == "player_1"]
    assert (mine["model_version"] == -1).all() and (theirs["model_version"] == 0).all()
    assert theirs["actor_id"].nunique() == 4 and mine["actor_id"].nunique() == 4
    # Every recorded move of player_1 is what the model answers for what it saw.
    obs = np.stack([o["observation"] for o in theirs["obs"]])
    masks = np.stack([np.asarray(m) for m in theirs["mask"]])
    expected, _ = module.step(obs, masks)
    assert theirs["action"].tolist() == expected.tolist()


def test_a_policy_given_as_a_path_and_shared_by_two_parallel_copies(ttt_module, tmp_path):
    ttt_module("onnx", name="saved")
    env = relayrl_gym.wrap(tictactoe_v3.env(), policies={"player_1": str(tmp_path / "saved")},
                           sink=tmp_path / "runs")
    obs, info = env.reset(seed=0)
    assert obs["observation"].sum() == 1  # player_1 moved before the caller's first turn
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(int(np.flatnonzero(
            info["action_mask"])[0]))
        done = terminated or truncated
    env.close()
    rows = relayrl_gym.load(env.run_path).to_pandas()
    assert set(rows["agent_id"]) == {"player_1", "player_2"}
    assert rows.groupby("agent_id")["terminated"].sum().tolist() == [1, 1]


def test_hot_swap_changes_model_version(ttt_module, tmp_path):
    first, second = ttt_module("onnx", seed=0), ttt_module("torchscript", seed=1, version=5)
    envs = relayrl_gym.wrap(tictactoe_v3.env, actors=2, policies={"player_2": first},
                            sink=tmp_path / "runs")
    _, infos = envs.reset(seed=0)
    for _ in range(2):
        _, _, _, _, infos = envs.step(_legal(infos))
    assert envs.update_policy("player_2", second) == 5
    with pytest.raises(ConfigError, match="old model keeps running"):
        envs.update_policy("player_2", relayrl_gym.ModelModule.from_torch(
            __import__("torch").nn.Linear(4, 2), gym.spaces.Box(-1, 1, (4,)),
            gym.spaces.Discrete(2)))
    for _ in range(6):
        _, _, _, _, infos = envs.step(_legal(infos))
    envs.close()
    rows = relayrl_gym.load(envs.run_path).to_pandas()
    versions = rows[rows["agent_id"] == "player_2"]["model_version"].tolist()
    assert versions[:2] == [0, 0] and set(versions) == {0, 5} and versions[-1] == 5
    assert versions == sorted(versions)


def test_sampled_actions_record_their_outputs_and_seed_replays(ttt_module, tmp_path):
    module = ttt_module("onnx", action_head="sample")

    def game(seed):
        env = relayrl_gym.wrap(tictactoe_v3.env(), policies={"player_1": module},
                               sink=tmp_path / "runs")
        obs, info = env.reset(seed=seed)
        seen = [obs["observation"].copy()]
        for _ in range(3):
            obs, _, term, trunc, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
            seen.append(obs["observation"].copy())
            if term or trunc:
                break
        env.close()
        return np.stack(seen), relayrl_gym.load(env.run_path).to_pandas()

    (a, rows), (b, _) = game(3), game(3)
    np.testing.assert_array_equal(a, b)  # reset(seed=...) seeds the policy's sampling too
    theirs = rows[rows["agent_id"] == "player_1"]
    assert all(d is not None and "log_prob" in d for d in theirs["data"])
    assert rows[rows["agent_id"] == "player_2"]["data"].isna().all()


def test_parallel_self_play_one_call_per_model_per_step(toy_game, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    game = toy_game()
    module = _counting(relayrl_gym.ModelModule.from_torch(
        net, game.observation_space("a0"), game.action_space("a0")), calls := [])
    # a0 and a2 share one model; the caller plays a1 in 3 copies of the game.
    envs = relayrl_gym.wrap(lambda: toy_game(max_steps=3), actors=3,
                            policies={"a0": module, "a2": module}, sink=tmp_path / "runs")
    calls.clear()
    envs.reset(seed=0)
    envs.step(np.zeros(3, np.int64))
    assert calls == [3]  # step 1: a0 of every copy (a2 has not joined yet)
    envs.step(np.zeros(3, np.int64))
    assert calls == [3, 6]  # step 2: a0 and a2 of every copy, one call
    envs.close()
    rows = relayrl_gym.load(envs.run_path).to_pandas()
    assert set(rows[rows["model_version"] == 0]["agent_id"]) == {"a0", "a2"}
    assert set(rows[rows["model_version"] == -1]["agent_id"]) == {"a1"}


def test_connect_four_single_agent_copies(tmp_path, pz_helpers):
    from pettingzoo.classic import connect_four_v3

    envs = relayrl_gym.wrap(connect_four_v3.env, actors=3, sink=tmp_path,
                            policies={"player_1": pz_helpers["random_legal"](1)})
    assert envs.single_action_space == gym.spaces.Discrete(7)
    _, infos = envs.reset(seed=0)
    ended = 0
    for _ in range(40):
        actions = [int(np.flatnonzero(m)[0]) if m.any() else 0 for m in infos["action_mask"]]
        _, _, terminated, truncated, infos = envs.step(np.array(actions))
        ended += int((terminated | truncated).sum())
    envs.close()
    assert ended >= 3
    rows = relayrl_gym.load(envs.run_path).to_pandas()
    assert rows.groupby("agent_id")["terminated"].sum().min() >= 3  # both sides' last moves


def test_envs_dropped_without_close_leave_no_thread(tmp_path):
    import gc

    par = relayrl_gym.wrap(rps_v2.parallel_env(), sink=tmp_path / "p")
    par.reset(seed=0)
    par.step({agent: 0 for agent in par.agents})
    aec = relayrl_gym.wrap(tictactoe_v3.env(), sink=tmp_path / "a")
    aec.reset(seed=0)
    aec.step(0)
    aec.step(1)  # player_1's first transition ends at its second turn
    aec.step(2)
    single = relayrl_gym.wrap(tictactoe_v3.env(), policies={"player_2": lambda o: 1},
                              sink=tmp_path / "s")
    single.reset(seed=0)
    single.step(0)
    paths = [par.run_path, aec.run_path, single.run_path]
    del par, aec, single
    gc.collect()  # the conftest fixture then checks that no relayrl thread is left
    # Dropped, not closed: what each recorded was still flushed.
    assert [len(relayrl_gym.load(path)) for path in paths] == [2, 2, 1]


@pytest.mark.parametrize("first", ["argmax-model", "callable"])
def test_hot_swap_to_other_extra_outputs_is_refused_and_the_run_stays_whole(first, ttt_module,
                                                                           tmp_path):
    # The run's `data` column is typed at wrap time (null here: no extra outputs); a model
    # that samples (log-prob outputs) would make every batch holding its rows unwritable.
    opponent = (ttt_module("onnx") if first == "argmax-model" else
                (lambda obs: int(np.flatnonzero(obs["action_mask"])[0])))
    envs = relayrl_gym.wrap(tictactoe_v3.env, actors=2, policies={"player_1": opponent},
                            sink=tmp_path / "runs")
    _, infos = envs.reset(seed=0)
    with pytest.raises(ConfigError, match=r"extra outputs .* differ from the run's \(null\); "
                                          r"the old model keeps running"):
        envs.update_policy("player_1", ttt_module("onnx", seed=1, action_head="sample"))
    assert envs.update_policy("player_1", ttt_module("torchscript", seed=2, version=7)) == 7
    for _ in range(4):
        _, _, _, _, infos = envs.step(_legal(infos))
    envs.close()
    rows = relayrl_gym.load(envs.run_path).to_pandas()
    theirs = rows[rows["agent_id"] == "player_1"]
    assert len(theirs) >= 6 and theirs["data"].isna().all()
    assert set(theirs["model_version"]) <= {-1, 0, 7} and theirs["model_version"].iloc[-1] == 7


@pytest.mark.parametrize("head", ["argmax", "sample"])
def test_a_masked_policy_never_plays_an_illegal_move(head, ttt_module, tmp_path):
    # The untrained net prefers some cells whatever the board: without the mask it would play
    # taken cells (and TerminateIllegalWrapper would end those games) in most games.
    envs = relayrl_gym.wrap(tictactoe_v3.env, actors=8, sink=tmp_path,
                            policies={"player_1": ttt_module("onnx", action_head=head)})
    _, infos = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(150):
        actions = [int(rng.choice(np.flatnonzero(m))) if m.any() else 0
                   for m in infos["action_mask"]]
        _, _, _, _, infos = envs.step(np.array(actions))
    envs.close()
    rows = relayrl_gym.load(envs.run_path).to_pandas()
    theirs = rows[rows["agent_id"] == "player_1"]
    assert theirs["episode_id"].nunique() >= 100 and len(theirs) >= 300
    assert all(np.asarray(mask)[action] for mask, action in zip(theirs["mask"],
                                                                 theirs["action"]))
    # no game ended by an illegal move: every finished game has a winner or a full board
    last = theirs[theirs["terminated"]]
    boards = [o["observation"].sum() + 1 for o in last["obs"]]  # marks after its last move
    assert all(r != 0 or b == 9 for r, b in zip(last["reward"], boards))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("turn_based", [False, True], ids=["parallel", "aec"])
@pytest.mark.parametrize("caller", ["a0", "a2"], ids=["dies-early", "joins-late"])
def test_check_env_on_an_agent_that_dies_early_or_joins_late(caller, turn_based, toy_game,
                                                              tmp_path):
    from pettingzoo.utils.conversions import parallel_to_aec

    others = {a: (lambda obs: 1) for a in ("a0", "a1", "a2") if a != caller}
    make = (lambda: parallel_to_aec(toy_game())) if turn_based else toy_game
    env = relayrl_gym.wrap(make, policies=others, sink=tmp_path)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    if turn_based and caller == "a2":
        assert obs[0] == 1.0  # its first turn comes after the first joint step
    done, steps = False, 0
    while not done:
        _, _, terminated, truncated, _ = env.step(1)
        done, steps = terminated or truncated, steps + 1
    env.close()
    # a0 lives 2 joint steps; a2 lives 3 (steps 2-4), its padded first step (parallel view:
    # action ignored) not recorded
    lived = 2 if caller == "a0" else 3
    assert steps == (4 if caller == "a2" and not turn_based else lived)
    rows = relayrl_gym.load(env.run_path).to_pandas()
    mine = rows[rows["agent_id"] == caller].tail(lived)
    assert mine["step"].tolist() == list(range(lived)) and mine["episode_id"].nunique() == 1
    assert mine["obs"].iloc[0][0] == (0.0 if caller == "a0" else 1.0)
