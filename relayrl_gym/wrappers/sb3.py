"""`RelayRLSB3VecEnv`: the Stable-Baselines3 `VecEnv` front end of a wrapped env.

Imported lazily (by ``wrap(..., api="sb3")`` and `RelayRLVectorEnv.as_sb3`): ``import
relayrl_gym`` never imports SB3 or torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import concatenate, create_empty_array

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

    from relayrl_gym.runtime.env_agent import EnvAgent
    from relayrl_gym.wrappers.vector import RelayRLVectorEnv

__all__ = ["RelayRLSB3VecEnv", "monitored"]

def monitored(make: Callable[[], gym.Env]) -> gym.Env:
    """``make()`` in SB3's ``Monitor``, as ``make_vec_env`` wraps each env it makes."""
    return Monitor(make())


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

    Episode statistics come from SB3's ``Monitor``, as under ``make_vec_env``: ``wrap(env_id,
    api="sb3")`` wraps each env in one (``make_vec_env(env_id)`` does the same); a factory's
    envs are used as it makes them (``DummyVecEnv([factory] * n)`` does the same), so wrap
    ``Monitor`` in the factory to log episode returns. ``env_is_wrapped`` answers truly.

    Each env's info dict reaches the caller as the env returned it (no batching through
    Gymnasium's vector info).

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
        super().__init__(vector_env.num_envs, vector_env.single_observation_space,
                         vector_env.single_action_space)
        self.metadata = {k: v for k, v in vector_env.metadata.items() if k != "autoreset_mode"}
        space = vector_env.single_action_space
        # DummyVecEnv hands env i ``actions[i]``: Dict / Tuple actions come as one per env.
        self._per_env_actions = not isinstance(space, spaces.Box | spaces.Discrete |
                                               spaces.MultiDiscrete | spaces.MultiBinary)

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
    def agent(self) -> EnvAgent:
        return self._vector_env.agent

    @property
    def envs(self) -> list[gym.Env]:
        """The env copies, in actor order (DummyVecEnv's ``envs``; see `RelayRLVectorEnv.envs`
        for what may be done with them)."""
        return self._vector_env.envs

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
        needs_full = self._vector_env.needs_reset  # first reset, or after a failed step
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
            obs, infos = self._vector_env.reset_each(seed=seeds, options=options or None)
            for i in indices:
                self.reset_infos[i] = infos[i]
        self._reset_seeds()
        self._reset_options()
        self._waiting = False
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Takes the actions; `step_wait` steps every env with them."""
        self._vector_env.check_open()
        batch: Any = actions
        sized = isinstance(actions, list | tuple) or (isinstance(actions, np.ndarray) and
                                                       actions.ndim > 0)
        if sized and len(actions) > self.num_envs:
            # DummyVecEnv takes env i's action as actions[i]: rows past the envs are unused
            batch = actions[:self.num_envs]
        if self._per_env_actions:
            space = self.action_space
            out: Any = create_empty_array(space, self.num_envs, fn=np.empty)
            batch = concatenate(space, [actions[i] for i in range(self.num_envs)], out)
        self._actions = batch
        self._waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        """Steps every env; a finished env is reset in the same step (SB3's convention)."""
        if not self._waiting:
            raise StateError("step_wait() called without a pending step_async(actions); call "
                             "env.step(actions), or step_async(actions) then step_wait()")
        self._waiting = False
        actions, self._actions = self._actions, None
        obs, rewards, terminated, truncated, step_infos, finals = \
            self._vector_env.step_each(actions)
        dones = terminated | truncated
        infos = []
        for i, info in enumerate(step_infos):
            final = finals.get(i)
            if final is None:
                infos.append({**info, "TimeLimit.truncated": False})
                continue
            # The step's own info; the info of the reset that followed goes to reset_infos.
            self.reset_infos[i] = info
            infos.append({**final[1],
                          "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                          "terminal_observation": final[0]})
        return obs, rewards.astype(np.float32), dones, infos

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
        """Whether each env is wrapped in ``wrapper_class``."""
        return [bool(f) for f in self._on_envs(lambda env: is_wrapped(env, wrapper_class),
                                               indices)]

    def _on_envs(self, fn: Callable[[gym.Env], Any], indices: VecEnvIndices) -> list[Any]:
        # Each env is touched only on the thread that owns it (the router's actor thread).
        return self._vector_env.call_each(fn, list(self._get_indices(indices)))

    def __repr__(self) -> str:
        return (f"RelayRLSB3VecEnv({self._vector_env.env_id or 'env'}, "
                f"num_envs={self.num_envs}, run_id={self.run_id!r})")
