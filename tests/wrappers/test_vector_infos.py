"""A step's vector info built a key at a time is the dict Gymnasium's `_add_info` builds."""

from __future__ import annotations

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


class MixedInfosEnv(gym.Env):
    """Infos that `VectorInfos` batches at most steps, and some that it leaves to `_add_info`:
    another order, a key of another type, a missing key, an array, text, nothing."""

    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, index: int = 0) -> None:
        self.index, self.t = index, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {"start": np.int64(self.index)}

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


@pytest.mark.parametrize("sink", ["arrow", None])
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP],
                         ids=lambda m: m.value)
def test_a_wrapped_run_returns_the_infos_sync_vector_env_returns(tmp_path: Any,
                                                                 mode: AutoresetMode,
                                                                 sink: str | None) -> None:
    def fns() -> list[Any]:
        return [lambda i=i: MixedInfosEnv(i) for i in range(4)]

    sync = SyncVectorEnv(fns(), autoreset_mode=mode)
    envs = relayrl_gym.wrap(fns(), autoreset_mode=mode, router_scale=0,
                            sink=tmp_path if sink else None)
    theirs = [sync.reset(seed=0)[1]]
    ours = [envs.reset(seed=0)[1]]
    for _ in range(120):
        theirs.append(sync.step(np.zeros(4, np.int64))[-1])
        ours.append(envs.step(np.zeros(4, np.int64))[-1])
    envs.close()
    sync.close()
    # compared once the run is over: no step's arrays were written into by a later one
    for got, want in zip(ours, theirs, strict=True):
        assert_same_vector_info(got, want)
