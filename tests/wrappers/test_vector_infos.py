"""A step's vector info built a key at a time is the dict Gymnasium's `_add_info` builds."""

from __future__ import annotations

import copy
import itertools
import sys
import threading
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import relayrl_gym
from relayrl_gym.schema.infos import RowInfos
from relayrl_gym.wrappers.vector_infos import VectorInfos


def _reference(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """What Gymnasium's `VectorEnv._add_info` makes of the envs' infos."""
    vector = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * len(infos))
    out: dict[str, Any] = {}
    for i, info in enumerate(infos):
        out = vector._add_info(out, info, i)
    vector.close()
    return out


def assert_same_vector_info(got: dict[str, Any], want: dict[str, Any]) -> None:
    """The same keys in the same order, each array of the same dtype, shape and values."""
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, dict):
            assert_same_vector_info(got[key], value)
            continue
        assert type(got[key]) is np.ndarray, key
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        if value.dtype != object:
            np.testing.assert_array_equal(got[key], value)
        else:
            assert all(np.array_equal(a, b) for a, b in zip(got[key], value)), key


@pytest.mark.parametrize(("infos", "batched"), [
    ([{"x": np.float64(0.5), "r": np.float32(-1)}, {"x": np.float64(1.5), "r": np.float32(2)}],
     True),  # MuJoCo's: float64 and float32 keys
    ([{"lives": 3, "frame": np.int64(8), "b": np.uint8(250)}] * 3, True),  # Atari's, and bytes
    ([{"x": 0.25, "ok": True, "n": 7, "h": np.float16(1.5), "c": np.complex64(1 + 2j)}] * 2,
     True),
    ([{"c": 1 + 2j}, {"c": 2j}], False),  # Python's complex is no number to `_add_info`
    ([{"x": 1.0}], True),
    ([{"x": 1}, {"x": 0.25}], False),  # `_add_info` casts 0.25 into the first env's int array
    ([{"x": np.float32(1)}, {"x": 1.0}], False),
    ([{"big": 2**70}, {"big": 1}], False),  # out of int64's range: `_add_info` raises
    ([{"ok": np.bool_(True)}, {"ok": np.bool_(False)}], False),  # not a number: an object array
    ([{"v": np.arange(2)}, {"v": np.arange(2)}], False),
    ([{"n": {"r": 1.0}}, {"n": {"r": 2.0}}], False),
    ([{"s": "a"}, {"s": "b"}], False),
    ([{"x": 1.0, "_x": 2.0}, {"x": 1.0, "_x": 2.0}], False),  # a key named like a mask
    ([{"final_obs": 1.0}, {"final_obs": 2.0}], False),
    ([{"x": 1.0, "y": 2.0}, {"y": 2.0, "x": 1.0}], False),  # another order: not alike
], ids=["mujoco", "atari", "kinds", "complex", "one-env", "int-then-float", "float32-then-float",
        "overflow", "np-bool", "arrays", "nested", "text", "underscore", "final-obs", "order"])
def test_batched_infos_are_what_add_info_builds(infos: list[dict[str, Any]],
                                                batched: bool) -> None:
    rows, vector = RowInfos(), VectorInfos()
    for _ in range(2):  # the first step, then the same keys again (remembered)
        alike = rows.alike(infos)
        got = None if alike is None else vector(alike)
        assert (got is not None) == batched
        if got is None:
            continue
        assert_same_vector_info(got, _reference(infos))
        arrays = list(got.values())
        assert all(a.flags.owndata for a in arrays)  # each its own array, as `_add_info`'s
        assert len({id(a) for a in arrays}) == len(arrays)


def test_remembered_keys_and_types_follow_each_step() -> None:
    rows, vector = RowInfos(), VectorInfos()
    steps: list[tuple[list[dict[str, Any]], bool]] = [  # one pair of caches, step after step
        ([{"x": 0.5, "n": 1}] * 3, True),
        ([{"x": 1, "n": 2}] * 3, True),  # the same keys, other types
        ([{"x": np.bool_(True), "n": 2}] * 3, False),  # an object array under `_add_info`
        ([{"x": 0.5, "n": 1}] * 3, True),  # back
        ([{"n": 1, "x": 0.5}] * 3, True),  # the same types, another order
        ([{"y": 0.5, "m": 1}] * 3, True),  # other keys
        ([{"x": 0.5}, {"x": 0.5}, {"x": 1}], False),  # one env's type differs: cast
    ]
    for infos, batched in steps:
        alike = rows.alike(infos)
        got = None if alike is None else vector(alike)
        assert (got is not None) == batched
        if got is not None:
            assert_same_vector_info(got, _reference(infos))


