"""Bad input gets a clear error naming the problem, and nothing already recorded is lost."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from testing_env import TestingEnv

import relayrl_gym
from relayrl_gym.errors import ActionError, ConfigError, EnvCreationError, SinkError, StateError


@pytest.fixture
def envs(sink_dir):
    e = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir)
    yield e
    e.close()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.array([0, 1, 1]), r"shape \(2,\).*got shape \(3,\)"),
        (np.array([0.5, 1.0]), "must be integers, got dtype float64"),
        (np.array([0, 2]), r"action 2 of env 1 is outside Discrete\(2\)"),
        (np.array([-1, 0]), "action -1 of env 0 is outside"),
        ("left", r"shape \(2,\)"),
    ],
    ids=["shape", "dtype", "too-high", "negative", "string"],
)
def test_bad_discrete_actions_raise_and_lose_nothing(envs, action, message):
    envs.reset(seed=0)
    for _ in range(10):
        envs.step(np.array([0, 1]))
    with pytest.raises(ActionError, match=message):
        envs.step(action)
    for _ in range(5):  # the env is still usable, stepping goes on
        envs.step(np.array([1, 0]))
    envs.close()
    assert len(relayrl_gym.load(envs.run_path)) >= 2 * 14  # 30 steps minus reset pseudo-steps


def test_box_action_out_of_bounds(sink_dir):
    envs = relayrl_gym.wrap("Pendulum-v1", actors=2, sink=sink_dir)
    envs.reset(seed=0)
    with pytest.raises(ActionError, match=r"outside Box.*not within \[-2.0, 2.0\].*ClipAction"):
        envs.step(np.array([[0.5], [3.0]], dtype=np.float32))
    with pytest.raises(ActionError, match="castable to float32"):
        envs.step(np.array([["a"], ["b"]]))
    envs.step(np.array([[0.5], [-2.0]]))  # float64 in range is fine (SyncVectorEnv accepts it)
    envs.close()
    assert relayrl_gym.load(envs.run_path).transitions().action.dtype == np.float32


def test_dict_action_outside_space(sink_dir):
    space = spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Box(0, 1, (2,), np.float32)})
    envs = relayrl_gym.wrap(lambda: TestingEnv(action_space=space), actors=2, sink=sink_dir)
    envs.reset(seed=0)
    bad = {"a": np.array([0, 5]), "b": np.zeros((2, 2), np.float32)}
    with pytest.raises(ActionError, match="of env 1 is outside Dict"):
        envs.step(bad)
    envs.close()


def test_step_before_reset_and_after_close(sink_dir):
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir)
    with pytest.raises(StateError, match=r"step\(\) called before reset\(\)"):
        envs.step(np.array([0, 1]))
    envs.close()
    envs.close()  # idempotent
    with pytest.raises(StateError, match="closed"):
        envs.reset()


def test_unknown_env_id():
    with pytest.raises(EnvCreationError, match=r"unknown env id 'CartPol-v1'.*CartPole"):
        relayrl_gym.wrap("CartPol-v1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actors": 0}, r"`actors` must be an int >= 1, got 0"),
        ({"router_scale": -1}, r"`router_scale` must be an int >= 0"),
        ({"router_scale": "fast"}, r"`router_scale` must be 'auto' or an int"),
        ({"autoreset_mode": "sometimes"}, r"`autoreset_mode` must be one of"),
        ({"sink": 42}, r"`sink` must be a directory path, a URL"),
        ({"sink": "nosuch://x"}, r"unknown sink URL scheme 'nosuch'"),
        ({"api": "rllib"}, r"`api` must be one of"),
    ],
)
def test_bad_wrap_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        relayrl_gym.wrap("CartPole-v1", **kwargs)


def test_factory_returning_something_else():
    with pytest.raises(EnvCreationError, match=r"returned int, expected a gymnasium\.Env"):
        relayrl_gym.wrap(lambda: 3, sink=None)


def test_factory_that_raises_names_the_actor():
    def broken():
        raise RuntimeError("no license")

    with pytest.raises(EnvCreationError, match="actor 0 failed: RuntimeError: no license"):
        relayrl_gym.wrap(broken, sink=None, router_scale=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_sink_directory_non_root(tmp_path):
    tmp_path.chmod(0o500)
    with pytest.raises(SinkError, match="cannot write the sink directory"):
        relayrl_gym.wrap("CartPole-v1", sink=tmp_path / "runs")


def test_sink_path_that_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError, match=r"cannot write the sink directory.*sink=None"):
        relayrl_gym.wrap("CartPole-v1", sink=blocker / "runs")


def test_spaces_of_copies_must_match():
    sizes = iter([2, 3])

    def make():
        return TestingEnv(action_space=spaces.Discrete(next(sizes)))

    with pytest.raises(EnvCreationError, match="env 1 has action space Discrete"):
        relayrl_gym.wrap(make, actors=2, sink=None, router_scale=0)


def test_env_exception_propagates_with_its_type(sink_dir):
    def explode(env, action):
        raise ZeroDivisionError("physics blew up")

    envs = relayrl_gym.wrap(lambda: TestingEnv(step_fn=explode), actors=2, sink=sink_dir,
                            router_scale=2)
    envs.reset(seed=0)
    with pytest.raises(ZeroDivisionError, match="physics blew up"):
        envs.step(np.array([0, 1]))
    envs.close()


def test_extra_make_kwargs_need_an_id():
    with pytest.raises(ConfigError, match="need an env id string"):
        relayrl_gym.wrap(lambda: gym.make("CartPole-v1"), max_episode_steps=5)


def test_factory_env_made_to_tell_its_kind_is_used_not_wasted():
    made = []

    def make():
        made.append(TestingEnv())
        return made[-1]

    envs = relayrl_gym.wrap(make, actors=2, sink=None, router_scale=0)
    assert len(made) == 2  # the env wrap made to see the factory's kind is actor 0's env
    assert envs.get_attr("unwrapped")[0] is made[0]
    envs.close()
    envs = relayrl_gym.wrap(make, actors=2, sink=None, router_scale=2)
    # Threaded: actors make their envs on their own threads; the first one is closed unused.
    assert len(made) == 5 and made[2].closed and not any(e.closed for e in made[3:])
    envs.close()
