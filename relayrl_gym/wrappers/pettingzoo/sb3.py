"""`PettingZooSB3VecEnv`: the Stable-Baselines3 `VecEnv` front end of a `PettingZooVectorEnv`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayrl_gym.wrappers.sb3 import RelayRLSB3VecEnv

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices

    from relayrl_gym.wrappers.pettingzoo.vector import PettingZooVectorEnv

__all__ = ["PettingZooSB3VecEnv"]


class PettingZooSB3VecEnv(RelayRLSB3VecEnv):
    """`RelayRLSB3VecEnv` over game copies: what SB3 sees is described there; the env methods
    and attributes (``get_attr``, ``env_method``) reach the game copy of each slot (its
    recorded PettingZoo env). Built by ``relayrl_gym.wrap(game, ..., api="sb3")``."""

    def __init__(self, vector_env: PettingZooVectorEnv) -> None:
        """Args:
        vector_env: the Gymnasium front end, in SAME_STEP autoreset mode.
        """
        super().__init__(vector_env)  # type: ignore[arg-type]

    @property
    def run_ids(self) -> dict[str, str]:
        """Every agent's run id (see `PettingZooVectorEnv`)."""
        venv: PettingZooVectorEnv = self._vector_env  # type: ignore[assignment]
        return venv.run_ids

    @property
    def run_paths(self) -> dict[str, Path | None]:
        """Every agent's run directory (several runs: ``run_path`` is None)."""
        venv: PettingZooVectorEnv = self._vector_env  # type: ignore[assignment]
        return venv.run_paths

    def update_policy(self, agent: Any, policy: Any) -> int:
        """Hot-swaps a policy-played agent's policy; see `PettingZooVectorEnv.update_policy`."""
        return self._vector_env.update_policy(agent, policy)  # type: ignore[attr-defined]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._on_envs(lambda env: getattr(env, attr_name), indices)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        return self._on_envs(lambda env: getattr(env, method_name)(*method_args, **method_kwargs),
                             indices)

    def _on_envs(self, fn: Callable[[Any], Any], indices: VecEnvIndices) -> list[Any]:
        venv: Any = self._vector_env
        venv.check_open()
        slots = venv.games.slots
        return [fn(venv.games.envs[i // slots]) for i in self._get_indices(indices)]

    def __repr__(self) -> str:
        venv: Any = self._vector_env
        return (f"PettingZooSB3VecEnv({venv.env_id or 'game'}, num_envs={self.num_envs}, "
                f"run_id={self.run_id!r})")
