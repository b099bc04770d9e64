"""EpisodeTracker: the episode ids and steps every front end records."""

import itertools

import gymnasium as gym
import numpy as np
import pytest

import relayrl_gym
from relayrl_gym.core.episodes import EpisodeTracker


def _tracker(slots=4):
    return EpisodeTracker(slots, itertools.count().__next__)


def test_arrays_given_away_never_change():
    tracker = _tracker()
    tracker.start()
    held = [tracker.ids, tracker.steps]
    before = [a.copy() for a in held]
    tracker.advance()
    tracker.advance([1, 2])
    tracker.end(np.array([True, False, False, True]))
    tracker.start_missing()
    tracker.set(np.array([2]), np.array([99]), np.array([7]))
    tracker.move(1, 5)
    for array, copy in zip(held, before):
        np.testing.assert_array_equal(array, copy)


def test_start_advance_end_and_lazy_start():
    tracker = _tracker(3)
    assert tracker.ids.tolist() == [-1, -1, -1]
    tracker.start_missing([0, 2])
    assert tracker.ids.tolist() == [0, -1, 1]
    tracker.advance([0, 2])
    tracker.advance([2])
    assert tracker.steps.tolist() == [1, 0, 2]
    tracker.start_missing()  # only slot 1 had no episode
    assert tracker.ids.tolist() == [0, 2, 1] and tracker.steps.tolist() == [1, 0, 2]
    tracker.end([2])
    assert tracker.ids.tolist() == [0, 2, -1] and tracker.steps.tolist() == [1, 0, 0]
    tracker.start(np.array([True, False, True]))  # a bool mask selects slots too
    assert tracker.ids.tolist() == [3, 2, 4] and tracker.steps.tolist() == [0, 0, 0]


def test_grow_and_move_keep_episodes():
    tracker = _tracker(2)
    tracker.start()
    tracker.advance()
    tracker.move(0, 4)  # grows to 5 slots
    assert len(tracker) == 5
    assert tracker.ids.tolist() == [-1, 1, -1, -1, 0]
    assert tracker.steps.tolist() == [0, 1, 0, 0, 1]


def test_without_ids_every_episode_is_zero():
    tracker = EpisodeTracker(2)
    tracker.start_missing()
    tracker.advance()
    assert tracker.ids.tolist() == [0, 0] and tracker.steps.tolist() == [1, 1]


@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_recorded_episodes_follow_gymnasium_episode_bounds(tmp_path, mode):
    # Each env's recorded steps count 0, 1, ... within an episode, and a new id starts right
    # after a terminated or truncated row, in both autoreset modes.
    envs = relayrl_gym.wrap(lambda: gym.make("CartPole-v1", max_episode_steps=7), actors=3,
                            sink=tmp_path, autoreset_mode=mode)
    envs.reset(seed=0)
    for _ in range(40):
        envs.step(envs.action_space.sample())
    envs.close()
    table = relayrl_gym.load(envs.run_path).table
    ids = set()
    for env in range(3):
        rows = table.filter(table["env_index"].to_numpy() == env)
        episode, step = rows["episode_id"].to_numpy(), rows["step"].to_numpy()
        done = rows["terminated"].to_numpy() | rows["truncated"].to_numpy()
        for i in range(1, len(rows)):
            if done[i - 1]:
                assert episode[i] != episode[i - 1] and step[i] == 0
            else:
                assert episode[i] == episode[i - 1] and step[i] == step[i - 1] + 1
        assert step.max() <= 6  # truncated at 7 steps
        mine = set(episode.tolist())
        assert not mine & ids  # episode ids are unique within the run
        ids |= mine


@pytest.mark.parametrize("shared", [True, False])
def test_number_gives_every_row_its_episode_and_step(shared):
    tracker = EpisodeTracker(3, itertools.count().__next__, shared=shared)
    held = tracker.ids
    ids, steps = tracker.number([0, 1, 0, 0, 2, 0], [True, True, False, False, True, True],
                                [False, False, False, True, False, False])
    assert ids.tolist() == [0, 1, 0, 0, 2, 3]  # slot 0's episode ended, the next row starts 3
    assert steps.tolist() == [0, 0, 1, 2, 0, 0]
    assert tracker.ids.tolist() == [3, 1, 2] and tracker.steps.tolist() == [1, 1, 1]
    assert (held is tracker.ids) is not shared  # a shared tracker never writes in place
