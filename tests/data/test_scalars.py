"""Episode statistics as TensorBoard scalars while collecting (`collect`, `serve`), read back
with TensorBoard's own event reader."""

from __future__ import annotations

import signal
from collections import Counter

import numpy as np
import pytest
from pettingzoo.classic import tictactoe_v3
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tests_helpers import record_random, start_serve

import relayrl_gym
from relayrl_gym.data.scalars import EpisodeStream


def _scalars(logdir):
    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def _finished(ds):
    return [e for e in ds.episodes() if e.terminations[-1] or e.truncations[-1]]


def test_collect_writes_each_episode(tmp_path):
    summary = relayrl_gym.collect("CartPole-v1", actors=2, steps=3000, seed=0,
                                  sink=tmp_path / "runs", tensorboard=tmp_path / "tb")
    scalars = _scalars(tmp_path / "tb")
    returns = [v for _, v in scalars["episode/return"]]
    assert len(returns) == summary.episodes > 50
    assert np.mean(returns) == pytest.approx(summary.mean_return)
    lengths = [v for _, v in scalars["episode/length"]]
    assert lengths == returns  # CartPole pays 1 a step
    steps = [s for s, _ in scalars["episode/return"]]
    assert steps == sorted(steps) and steps[-1] <= summary.steps
    assert Counter(returns) == Counter(e.total_reward for e in _finished(
        relayrl_gym.load(summary.run_path)))


@pytest.mark.parametrize("rows", [1, 7, 4096])
def test_episode_stream_finds_what_episodes_gives(rows, sink_dir):
    envs = record_random(sink_dir, steps=200)
    ds = relayrl_gym.load(envs.run_path)
    stream = EpisodeStream()
    found = []
    for batch in ds.record_batches(list(EpisodeStream.COLUMNS)):
        for start in range(0, batch.num_rows, rows):  # however the rows arrive
            found += stream.feed(batch.slice(start, rows))
    want = _finished(ds)
    assert Counter((e.actor_id, e.episode_id, e.episode_return, e.length) for e in found) == \
        Counter((e.actor_id, e.episode_id, e.total_reward, len(e)) for e in want)


def test_episode_stream_of_a_game_names_its_agents(sink_dir):
    env = relayrl_gym.wrap(tictactoe_v3.env(), sink=sink_dir)
    rng = np.random.default_rng(0)
    for game in range(6):
        env.reset(seed=game)
        for _agent in env.agent_iter():
            obs, _, terminated, truncated, _ = env.last()
            env.step(None if terminated or truncated else
                     int(rng.choice(np.flatnonzero(obs["action_mask"]))))
    env.close()
    ds = relayrl_gym.load(env.run_path)
    found = EpisodeStream().feed(ds.to_table(list(EpisodeStream.COLUMNS)).combine_chunks()
                                 .to_batches()[0])
    assert Counter(e.agent_id for e in found) == {"player_1": 6, "player_2": 6}
    assert sorted(e.episode_return for e in found) == sorted(
        e.total_reward for e in _finished(ds))


def test_serve_writes_the_episodes_it_receives(tmp_path):
    pytest.importorskip("zmq")
    serve, endpoint, _ = start_serve(tmp_path, "--sink", "collected", "--stats-every", "0.2",
                                     "--tensorboard", "tb")
    try:
        envs = record_random(f"zmq+{endpoint}", steps=400)  # close(): every row acknowledged
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err
    ds = relayrl_gym.load(tmp_path / "collected" / envs.run_id)
    returns = [v for _, v in _scalars(tmp_path / "tb")["episode/return"]]
    assert Counter(returns) == Counter(e.total_reward for e in _finished(ds))


def test_collect_that_fails_leaves_no_event_file(tmp_path):
    with pytest.raises(relayrl_gym.errors.ConfigError):
        relayrl_gym.collect("CartPole-v1", actors=0, steps=10, tensorboard=tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


def test_episodes_whose_end_never_comes_are_let_go(sink_dir):
    envs = record_random(sink_dir, steps=200)
    ds = relayrl_gym.load(envs.run_path)
    stream = EpisodeStream(max_open=2)
    table = ds.to_table(list(EpisodeStream.COLUMNS))
    not_done = table.filter(~(table.column("terminated").to_numpy()
                              | table.column("truncated").to_numpy()))
    for batch in not_done.to_batches(max_chunksize=1):  # no episode ever ends
        assert stream.feed(batch) == []
    assert stream.in_progress == 2  # bounded, whatever is fed
