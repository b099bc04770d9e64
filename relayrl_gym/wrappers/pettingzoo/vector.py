"""`PettingZooVectorEnv`: copies of a game as a Gymnasium vector env whose slots are the
caller-played agents, every agent recorded."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from relayrl_gym.errors import ConfigError, StateError
from relayrl_gym.lifecycle import CallGate, GatedClose, gated
from relayrl_gym.runtime.env_agent import EnvAgent
from relayrl_gym.wrappers.pettingzoo.games import Games
from relayrl_gym.wrappers.pettingzoo.observations import zeros_like
from relayrl_gym.wrappers.pettingzoo.recording import run_names
from relayrl_gym.wrappers.vector import EnvSteps

if TYPE_CHECKING:
    from relayrl_gym.wrappers.pettingzoo.sb3 import PettingZooSB3VecEnv

__all__ = ["PettingZooVectorEnv", "env_info"]

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


def _clear_slot(infos: dict[str, Any], i: int) -> None:
    """Removes slot ``i``'s entries from a vector info (its ``_key`` masks set False)."""
    for key in list(infos):
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        mask = infos.get(f"_{key}")
        if mask is not None:
            mask[i] = False
            if isinstance(infos[key], dict):
                _clear_slot(infos[key], i)


class PettingZooVectorEnv(GatedClose, VectorEnv):
    """A `gymnasium.vector.VectorEnv` over ``copies`` copies of a PettingZoo game: slot
    ``c * K + k`` is the ``k``-th caller-played agent of copy ``c`` (``K`` = 1 when policies
    play every other agent; every agent under parameter sharing).

    Copy ``c`` is reset with ``seed + c``. A copy is reset when none of the caller's agents is
    left in it: in NEXT_STEP mode (default) at the next step (its slots then return the reset
    observation, reward 0, flags False, and their actions are ignored), in SAME_STEP mode in
    the same step (the finished slots' last observation and info under ``final_obs`` /
    ``final_info``; a slot whose agent is done before its game ends does the same, showing
    the padding next). Slots whose agent is absent from a running game are padded (see
    `SimultaneousGames`). Action masks, when the game gives them, are in
    ``info["action_mask"]``. Every agent's transitions, the policy-played ones included, are
    recorded with their own actor and ``agent_id`` (`relayrl_gym.load(envs.run_path)`); a game
    whose agents have different spaces is one run per group of agents with the same spaces
    (several runs: see ``envs.run_paths``, agent -> run directory; ``run_path`` is None).

    >>> import relayrl_gym
    >>> from pettingzoo.classic import rps_v2
    >>> envs = relayrl_gym.wrap(rps_v2.parallel_env, actors=3, sink=None)
    >>> envs.num_envs  # 3 games x 2 players, one shared policy
    6
    >>> obs, infos = envs.reset(seed=0)
    >>> _ = envs.step(envs.action_space.sample())
    >>> envs.close()
    """

    def __init__(self, games: Games, *, autoreset_mode: AutoresetMode = AutoresetMode.NEXT_STEP,
                 env_id: str | None = None) -> None:
        """Puts the Gymnasium vector API in front of ``games`` (use `relayrl_gym.wrap`).

        Args:
            games: the game copies (`TurnGames` or `SimultaneousGames`); closed with this env.
            autoreset_mode: NEXT_STEP or SAME_STEP.
            env_id: the game's name.
        """
        super().__init__()
        if autoreset_mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            games.close()
            raise ConfigError(f"`autoreset_mode` for a PettingZoo game must be 'next_step' or "
                              f"'same_step', got {autoreset_mode.value!r}")
        self.games = games
        self._gate = CallGate()  # close() from any thread waits for the step in flight
        self.autoreset_mode = autoreset_mode
        self.num_envs = games.copies * games.slots
        self.single_observation_space = games.observation_space
        self.single_action_space = games.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        first = games.envs[0]
        self.metadata = {**dict(first.metadata), "autoreset_mode": autoreset_mode}
        self.render_mode = getattr(first, "render_mode", None)
        self.env_id = env_id
        #: The game copies' actors, their router and the runs they record to.
        self.agent = EnvAgent(games.actors, games.router,
                              games.recording.runs if games.recording is not None else [],
                              on_shutdown=games.close_copies,
                              on_update_model=self._update_model)
        self.run_id, self.run_path, self.run_ids, self.run_paths = run_names(games.recording)
        self.closed = False
        self._prev_obs: Any = None
        self._over = np.zeros(games.copies, dtype=np.bool_)
        self._items: list[Any] = [None] * self.num_envs
        self._padding = zeros_like(self.single_observation_space)

    @property
    def agents(self) -> list[Any]:
        """The caller-played agent of each slot of a copy."""
        return list(self.games.agents)

    def update_policy(self, agent: Any, policy: Any) -> int:
        """Hot-swaps the policy of a policy-played ``agent`` (ModelModule, path or callable)
        from the next step on; returns the version its transitions are recorded with."""
        self.check_open()
        return self.games.policies.update(agent, policy)

    def _update_model(self, model: Any, ids: Any = None) -> int:
        raise ConfigError(f"each policy-played agent of a game has its own policy: swap one "
                          f"with envs.update_policy(agent, model) (agents "
                          f"{self.games.policies.agents})")

    @gated
    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Resets the copies (copy ``c`` gets ``seed + c``; a list gives one seed per copy)."""
        self.check_open()
        n = self.games.copies
        if seed is None or isinstance(seed, int | np.integer):
            seeds = [None if seed is None else int(seed) + c for c in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) not in (n, self.num_envs):
                raise ConfigError(f"`seed` as a list must have one seed per game copy ({n}), got "
                                  f"{len(seeds)}")
            seeds = seeds[:: len(seeds) // n]
        options = dict(options) if options else None
        copies = self._reset_copies(options)
        infos: dict[str, Any] = {}
        for c, (obs, slot_infos) in zip(copies, self.games.reset(
                copies, [seeds[c] for c in copies], options)):
            infos = self._put(c, obs, slot_infos, infos)
            self._over[c] = False
        self._prev_obs = self._stack()
        return self._prev_obs, infos

    def _reset_copies(self, options: dict[str, Any] | None) -> list[int]:
        if not options or "reset_mask" not in options:
            return list(range(self.games.copies))
        mask = np.asarray(options.pop("reset_mask"), dtype=np.bool_)
        if mask.shape != (self.num_envs,):
            raise ConfigError(f"`options['reset_mask']` must hold one bool per slot (shape "
                              f"({self.num_envs},): {self.games.copies} game copies x "
                              f"{self.games.slots} slots), got shape {mask.shape}")
        per_copy = mask.reshape(self.games.copies, self.games.slots)
        if not (per_copy.all(1) | ~per_copy.any(1)).all():
            raise ConfigError("`options['reset_mask']` must select whole game copies (all "
                              f"{self.games.slots} slots of a copy or none), got {mask!r}")
        if self._prev_obs is None and not mask.all():
            raise StateError("the first reset() must reset every game copy (no reset_mask)")
        return np.flatnonzero(per_copy[:, 0]).tolist()

    @gated
    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Steps every copy (see the class docstring for resets and padded slots)."""
        self.check_open()
        if self._prev_obs is None:
            raise StateError("step() called before reset(); call envs.reset(seed=...) first")
        k = self.games.slots
        slot_actions = list(iterate(self.action_space, actions))
        if len(slot_actions) != self.num_envs:
            raise ConfigError(f"`actions` must hold one action per slot ({self.num_envs}), got "
                              f"{len(slot_actions)}")
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=np.bool_)
        truncated = np.zeros(self.num_envs, dtype=np.bool_)
        infos: dict[str, Any] = {}
        stepped = [c for c in range(self.games.copies) if not self._over[c]]
        resetting = np.flatnonzero(self._over).tolist()  # NEXT_STEP: the reset pseudo-step
        if resetting:
            for c, (obs, slot_infos) in zip(resetting, self.games.reset(
                    resetting, [None] * len(resetting))):
                infos = self._put(c, obs, slot_infos, infos)
                self._over[c] = False
        results = self.games.step(stepped, [slot_actions[c * k:(c + 1) * k] for c in stepped])
        same_step = self.autoreset_mode is AutoresetMode.SAME_STEP
        finished = []
        for c, result in zip(stepped, results):
            span = slice(c * k, (c + 1) * k)
            rewards[span], terminated[span], truncated[span] = (
                result.rewards, result.terminated, result.truncated)
            obs_items, slot_infos = result.obs, result.infos
            if same_step:
                infos, obs_items, slot_infos = self._move_finals(c, result, infos)
            infos = self._put(c, obs_items, slot_infos, infos)
            if result.over:
                finished.append(c)
        if finished and same_step:
            resets = self.games.reset(finished, [None] * len(finished))
            for c, (obs_items, slot_infos) in zip(finished, resets):
                infos = self._put(c, obs_items, slot_infos, infos, replace=True)
        else:
            self._over[finished] = True
        self._prev_obs = self._stack()
        return self._prev_obs, rewards, terminated, truncated, infos

    def step_each(self, actions: Any) -> EnvSteps:
        """`step` with each slot's own info dict (see `RelayRLVectorEnv.step_each`); here the
        dicts are read back out of the vector info, so numbers come back as numpy scalars."""
        obs, rewards, terminated, truncated, infos = self.step(actions)
        final_obs = infos.get("final_obs")
        final_mask = infos.get("_final_obs")
        final_info = infos.get("final_info", {})
        top = {k: v for k, v in infos.items() if k not in _FINAL_KEYS}
        finals = {i: (final_obs[i], env_info(final_info, i))
                  for i in range(self.num_envs) if final_mask is not None and final_mask[i]}
        return EnvSteps(obs, rewards, terminated, truncated,
                        tuple(env_info(top, i) for i in range(self.num_envs)), finals)

    def reset_each(self, *, seed: int | Sequence[int | None] | None = None,
                   options: dict[str, Any] | None = None) -> tuple[Any, dict[int, dict[str, Any]]]:
        """`reset` with each slot's own info dict (see `step_each`)."""
        obs, infos = self.reset(seed=seed, options=options)
        return obs, {i: env_info(infos, i) for i in range(self.num_envs)}

    def _move_finals(self, c: int, result: Any, infos: dict[str, Any]
                     ) -> tuple[dict[str, Any], list[Any], list[dict[str, Any]]]:
        # SAME_STEP: a finished slot's last observation and info go to final_obs / final_info;
        # the slot shows what comes next: the padding (its game goes on) or, once its game is
        # reset in this step, the reset observation.
        k = self.games.slots
        obs_items, slot_infos = list(result.obs), list(result.infos)
        for s in range(k):
            if result.terminated[s] or result.truncated[s]:
                infos = self._add_info(infos, {"final_obs": result.obs[s],
                                               "final_info": result.infos[s]}, c * k + s)
                obs_items[s], slot_infos[s] = self._padding, {"active": False}
        return infos, obs_items, slot_infos

    def _put(self, c: int, obs: list[Any], slot_infos: list[dict[str, Any]],
             infos: dict[str, Any], replace: bool = False) -> dict[str, Any]:
        k = self.games.slots
        for s in range(k):
            self._items[c * k + s] = obs[s]
            if replace:
                _clear_slot(infos, c * k + s)
            if slot_infos[s]:
                infos = self._add_info(infos, slot_infos[s], c * k + s)
        return infos

    def _stack(self) -> Any:
        out = create_empty_array(self.single_observation_space, self.num_envs, fn=np.empty)
        return concatenate(self.single_observation_space, self._items, out)  # type: ignore[arg-type]

    @gated
    def render(self) -> tuple[Any, ...]:
        """Each copy's render output."""
        self.check_open()
        return tuple(self.games.render())

    @gated
    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks (and waits for it)."""
        self.check_open()
        if self.games.recording is not None:
            self.games.recording.flush()

    def close_extras(self, **kwargs: Any) -> None:
        """Closes every copy where it lives, flushes and closes the sinks, joins every
        thread."""
        self.agent.shutdown()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            with contextlib.suppress(Exception):  # at exit the atexit hook flushes the rest
                self.close()

    @property
    def needs_reset(self) -> bool:
        """True before the first `reset`: it must reset every copy."""
        return self._prev_obs is None

    def check_open(self) -> None:
        """Raises `StateError` if the env is closed."""
        if self.closed:
            raise StateError("this env is closed; create a new one with relayrl_gym.wrap(...)")

    def as_sb3(self) -> PettingZooSB3VecEnv:
        """This env behind Stable-Baselines3's `VecEnv` API (needs SAME_STEP mode, which
        ``relayrl_gym.wrap(..., api="sb3")`` sets)."""
        from relayrl_gym.wrappers.pettingzoo.sb3 import PettingZooSB3VecEnv

        return PettingZooSB3VecEnv(self)

    def __repr__(self) -> str:
        return (f"PettingZooVectorEnv({self.env_id or 'game'}, copies={self.games.copies}, "
                f"agents={self.games.agents}, run_id={self.run_id!r})")
