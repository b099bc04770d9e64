"""`relayrl_gym.collect` with random and callable policies."""

from __future__ import annotations

import numpy as np
import pytest

import relayrl_gym


def test_collect_steps_with_a_policy(sink_dir):
    calls = []

    def policy(obs):
        calls.append(obs.shape)
        return (obs[:, 2] > 0).astype(np.int64)  # push toward the pole's lean

    summary = relayrl_gym.collect("CartPole-v1", policy=policy, actors=4, steps=2000,
                                  sink=sink_dir, seed=0)
    assert summary.steps == 2000 and calls[0] == (4, 4)
    ds = relayrl_gym.load(summary.run_path)
    assert len(ds) == summary.steps
    assert summary.episodes == ds.summary().episodes
    assert summary.mean_return == pytest.approx(ds.summary().mean_return)
    assert summary.mean_return > 30  # a lean-following policy beats random (~22)


def test_collect_episodes_random(sink_dir):
    summary = relayrl_gym.collect("CartPole-v1", actors=2, episodes=6, sink=sink_dir, seed=1)
    assert summary.episodes >= 6 and summary.run_id in str(summary.run_path)
    assert "episodes" in str(summary)


def test_collect_needs_a_stop_condition():
    with pytest.raises(relayrl_gym.RelayRLError, match="pass `steps=` or `episodes=`"):
        relayrl_gym.collect("CartPole-v1", sink=None)
    with pytest.raises(relayrl_gym.RelayRLError, match="`steps` must be an int >= 1"):
        relayrl_gym.collect("CartPole-v1", steps=0, sink=None)
