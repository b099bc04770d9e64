"""`RelayRLSB3VecEnv`: the Stable-Baselines3 `VecEnv` front end of a wrapped env.

Imported lazily (by ``wrap(..., api="sb3")`` and `RelayRLVectorEnv.as_sb3`): ``import
relayrl_gym`` never imports SB3 or torch.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium.vector import AutoresetMode

from relayrl_gym.errors import ConfigError, StateError, missing_extra

try:
    from stable_baselines3.common.env_util import is_wrapped
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import VecEnv
    from stable_baselines3.common.vec_env.base_vec_env import (
        VecEnvIndices,
        VecEnvObs,
        VecEnvStepReturn,
    )
except ImportError as err:  # SB3 itself, or torch under it
    raise missing_extra("stable_baselines3", "sb3") from err

if TYPE_CHECKING:
    from pathlib import Path

    import gymnasium as gym

    from relayrl_gym.runtime.agent import RelayRLAgent
    from relayrl_gym.wrappers.vector import RelayRLVectorEnv

__all__ = ["RelayRLSB3VecEnv", "env_info"]

# Keys Gymnasium's SAME_STEP autoreset adds to a vector info (with their ``_key`` masks).
_FINAL_KEYS = frozenset({"final_obs", "_final_obs", "final_info", "_final_info"})


def env_info(vector_info: dict[str, Any], i: int) -> dict[str, Any]:
    """Env ``i``'s own info dict out of a Gymnasium vector info (``key`` + ``_key`` mask pairs).

    Values come back as Gymnasium's vector info holds them: numbers as numpy scalars.

    >>> info = {"lives": np.array([3, 0]), "_lives": np.array([True, False]),
    ...         "stats": {"r": np.array([1.5, 2.0]), "_r": np.array([True, True])},
    ...         "_stats": np.array([True, True])}
    >>> sorted(env_info(info, 0)), sorted(env_info(info, 1))
    (['lives', 'stats'], ['stats'])
    >>> int(env_info(info, 0)["lives"]), float(env_info(info, 1)["stats"]["r"])
    (3, 2.0)
    """
    out: dict[str, Any] = {}
    for key, value in vector_info.items():
        mask = vector_info.get(f"_{key}")
        if mask is None or not mask[i]:
            continue  # a mask itself, or a key env i did not report
        out[key] = env_info(value, i) if isinstance(value, dict) else value[i]
    return out


class RelayRLSB3VecEnv(VecEnv):
    """A Stable-Baselines3 `VecEnv` over a `RelayRLVectorEnv`: same actors, same recording.

    SB3 algorithms see what `stable_baselines3.common.vec_env.DummyVecEnv` of the same envs
    returns: same seeds (``seed(s)`` gives env i ``s + i`` at the next reset) and actions give
    the same observations, float32 rewards and ``dones = terminated | truncated``; a finished
    env is reset in the same step, with ``infos[i]["terminal_observation"]`` holding its true
    last observation and ``infos[i]["TimeLimit.truncated"]`` (truncated and not terminated) set
    on every step, so SB3 bootstraps truncated episodes correctly.

    Behind it runs the Gymnasium front end in SAME_STEP autoreset mode: the same threads, sinks
    and run, and the same recorded rows as stepping that front end directly.

    Episode statistics: an env without SB3's ``Monitor`` gets Monitor's ``info["episode"] =
    {"r", "l", "t"}`` at the end of each episode from this VecEnv (``t``: seconds since it was
    created), unless its info already has an ``"episode"`` key. Because that is the contract
    SB3 checks ``Monitor`` for, ``env_is_wrapped(Monitor)`` answers True for every env (no
    "not wrapped with a Monitor" warning from ``evaluate_policy``); a real Monitor in the env
    factory is kept and used as is (its CSV log included). Other wrappers are answered truly.

    Info values pass through Gymnasium's vector info, so numbers in them come back as numpy
    scalars (``np.int64(3)`` where the env returned ``3``): equal values, numpy types.

    >>> import relayrl_gym, tempfile
    >>> from stable_baselines3 import PPO
    >>> env = relayrl_gym.wrap("CartPole-v1", actors=2, api="sb3", sink=tempfile.mkdtemp())
    >>> model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    >>> _ = model.learn(total_timesteps=64)
    >>> env.close()
    >>> len(relayrl_gym.load(env.run_path))
    64
    """

    def __init__(self, vector_env: RelayRLVectorEnv) -> None:
        """Puts the SB3 API in front of ``vector_env`` (use `RelayRLVectorEnv.as_sb3`).

        Args:
            vector_env: the Gymnasium front end to drive; its autoreset mode must be SAME_STEP.
        """
        if vector_env.autoreset_mode is not AutoresetMode.SAME_STEP:
            raise ConfigError(
                f"the SB3 front end needs a RelayRLVectorEnv in SAME_STEP autoreset mode, got "
                f"{vector_env.autoreset_mode.name.lower()!r}; use envs.as_sb3() (it switches an "
                "env that has not been reset yet) or relayrl_gym.wrap(env, api='sb3')")
        self._vector_env = vector_env
        self._actions: Any = None
        self._waiting = False
        self._was_reset = False
        super().__init__(vector_env.num_envs, vector_env.single_observation_space,
                         vector_env.single_action_space)
        self.metadata = {k: v for k, v in vector_env.metadata.items() if k != "autoreset_mode"}
        monitored = self._on_envs(lambda env: is_wrapped(env, Monitor), None)
        self._add_episode = ~np.array(monitored, dtype=np.bool_)
        self._t_start = time.time()
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)

    # -- what RelayRLVectorEnv exposes ---------------------------------------------------------
    @property
    def vector_env(self) -> RelayRLVectorEnv:
        """The Gymnasium front end this VecEnv drives."""
        return self._vector_env

    @property
    def run_id(self) -> str:
        return self._vector_env.run_id

    @property
    def run_path(self) -> Path | None:
        return self._vector_env.run_path

    @property
    def agent(self) -> RelayRLAgent:
        return self._vector_env.agent

    @property
    def closed(self) -> bool:
        return bool(self._vector_env.closed)

    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks (and waits for it)."""
        self._vector_env.flush()

    # -- VecEnv API ------------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        """Resets every env with the seeds of `seed` and options of `set_options` (used once)."""
        seeds = list(self._seeds)
        groups: list[tuple[dict[str, Any], list[int]]] = []
        for i, options in enumerate(self._options):
            for group_options, indices in groups:
                if group_options == options:
                    indices.append(i)
                    break
            else:
                groups.append((dict(options or {}), [i]))
        needs_full = self._vector_env._prev_obs is None  # first reset, or after a failed step
        for g, (options, indices) in enumerate(groups):
            if len(groups) > 1 and not (needs_full and g == 0):
                # Per-env options: Gymnasium's reset takes one options dict, so each group of
                # envs is reset on its own. A reset that must reset every env (the first one) does
                # so with the first group's options; the other groups are then reset again.
                mask = np.zeros(self.num_envs, dtype=np.bool_)
                mask[indices] = True
                options = {**options, "reset_mask": mask}
            else:
                indices = list(range(self.num_envs))
            obs, infos = self._vector_env.reset(seed=seeds, options=options or None)
            for i in indices:
                self.reset_infos[i] = env_info(infos, i)
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._waiting = False
        self._was_reset = True
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Takes the actions; `step_wait` steps every env with them."""
        self._vector_env._check_open()
        if not self._was_reset:
            raise StateError("step_async() called before reset(); call env.reset() first (SB3 "
                             "algorithms do it in learn())")
        self._actions = actions
        self._waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        """Steps every env; a finished env is reset in the same step (SB3's convention)."""
        if not self._waiting:
            raise StateError("step_wait() called without a pending step_async(actions); call "
                             "env.step(actions), or step_async(actions) then step_wait()")
        self._waiting = False
        actions, self._actions = self._actions, None
        obs, rewards, terminated, truncated, vector_info = self._vector_env.step(actions)
        dones = terminated | truncated
        self._returns += rewards
        self._lengths += 1
        if not vector_info and not dones.any():  # the common step: nothing to unpack
            infos = [{"TimeLimit.truncated": False} for _ in range(self.num_envs)]
        else:
            infos = self._env_infos(vector_info, dones, terminated, truncated)
        return obs, rewards.astype(np.float32), dones, infos

    def _env_infos(self, vector_info: dict[str, Any], dones: np.ndarray,
                   terminated: np.ndarray, truncated: np.ndarray) -> list[dict[str, Any]]:
        # For a finished env, the step's own info is under "final_info" and the top-level keys
        # are the info of the reset that followed (which SB3 keeps in reset_infos).
        final_obs = vector_info.get("final_obs")
        final_info = vector_info.get("final_info", {})
        top = {k: v for k, v in vector_info.items() if k not in _FINAL_KEYS}
        infos = []
        for i in range(self.num_envs):
            if not dones[i]:
                info = env_info(top, i)
                info["TimeLimit.truncated"] = False
                infos.append(info)
                continue
            info = env_info(final_info, i)
            self.reset_infos[i] = env_info(top, i)
            if self._add_episode[i] and "episode" not in info:
                info["episode"] = {"r": round(float(self._returns[i]), 6),
                                   "l": int(self._lengths[i]),
                                   "t": round(time.time() - self._t_start, 6)}
            info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            info["terminal_observation"] = final_obs[i]  # type: ignore[index]
            self._returns[i] = 0.0
            self._lengths[i] = 0
            infos.append(info)
        return infos

    def close(self) -> None:
        """Closes the envs, flushes and closes the sinks, joins every thread; idempotent."""
        self._vector_env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Each env's ``rgb_array`` render, rendered on the thread that owns the env."""
        if self.render_mode != "rgb_array":
            warnings.warn(f"The render mode is {self.render_mode}, but get_images() needs "
                          "render_mode='rgb_array' (pass it to gymnasium.make / wrap)",
                          stacklevel=2)
            return [None] * self.num_envs
        return list(self._vector_env.render())

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The attribute ``attr_name`` of each env (searched through its wrappers)."""
        return self._on_envs(lambda env: env.get_wrapper_attr(attr_name), indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Sets ``attr_name`` on each env's outermost wrapper, as `DummyVecEnv` does."""
        self._on_envs(lambda env: setattr(env, attr_name, value), indices)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Calls ``method_name(*method_args, **method_kwargs)`` on each env, on its thread."""
        return self._on_envs(
            lambda env: env.get_wrapper_attr(method_name)(*method_args, **method_kwargs),
            indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper],
                       indices: VecEnvIndices = None) -> list[bool]:
        """Whether each env is wrapped in ``wrapper_class``; True for ``Monitor`` (see above)."""
        found = self._on_envs(lambda env: is_wrapped(env, wrapper_class), indices)
        if wrapper_class is Monitor:
            return [True] * len(found)
        return [bool(f) for f in found]

    def _on_envs(self, fn: Callable[[gym.Env], Any], indices: VecEnvIndices) -> list[Any]:
        # Each env is touched only on the thread that owns it (the router's actor thread).
        venv = self._vector_env
        venv._check_open()
        actors = [venv._actors[i] for i in self._get_indices(indices)]
        return venv._router.run(lambda actor, _: fn(actor.env), [None] * len(actors), actors)

    def __repr__(self) -> str:
        return (f"RelayRLSB3VecEnv({self._vector_env.env_id or 'env'}, "
                f"num_envs={self.num_envs}, run_id={self.run_id!r})")
