"""Game copies are actors: the shared router steps them inline or each on its own thread,
and the recorded rows are the same either way."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pettingzoo")

from gymnasium import spaces
from pettingzoo.classic import rps_v2, tictactoe_v3
from pettingzoo.utils.env import ParallelEnv

import relayrl_gym
from relayrl_gym.errors import ConfigError


def _first_legal(obs):
    return int(np.flatnonzero(obs["action_mask"])[0])


def _rows(run_path):
    table = relayrl_gym.load(run_path).table
    return table.drop_columns(["timestamp", "run_id", "actor_id"]).to_pylist()


def _play_turns(sink, scale, steps=30):
    envs = relayrl_gym.wrap(tictactoe_v3.env(), actors=3, policies={"player_2": _first_legal},
                            sink=sink, router_scale=scale)
    obs, _ = envs.reset(seed=5)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        masks = obs["action_mask"]
        actions = np.array([np.flatnonzero(m)[rng.integers(0, m.sum())] if m.any() else 0
                            for m in masks])
        obs, *_ = envs.step(actions)
    envs.close()
    return envs.run_path


def _play_simultaneous(sink, scale, steps=30):
    envs = relayrl_gym.wrap(rps_v2.parallel_env(max_cycles=5), actors=3, sink=sink,
                            router_scale=scale, autoreset_mode="same_step")
    envs.reset(seed=3)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        envs.step(rng.integers(0, 3, envs.num_envs))
    envs.close()
    return envs.run_path


@pytest.mark.parametrize("play", [_play_turns, _play_simultaneous], ids=["aec", "parallel"])
@pytest.mark.parametrize("scale", [1, 3])
def test_threaded_copies_record_the_rows_inline_copies_record(tmp_path, play, scale):
    inline = _rows(play(tmp_path / "inline", 0))
    threaded = _rows(play(tmp_path / "threads", scale))
    assert len(inline) > 50
    assert threaded == inline  # same rows, same order, byte for byte but the clock


class _ThreadNoting(ParallelEnv):
    """A two-agent game that notes which thread steps it and takes 20 ms a step."""

    metadata = {"name": "thread_noting_v0"}

    def __init__(self):
        self.possible_agents = ["a", "b"]
        self.threads: set[str] = set()

    def observation_space(self, agent):
        return spaces.Box(0, 1, (2,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        return {a: np.zeros(2, np.float32) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        self.threads.add(threading.current_thread().name)
        time.sleep(0.02)
        obs = {a: np.ones(2, np.float32) for a in self.agents}
        zero = {a: 0.0 for a in self.agents}
        flags = {a: False for a in self.agents}
        return obs, zero, flags, dict(flags), {a: {} for a in self.agents}


def test_each_copy_steps_on_its_own_actor_thread_and_they_overlap(tmp_path):
    envs = relayrl_gym.wrap(_ThreadNoting(), actors=4, sink=tmp_path, router_scale=4)
    envs.reset(seed=0)
    start = time.perf_counter()
    for _ in range(5):
        envs.step(np.zeros(envs.num_envs, np.int64))
    took = time.perf_counter() - start
    games = [actor.env.env for actor in envs.agent.actors]  # the copies behind the recording
    assert [sorted(game.threads) for game in games] == [
        [f"relayrl-game-actor-{c}"] for c in range(4)]
    assert took < 5 * 4 * 0.02  # sleeps overlap: less than stepping the copies in turn
    envs.close()
    assert len(relayrl_gym.load(envs.run_path).table) == 5 * 4 * 2


def test_router_scale_errors_name_what_games_accept(tmp_path):
    with pytest.raises(ConfigError, match=r"`router_scale` must be 'auto', 0 or an int >= 1, "
                                          r"got 'processes'"):
        relayrl_gym.wrap(rps_v2.parallel_env(), actors=2, router_scale="processes", sink=None)
    with pytest.raises(ConfigError, match=r"a game with its own API is stepped by the caller"):
        relayrl_gym.wrap(rps_v2.parallel_env(), router_scale=2, sink=None)


def test_a_threaded_game_env_left_open_is_closed_at_exit_with_its_rows(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, relayrl_gym
        from pettingzoo.classic import rps_v2
        envs = relayrl_gym.wrap(rps_v2.parallel_env(max_cycles=50), actors=3,
                                sink={str(tmp_path)!r}, router_scale=3, run_id="left-open")
        envs.reset(seed=0)
        for _ in range(10):
            envs.step(np.zeros(envs.num_envs, np.int64))
        # no close(): the exit hook closes the copies on their threads and flushes the run
    """)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert time.perf_counter() - start < 30
    assert len(relayrl_gym.load(tmp_path / "left-open").table) == 10 * 3 * 2


class _SlowStep(_ThreadNoting):
    def step(self, actions):
        time.sleep(0.3)
        return super().step(actions)


def test_close_from_another_thread_waits_for_the_threaded_step_in_flight(tmp_path):
    envs = relayrl_gym.wrap(_SlowStep(), actors=2, sink=tmp_path, router_scale=2)
    envs.reset(seed=0)
    errors = []

    def watchdog():
        time.sleep(0.1)  # inside the step
        try:
            envs.close()
        except Exception as err:  # what the caller would see
            errors.append(err)

    closer = threading.Thread(target=watchdog)
    closer.start()
    envs.step(np.zeros(envs.num_envs, np.int64))
    closer.join(10)
    assert errors == [] and envs.closed
    assert len(relayrl_gym.load(envs.run_path).table) == 2 * 2  # the step in flight is recorded


class _BadClose(Exception):
    pass


@pytest.mark.parametrize("scale", [0, 2])
def test_a_game_whose_close_raises_reaches_the_caller_as_itself(tmp_path, scale):
    class Failing(_ThreadNoting):
        def close(self):
            raise _BadClose("the game's own close failed")

    envs = relayrl_gym.wrap(Failing(), actors=2, sink=tmp_path, router_scale=scale)
    envs.reset(seed=0)
    envs.step(np.zeros(envs.num_envs, np.int64))
    with pytest.raises(_BadClose, match="own close failed"):
        envs.close()
    assert len(relayrl_gym.load(envs.run_path).table) == 2 * 2  # the run is closed all the same


def test_a_single_agent_view_refuses_threads():
    with pytest.raises(ConfigError, match=r"a single gymnasium.Env of one game"):
        relayrl_gym.wrap(rps_v2.parallel_env(), policies={"player_1": lambda obs: 0},
                         router_scale=2, sink=None)


def test_the_agent_of_a_game_vector_env_has_no_client_calls():
    envs = relayrl_gym.wrap(rps_v2.parallel_env(), actors=2, sink=None)
    assert not hasattr(envs.agent, "request_action")
    assert len(envs.agent.get_actor_ids()) == 2
    with pytest.raises(ConfigError, match=r"update_policy\(agent, model\)"):
        envs.agent.update_model(lambda obs: 0)
    envs.close()
