"""Bad input gets a clear error naming the problem, and nothing already recorded is lost."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from testing_env import TestingEnv

import relayrl_gym
from relayrl_gym.errors import ConfigError, EnvCreationError, SinkError, StateError


@pytest.fixture
def envs(sink_dir):
    e = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir)
    yield e
    e.close()


def test_wrong_number_of_actions_raises_value_error_before_any_env_steps(envs):
    envs.reset(seed=0)
    for _ in range(10):
        envs.step(np.array([0, 1]))
    # SyncVectorEnv raises ValueError (zip strict); ActionError is one, with the counts.
    with pytest.raises(ValueError, match=r"holds 3 actions, expected 2 \(one per env\)"):
        envs.step(np.array([0, 1, 1]))
    for _ in range(5):  # no env stepped: stepping goes on
        envs.step(np.array([1, 0]))
    envs.close()
    assert len(relayrl_gym.load(envs.run_path)) >= 2 * 14  # 15 steps minus reset pseudo-steps


@pytest.mark.parametrize("action", [np.array([0.5, 1.0]), np.array([0, 2]), np.array([-1, 0]), 3],
                         ids=["float", "too-high", "negative", "scalar"])
@pytest.mark.parametrize("sink", [True, False], ids=["recorded", "sink-none"])
def test_bad_actions_raise_what_sync_vector_env_raises(sink_dir, action, sink):
    # The env judges its actions (CartPole asserts); the wrapper neither checks bounds nor
    # changes the exception's type or message.
    reference = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    reference.reset(seed=0)
    with pytest.raises(Exception) as expected:
        reference.step(action)
    reference.close()
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir if sink else None)
    envs.reset(seed=0)
    envs.step(np.array([0, 1]))
    with pytest.raises(type(expected.value)) as got:
        envs.step(action)
    assert str(got.value) == str(expected.value)
    if isinstance(action, np.ndarray):  # an env raised: the others may have stepped
        with pytest.raises(StateError, match=r"a previous step\(\) failed"):
            envs.step(np.array([0, 1]))
    envs.reset(seed=1)
    envs.step(np.array([0, 1]))
    envs.close()
    if sink:  # the steps before and after the error were recorded
        assert len(relayrl_gym.load(envs.run_path)) == 4


def test_box_actions_reach_the_env_as_given_and_are_recorded(sink_dir):
    envs = relayrl_gym.wrap("Pendulum-v1", actors=2, sink=sink_dir)
    envs.reset(seed=0)
    envs.step(np.array([[0.5], [3.0]], dtype=np.float32))  # Pendulum clips it, as it always did
    with pytest.raises(ValueError, match="could not convert") as err:
        envs.step(np.array([["a"], ["b"]]))  # recording needs float32 actions
    assert "records each action as Box" in "".join(err.value.__notes__)
    envs.step(np.array([[0.5], [-2.0]]))  # float64 is fine (SyncVectorEnv accepts it)
    envs.close()
    actions = relayrl_gym.load(envs.run_path).transitions().action
    assert actions.dtype == np.float32 and actions[:, 0].tolist() == [0.5, 3.0, 0.5, -2.0]


def test_dict_actions_are_recorded_as_given(sink_dir):
    space = spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Box(0, 1, (2,), np.float32)})
    made = []
    envs = relayrl_gym.wrap(lambda: made.append(TestingEnv(action_space=space)) or made[-1],
                            actors=2, sink=sink_dir)
    envs.reset(seed=0)
    envs.step({"a": np.array([0, 5]), "b": np.zeros((2, 2), np.float32)})
    assert made[-1].last_action["a"] == 5  # the env decides what it accepts
    envs.close()
    assert relayrl_gym.load(envs.run_path).transitions().action["a"].tolist() == [0, 5]


def test_step_before_reset_and_after_close(sink_dir):
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir)
    with pytest.raises(gym.error.ResetNeeded):  # gym.make's own check, as under SyncVectorEnv
        envs.step(np.array([0, 1]))
    envs.close()
    envs.close()  # idempotent
    with pytest.raises(StateError, match="closed"):
        envs.reset()


@pytest.mark.parametrize("scale", [0, 2], ids=["inline", "threads"])
def test_an_env_that_steps_before_reset_does_so_and_recording_starts_after(sink_dir, scale):
    envs = relayrl_gym.wrap(lambda: TestingEnv(length=3), actors=2, sink=sink_dir,
                            router_scale=scale)
    reference = gym.vector.SyncVectorEnv([lambda: TestingEnv(length=3)] * 2)
    for _ in range(5):
        got, want = envs.step(np.array([0, 1])), reference.step(np.array([0, 1]))
        for a, b in zip(got[1:4], want[1:4]):
            np.testing.assert_array_equal(a, b)
    envs.close()
    reference.close()
    table = relayrl_gym.load(envs.run_path).table
    # The first step had no observation to start from; of the next four, one per env is the
    # NEXT_STEP reset pseudo-step after the episode ended at t=3: three transitions per env.
    assert table.num_rows == 2 * 3
    assert table["step"].to_pylist() == [0, 0, 1, 1, 0, 0]


def test_unknown_env_id_raises_gymnasiums_own_error():
    with pytest.raises(gym.error.NameNotFound, match=r"CartPole") as err:
        relayrl_gym.wrap("CartPol-v1")
    assert "not a registered env id" in "".join(err.value.__notes__)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actors": 0}, r"`actors` must be an int >= 1, got 0"),
        ({"router_scale": -1}, r"`router_scale` must be an int >= 0"),
        ({"router_scale": "fast"}, r"`router_scale` must be 'auto', 'processes' or an int"),
        ({"autoreset_mode": "sometimes"}, r"`autoreset_mode` must be one of"),
        ({"sink": 42}, r"`sink` must be a directory path, a URL"),
        ({"sink": "nosuch://x"}, r"unknown sink URL scheme 'nosuch'"),
        ({"sink": "arrow://"}, r"the sink URL 'arrow://' names no directory"),
        ({"sink": "zmq+udp://127.0.0.1:9"}, r"speaks TCP only: write zmq\+tcp://HOST:PORT, got "
                                            r"'zmq\+udp://127\.0\.0\.1:9'"),
        ({"api": "rllib"}, r"`api` must be one of"),
    ],
)
def test_bad_wrap_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        relayrl_gym.wrap("CartPole-v1", **kwargs)


def test_factory_returning_something_else():
    with pytest.raises(EnvCreationError, match=r"returned int, expected a gymnasium\.Env"):
        relayrl_gym.wrap(lambda: 3, sink=None)


@pytest.mark.parametrize("scale", [0, 2], ids=["inline", "threads"])
def test_factory_exception_reaches_the_caller_as_itself_naming_the_actor(scale):
    calls = []

    def broken():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("no license")
        return TestingEnv()

    with pytest.raises(RuntimeError, match="no license") as err:
        relayrl_gym.wrap(broken, actors=3, sink=None, router_scale=scale)
    assert str(err.value) == "no license"  # not renamed: the notes carry the context
    assert "creating the environment of actor" in "".join(err.value.__notes__)


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

    with pytest.raises(RuntimeError, match="env 1 has action space Discrete"):  # as Gymnasium's
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
    try:  # threaded: each actor makes its env on its own thread, and nothing more is made
        assert len(made) == 4 and not any(e.closed for e in made[2:])
    finally:
        envs.close()


@pytest.mark.parametrize("scale", [0, 2], ids=["inline", "threads"])
def test_a_wrong_shape_observation_names_the_env_and_both_shapes(sink_dir, scale):
    def odd(env, action):
        bad = env.index == 1 and env.t >= 2
        env.t += 1
        obs = np.zeros(4 if bad else 3, np.float32)
        return obs, 0.0, False, False, {}

    def make(index):
        env = TestingEnv(step_fn=odd)
        env.index = index
        return env

    envs = relayrl_gym.wrap([lambda: make(0), lambda: make(1)], sink=sink_dir,
                            router_scale=scale)
    envs.reset(seed=0)
    envs.step(np.array([0, 0]))
    envs.step(np.array([0, 0]))
    with pytest.raises(ValueError, match=r"env 1 returned an observation of shape \(4,\) and "
                                         r"dtype float32; its observation space Box.* has "
                                         r"shape \(3,\) and dtype float32"):
        envs.step(np.array([0, 0]))
    envs.close()
    assert len(relayrl_gym.load(envs.run_path)) == 4  # the steps before it are kept


def test_non_finite_info_values_are_recorded_as_valid_json(sink_dir):
    def step(env, action):
        env.t += 1
        info = {"nan": float("nan"), "inf": np.array([np.inf, -np.inf, 1.5])}
        return env._obs(), 0.0, False, False, info

    envs = relayrl_gym.wrap(lambda: TestingEnv(step_fn=step), actors=1, sink=sink_dir)
    envs.reset(seed=0)
    envs.step(np.array([0]))
    envs.close()
    text = relayrl_gym.load(envs.run_path).table["info"][0].as_py()
    assert json.loads(text) == {"nan": "NaN", "inf": ["Infinity", "-Infinity", 1.5]}
    assert "NaN" not in text.replace('"NaN"', "")  # no bare NaN token: strict JSON


def test_an_env_whose_close_raises_reaches_the_caller_as_itself(tmp_path):
    class CloseFails(Exception):
        pass

    def make():
        env = gym.make("CartPole-v1")

        def close():
            raise CloseFails("the env's own close failed")

        env.close = close
        return env

    envs = relayrl_gym.wrap([make, make], sink=tmp_path)
    envs.reset(seed=0)
    envs.step(envs.action_space.sample())
    with pytest.raises(CloseFails, match="own close failed"):
        envs.close()
    assert envs.closed and len(relayrl_gym.load(envs.run_path).table) == 2
