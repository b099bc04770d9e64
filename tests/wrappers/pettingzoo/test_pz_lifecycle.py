"""Lifecycles of wrapped PettingZoo games: close() closes everything and keeps every row even
when a game's own close fails; a wrap that fails leaves nothing open behind it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pettingzoo")

from pettingzoo.utils.conversions import parallel_to_aec

import relayrl_gym
from relayrl_gym.errors import ConfigError, EnvCreationError


@pytest.fixture
def bad_close(toy_game):
    class BadClose(toy_game):
        """A game whose close() fails (a renderer that is already gone, say)."""

        def close(self) -> None:
            raise RuntimeError("renderer gone")

    return BadClose


@pytest.mark.parametrize("kind", ["sharing", "single-parallel", "turns"])
def test_a_game_failing_to_close_still_flushes_and_stops_the_writer(kind, bad_close,
                                                                     tmp_path):
    if kind == "sharing":
        envs = relayrl_gym.wrap(bad_close, actors=2, api="gymnasium", sink=tmp_path)
    elif kind == "single-parallel":
        envs = relayrl_gym.wrap(bad_close, sink=tmp_path,
                                policies={"a0": lambda obs: 1, "a2": lambda obs: 2})
    else:
        envs = relayrl_gym.wrap(lambda: parallel_to_aec(bad_close()), actors=2, sink=tmp_path,
                                policies={"a0": lambda obs: 1, "a2": lambda obs: 2})
    envs.reset(seed=0)
    for _ in range(2):
        envs.step(np.ones(envs.action_space.shape, np.int64) if envs.action_space.shape
                  else 1)
    with pytest.raises(RuntimeError, match="renderer gone"):
        envs.close()
    envs.close()  # what could be closed is closed: no second error
    rows = relayrl_gym.load(envs.run_path).to_pandas()
    assert len(rows) > 0 and {"a0", "a1"} <= set(rows["agent_id"])
    # (the autouse fixture of tests/conftest.py fails the test if a writer thread is left)


@pytest.fixture
def counted(toy_game):
    """A game class that counts how many of its instances were made and closed."""

    class Counted(toy_game):
        made = 0
        closed = 0

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            type(self).made += 1

        def close(self) -> None:
            type(self).closed += 1

    return Counted


def test_a_copy_that_cannot_be_made_leaves_no_run_and_no_open_game(counted, tmp_path):
    def factory():
        if counted.made == 2:
            raise RuntimeError("no more boards")
        return counted()

    with pytest.raises(EnvCreationError, match=r"creating game copy 2 failed: RuntimeError: no "
                                               r"more boards"):
        relayrl_gym.wrap(factory, actors=4, api="gymnasium", sink=tmp_path)
    assert not any(tmp_path.iterdir())  # no run directory for a run that never started
    assert counted.made == counted.closed == 2  # wrap's first game and copy 1


@pytest.mark.parametrize("bad", [{"autoreset_mode": "disabled"}, {"api": "parallel"},
                                 {"policies": {"a7": lambda obs: 0}}],
                         ids=["autoreset", "api", "policies"])
def test_bad_arguments_leave_no_run_and_close_the_game_wrap_made(bad, counted, tmp_path):
    with pytest.raises(ConfigError):
        relayrl_gym.wrap(counted, actors=2, sink=tmp_path, **bad)
    assert not any(tmp_path.iterdir())
    assert counted.made == counted.closed == 1
    game = counted()
    with pytest.raises(ConfigError):
        relayrl_gym.wrap(game, actors=2, sink=tmp_path, **bad)
    assert counted.closed == 1  # the caller's own game is the caller's to close
