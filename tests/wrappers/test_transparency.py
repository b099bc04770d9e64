"""Wrapping changes nothing the caller sees, and the recorded rows are what the env produced."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import relayrl_gym

MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP]


def _run(envs, actions, seed=3):
    out = [envs.reset(seed=seed)]
    for a in actions:
        out.append(envs.step(a))
    return out


def _assert_same(ours, theirs):
    for got, want in zip(ours, theirs):
        assert len(got) == len(want)
        for g, w in zip(got[:-1], want[:-1]):
            np.testing.assert_array_equal(g, w)
            assert np.asarray(g).dtype == np.asarray(w).dtype
        g_info, w_info = got[-1], want[-1]
        assert sorted(g_info) == sorted(w_info)
        for key in w_info:
            if key == "final_obs":
                for a, b in zip(g_info[key], w_info[key]):
                    np.testing.assert_array_equal(a, b)
            elif key != "final_info":
                np.testing.assert_array_equal(g_info[key], w_info[key])


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("router_scale", [0, 2], ids=["inline", "threaded"])
def test_same_results_as_sync_vector_env(mode, router_scale, sink_dir):
    actions = np.random.default_rng(0).integers(0, 2, (300, 3))
    sync = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3, autoreset_mode=mode)
    envs = relayrl_gym.wrap("CartPole-v1", actors=3, autoreset_mode=mode, sink=sink_dir,
                            router_scale=router_scale)
    try:
        assert envs.metadata["autoreset_mode"] == mode
        assert envs.single_observation_space == sync.single_observation_space
        assert envs.action_space == sync.action_space
        assert envs.observation_space == sync.observation_space
        _assert_same(_run(envs, actions), _run(sync, actions))
    finally:
        envs.close()
        sync.close()


def _rows_by_episode(ds):
    table = ds.table.sort_by([("episode_id", "ascending"), ("step", "ascending")])
    return table


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_recorded_rows_equal_what_the_env_returned(mode, sink_dir):
    """Replays the caller's view and rebuilds every expected transition independently."""
    n = 3
    actions = np.random.default_rng(1).integers(0, 2, (400, n))
    envs = relayrl_gym.wrap("CartPole-v1", actors=n, autoreset_mode=mode, sink=sink_dir)
    expected: list[list[tuple]] = [[] for _ in range(n)]
    obs, _ = envs.reset(seed=7)
    pseudo = np.zeros(n, bool)
    for a in actions:
        nxt, rew, term, trunc, info = envs.step(a)
        for i in range(n):
            if pseudo[i]:
                continue  # NEXT_STEP reset pseudo-step: not a transition
            final = nxt[i]
            if mode is AutoresetMode.SAME_STEP and (term[i] or trunc[i]):
                final = info["final_obs"][i]
            expected[i].append((obs[i].copy(), a[i], rew[i], final.copy(), term[i], trunc[i]))
        pseudo = (term | trunc) if mode is AutoresetMode.NEXT_STEP else np.zeros(n, bool)
        obs = nxt
    envs.close()

    ds = relayrl_gym.load(envs.run_path)
    assert len(ds) == sum(len(e) for e in expected)
    t = ds.transitions()
    env_index = ds.table.column("env_index").to_numpy()
    for i in range(n):
        rows = np.flatnonzero(env_index == i)  # written in step order per env
        assert len(rows) == len(expected[i])
        for r, (o, a, rew, no, te, tr) in zip(rows, expected[i]):
            np.testing.assert_array_equal(t.obs[r], o)
            assert t.action[r] == a and t.reward[r] == rew
            np.testing.assert_array_equal(t.next_obs[r], no)
            assert t.terminated[r] == te and t.truncated[r] == tr

    # Episodes: T+1 observations, the last one the episode's final next_obs.
    episodes = list(ds.episodes())
    assert sum(len(ep) for ep in episodes) == len(ds)
    for ep in episodes:
        assert len(ep.observations) == len(ep) + 1
        mine = expected[ep.env_index]
        first = next(k for k, row in enumerate(mine) if np.array_equal(row[0], ep.observations[0]))
        np.testing.assert_array_equal(ep.observations[-1], mine[first + len(ep) - 1][3])
    # Within an episode next_obs[t] == obs[t+1]; steps count from 0.
    table = _rows_by_episode(ds)
    ep_ids = table.column("episode_id").to_numpy()
    steps = table.column("step").to_numpy()
    obs_col = ds.schema.obs.from_arrow(table.column("obs"))
    next_col = ds.schema.obs.from_arrow(table.column("next_obs"))
    same = ep_ids[1:] == ep_ids[:-1]
    np.testing.assert_array_equal(next_col[:-1][same], obs_col[1:][same])
    np.testing.assert_array_equal(steps[1:][same], steps[:-1][same] + 1)
    assert (steps[np.concatenate([[True], ~same])] == 0).all()
    # Every finished episode ends with a terminal flag, and only there.
    done = table.column("terminated").to_numpy() | table.column("truncated").to_numpy()
    assert not done[:-1][same].any()


def test_gymnasium_vector_wrappers_work_on_top(sink_dir):
    envs = gym.wrappers.vector.RecordEpisodeStatistics(
        relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir))
    envs.reset(seed=0)
    seen = 0
    for _ in range(300):
        _, _, _term, _trunc, info = envs.step(envs.action_space.sample())
        if "episode" in info:
            seen += int(info["_episode"].sum())
            assert (info["episode"]["r"][info["_episode"]] > 0).all()
    envs.close()
    assert seen > 5


def test_inner_record_episode_statistics_infos_pass_through_and_are_recorded(sink_dir):
    def make():
        return gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))

    envs = relayrl_gym.wrap(make, actors=2, sink=sink_dir)
    sync = SyncVectorEnv([make] * 2)
    actions = np.random.default_rng(2).integers(0, 2, (200, 2))
    ours, theirs = _run(envs, actions), _run(sync, actions)
    for got, want in zip(ours, theirs):
        if "episode" in want[-1]:
            np.testing.assert_array_equal(got[-1]["episode"]["r"], want[-1]["episode"]["r"])
            np.testing.assert_array_equal(got[-1]["_episode"], want[-1]["_episode"])
    envs.close()
    sync.close()
    ds = relayrl_gym.load(envs.run_path)
    infos = [i for i in ds.table.column("info").to_pylist() if i]
    assert infos and all('"episode"' in i for i in infos)


def test_disabled_autoreset_with_reset_mask(sink_dir):
    from tests_helpers import make_testing_env

    envs = relayrl_gym.wrap(make_testing_env(length=2), actors=2, sink=sink_dir,
                            autoreset_mode="disabled")
    sync = SyncVectorEnv([make_testing_env(length=2)] * 2, autoreset_mode=AutoresetMode.DISABLED)
    for e in (envs, sync):
        e.reset(seed=0)
        e.step(np.array([0, 1]))
        _, _, term, _, _ = e.step(np.array([1, 1]))
        assert term.all()
    with pytest.raises(relayrl_gym.RelayRLError, match="DISABLED"):
        envs.step(np.array([0, 0]))
    ours = envs.reset(options={"reset_mask": np.array([True, False])})
    theirs = sync.reset(options={"reset_mask": np.array([True, False])})
    np.testing.assert_array_equal(ours[0], theirs[0])
    envs.close()
    sync.close()
    assert len(relayrl_gym.load(envs.run_path)) == 4