class MixedInfosEnv(gym.Env):
    """Infos that `VectorInfos` batches at most steps, and some that it leaves to `_add_info`:
    another order, a key of another type, a missing key, an array, text, nothing."""

    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, index: int = 0) -> None:
        self.index, self.t = index, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # (alike a step's: under NEXT_STEP, a reset row's info is batched with the others')
        return np.zeros(2, np.float32), {"x": np.float64(-1), "r": np.float32(0), "n": 0}

    def step(self, action: Any):
        self.t += 1
        t, i = self.t, self.index
        info: dict[str, Any] = {"x": np.float64(t + i / 10), "r": np.float32(-t), "n": t}
        if t % 5 == i:
            info = {"r": np.float32(-t), "x": np.float64(t), "n": t}
        elif t % 7 == i:
            info["n"] = float(t)
        elif t % 11 == i:
            del info["r"]
        elif t % 13 == i:
            info["v"] = np.arange(2) + i
        elif t % 17 == i:
            info = {"s": "text"}
        elif t % 19 == i:
            info = {}
        return np.full(2, t % 2, np.float32), 1.0, t % (6 + i) == 0, False, info


@pytest.mark.parametrize("num_envs", [1, 4])
@pytest.mark.parametrize("sink", ["arrow", None])
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP],
                         ids=lambda m: m.value)
def test_a_wrapped_run_returns_the_infos_sync_vector_env_returns(
        tmp_path: Any, mode: AutoresetMode, sink: str | None, num_envs: int) -> None:
    def fns() -> list[Any]:
        return [lambda i=i: MixedInfosEnv(i) for i in range(num_envs)]

    sync = SyncVectorEnv(fns(), autoreset_mode=mode)
    envs = relayrl_gym.wrap(fns(), autoreset_mode=mode, router_scale=0,
                            sink=tmp_path if sink else None)
    built = envs._vector_infos
    batched: list[dict[str, Any] | None] = []  # what each step's batching gave

    def counted(alike: Any) -> dict[str, Any] | None:
        batched.append(built(alike))
        return batched[-1]

    envs._vector_infos = counted
    zeros = np.zeros(num_envs, np.int64)
    theirs, ours = [sync.reset(seed=0)[1]], [envs.reset(seed=0)[1]]
    for _ in range(120):
        theirs.append(sync.step(zeros)[-1])
        info = envs.step(zeros)[-1]
        ours.append(copy.deepcopy(info))
        for value in info.values():  # the caller writes into what it was given
            if isinstance(value, np.ndarray) and value.dtype != object:
                value[...] = 0
        info.clear()
    envs.close()
    sync.close()
    for got, want in zip(ours, theirs, strict=True):
        assert_same_vector_info(got, want)
    assert any(b is not None for b in batched) and any(b is None for b in batched)


class HugeIntEnv(MixedInfosEnv):
    def step(self, action: Any):
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, {"big": 2**70 if self.t > 2 else 1}


def test_an_info_out_of_its_types_range_raises_as_under_sync_vector_env() -> None:
    for envs in (SyncVectorEnv([HugeIntEnv] * 2),
                 relayrl_gym.wrap([HugeIntEnv] * 2, router_scale=0, sink=None)):
        envs.reset(seed=0)
        envs.step(np.zeros(2, np.int64))
        envs.step(np.zeros(2, np.int64))
        with pytest.raises(OverflowError):
            envs.step(np.zeros(2, np.int64))
        envs.close()


class LayoutEnv(gym.Env):
    """Infos whose keys change from step to step; the observation says which keys they are."""

    observation_space = spaces.Box(0, 3, (1,), np.float32)
    action_space = spaces.Discrete(2)
    LAYOUTS = (("a",), ("b", "c"), ("c", "b"))

    def __init__(self, steps: Any) -> None:
        self.steps = steps  # shared by the copies: both envs of a vector step see one layout

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: Any):
        k = next(self.steps) // 2 % 3
        info = {key: float(k) for key in self.LAYOUTS[k]}
        return np.full(1, k, np.float32), 0.0, False, False, info


def test_steps_from_two_threads_each_get_their_own_infos() -> None:
    steps = itertools.count()
    envs = relayrl_gym.wrap([lambda: LayoutEnv(steps)] * 2, router_scale=0, sink=None)
    envs.reset(seed=0)
    wrong: list[Any] = []

    def stepping() -> None:
        for _ in range(1500):
            obs, *_, info = envs.step(np.zeros(2, np.int64))
            keys = LayoutEnv.LAYOUTS[int(obs[0, 0])]
            if list(info) != [name for key in keys for name in (key, f"_{key}")] or any(
                    len(value) != 2 for value in info.values()):
                wrong.append(info)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can
    try:
        threads = [threading.Thread(target=stepping) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
        envs.close()
    assert wrong == []
