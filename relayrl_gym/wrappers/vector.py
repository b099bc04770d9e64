"""`RelayRLVectorEnv`: a Gymnasium vector env whose copies are actors, every step recorded."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import concatenate, create_empty_array

from relayrl_gym._version import __version__
from relayrl_gym.core.episodes import EpisodeTracker
from relayrl_gym.core.options import RecordingOptions
from relayrl_gym.core.transitions import batch_of
from relayrl_gym.errors import ConfigError, StateError, run_all
from relayrl_gym.lifecycle import CallGate, GatedClose, finalizing, gated
from relayrl_gym.recording.pipeline import RunRecording, open_recording
from relayrl_gym.runtime.actor import Actor
from relayrl_gym.runtime.agent import new_run_id
from relayrl_gym.runtime.env_agent import EnvAgent
from relayrl_gym.runtime.processes import ProcessRouter
from relayrl_gym.runtime.router import Router
from relayrl_gym.schema.batches import copy_batch
from relayrl_gym.schema.infos import (
    InfoRows,
    InfosAlike,
    RecordedInfo,
    RowInfos,
    infos_record,
    recorded_info,
)
from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT, Sink
from relayrl_gym.wrappers.actions import ActionBatcher
from relayrl_gym.wrappers.copies import (
    check_distinct,
    checked_reset_mask,
    observation_mismatch,
    vector_spaces,
)
from relayrl_gym.wrappers.factory import make_checked
from relayrl_gym.wrappers.policy import PolicyDriver
from relayrl_gym.wrappers.vector_infos import VectorInfos

if TYPE_CHECKING:
    from relayrl_gym.wrappers.sb3 import RelayRLSB3VecEnv

__all__ = ["EnvSteps", "RelayRLVectorEnv", "new_run_id", "parse_autoreset_mode"]

log = logging.getLogger(__name__)

#: `RelayRLVectorEnv._alike` when no step's infos were found alike.
_NONE_FOUND: tuple[tuple[dict[str, Any], ...], InfosAlike | None] = ((), None)

_AUTORESET_NAMES = {
    "next_step": AutoresetMode.NEXT_STEP, "nextstep": AutoresetMode.NEXT_STEP,
    "same_step": AutoresetMode.SAME_STEP, "samestep": AutoresetMode.SAME_STEP,
    "disabled": AutoresetMode.DISABLED,
}


def parse_autoreset_mode(mode: str | AutoresetMode) -> AutoresetMode:
    """Accepts an `AutoresetMode` or its name ("next_step", "same_step", "disabled")."""
    if isinstance(mode, AutoresetMode):
        return mode
    found = _AUTORESET_NAMES.get(str(mode).lower().replace("-", "_"))
    if found is None:
        raise ConfigError(f"`autoreset_mode` must be one of 'next_step', 'same_step', 'disabled' "
                          f"or a gymnasium.vector.AutoresetMode, got {mode!r}")
    return found


class EnvSteps(NamedTuple):
    """One vector step, with each env's own info dict (`RelayRLVectorEnv.step_each`)."""

    obs: Any
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    #: Each env's info; for an env reset in this step (SAME_STEP), its reset's info.
    infos: tuple[dict[str, Any], ...]
    #: SAME_STEP: env index -> (last observation, last info) of the episode that ended.
    finals: dict[int, tuple[Any, dict[str, Any]]]


# How one env steps; each runs where the env lives (inline, on its actor thread, or in its
# actor process), so they are module functions (a process router ships them by reference).
def _step_only(actor: Actor, action: Any) -> tuple[Any, ...]:
    obs, reward, terminated, truncated, info = actor.env.step(action)
    return obs, reward, terminated, truncated, info, None


def _step_same(actor: Actor, action: Any) -> tuple[Any, ...]:
    """SAME_STEP autoreset: an env that finishes is reset in the same step."""
    env = actor.env
    obs, reward, terminated, truncated, info = env.step(action)
    if terminated or truncated:
        final = (obs, info)
        obs, info = env.reset()
        return obs, reward, terminated, truncated, info, final
    return obs, reward, terminated, truncated, info, None


def _reset_or_step(actor: Actor, arg: tuple[Any, bool]) -> tuple[Any, ...]:
    """NEXT_STEP autoreset: an env that finished last step is reset instead of stepped."""
    action, reset = arg
    if reset:
        obs, info = actor.env.reset()
        return obs, 0.0, False, False, info, None
    return _step_only(actor, action)


def _create_env(actor: Actor, fn: Callable[[], gym.Env]) -> None:
    actor.env = make_checked(fn, actor.index)


class RelayRLVectorEnv(GatedClose, VectorEnv):
    """A `gymnasium.vector.VectorEnv` of ``N`` actors, each owning one env copy, all recorded.

    What the caller sees is what `gymnasium.vector.SyncVectorEnv` of the same envs returns (same
    seeds and actions give the same observations, rewards, flags and infos, in NEXT_STEP,
    SAME_STEP and DISABLED autoreset modes). Behind it, every transition ``(obs, action, reward,
    next_obs, terminated, truncated)`` goes to the sinks (Arrow files under ``./relayrl_runs/``
    by default); NEXT_STEP reset pseudo-steps are never recorded.

    >>> import relayrl_gym, tempfile
    >>> envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tempfile.mkdtemp())
    >>> obs, info = envs.reset(seed=0)
    >>> obs.shape
    (2, 4)
    >>> _ = envs.step(envs.action_space.sample())
    >>> envs.close()
    >>> len(relayrl_gym.load(envs.run_path))
    2
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        *,
        sink: Any = DEFAULT_SINK_ROOT,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        router_scale: int | str = "auto",
        run_id: str | None = None,
        env_id: str | None = None,
        flush_interval: float = 1.0,
        record_info: bool = True,
        batch_rows: int | None = None,
        spill_dir: str | Path | None = None,
        policy: Any = None,
        copy: bool = True,
        observation_mode: str | tuple[gym.Space[Any], gym.Space[Any]] = "same",
    ) -> None:
        """Creates the actors and their environments, and opens the sinks.

        Args:
            env_fns: one zero-argument env factory per actor.
            sink: a directory, URL, `Sink`, list of those, or None (record nothing).
            autoreset_mode: Gymnasium autoreset mode (default NEXT_STEP, Gymnasium's default).
            router_scale: "auto" or 0 (step every env on the calling thread, safe for any env)
                or n >= 1 (one thread per actor, at most n stepping at once).
            run_id: name of the run (default: env id, time and a random suffix).
            env_id: env id recorded in the run metadata (default: from the env's spec).
            flush_interval: seconds between time-based flushes to the sinks.
            record_info: record each step's info dict as JSON (``info`` column).
            batch_rows: rows per recorded batch (default: sized to ~8 MiB).
            spill_dir: where rows wait while a sink is down, past 64 MiB in memory (default:
                ``_spill`` in the Arrow sink's directory, else ``relayrl_runs/_spill``).
            policy: a ModelModule (or a path to one) that `act` answers with; steps taking its
                actions are recorded with its version and extra outputs.
            copy: as SyncVectorEnv's; observations returned are new arrays either way.
            observation_mode: "same", "different" or (batched, single) observation spaces, as
                SyncVectorEnv's; copies that do not fit raise RuntimeError, as there.
        """
        super().__init__()
        if not env_fns:
            raise ConfigError("`env_fns` must hold at least one env factory (actors >= 1)")
        options = RecordingOptions(sink=sink, run_id=run_id, flush_interval=flush_interval,
                                   record_info=record_info, batch_rows=batch_rows,
                                   spill_dir=spill_dir)
        self.num_envs = len(env_fns)
        self.autoreset_mode = parse_autoreset_mode(autoreset_mode)
        self.record_info = record_info
        self.closed = False
        self.copy = copy
        self.observation_mode = observation_mode
        self._gate = CallGate()

        if router_scale == "auto":
            # Inline is safe for every env (one thread steps them all, as SyncVectorEnv does)
            # and decided without building or stepping anything; threads and processes are the
            # caller's choice.
            router_scale = 0
        elif isinstance(router_scale, str) and router_scale != "processes":
            raise ConfigError(f"`router_scale` must be 'auto', 'processes' or an int >= 0, got "
                              f"{router_scale!r}")
        self._actors = [Actor(i) for i in range(self.num_envs)]
        self._router: Router | ProcessRouter = (
            ProcessRouter(self._actors) if isinstance(router_scale, str) else
            Router(router_scale, self._actors))
        try:
            self._router.create(_create_env, list(env_fns), self._actors)
            first = self._actors[0].env
            self.metadata = dict(first.metadata)
            self.metadata["autoreset_mode"] = self.autoreset_mode
            self.render_mode = first.render_mode
            envs = [actor.env for actor in self._actors]
            check_distinct(envs)
            (self.single_observation_space, self.observation_space, self.single_action_space,
             self.action_space) = vector_spaces(envs, observation_mode)
            self._actions = ActionBatcher(self.single_action_space, self.action_space,
                                          self.num_envs)
            if env_id is None and first.spec is not None:
                env_id = first.spec.id
            self.env_id = env_id
            self.run_id = run_id or new_run_id(env_id)
            self._policy = (PolicyDriver(policy, self.single_observation_space,
                                         self.single_action_space)
                            if policy is not None else None)
            recording = self._open_recording(options, router_scale, first)
        except BaseException:
            self.closed = True  # nothing for __del__ to close: done here
            self._close_envs_quietly()
            raise
        runs = [recording] if recording is not None else []
        self.agent = EnvAgent(self._actors, self._router, runs,
                              on_shutdown=self._close_envs, on_update_model=self._update_policy)
        if self._policy is not None:
            for actor in self._actors:
                actor.model, actor.model_version = self._policy.model, self._policy.version
            if not self._policy.remote:  # an inference server follows the models itself
                self.agent.follow_models()
        self._recorder = recording.recorder if recording is not None else None
        self._writer = recording.writer if recording is not None else None
        #: Where the recorded copies of the observations go (see `ObsSlab`).
        self._slab = self._recorder.obs_slab() if self._recorder is not None else None
        self._next_step = self.autoreset_mode is AutoresetMode.NEXT_STEP
        self._same_step = self.autoreset_mode is AutoresetMode.SAME_STEP
        self._box_obs = isinstance(self.single_observation_space, gym.spaces.Box)
        self._batch_obs_shape = (self.num_envs, *(self.single_observation_space.shape or ()))
        self._arange = np.arange(self.num_envs, dtype=np.int32)
        self._row_infos = RowInfos()
        self._vector_infos = VectorInfos()
        #: The last step's infos found alike by `_record`, and the tuple they were found in.
        self._alike: tuple[tuple[dict[str, Any], ...], InfosAlike | None] = _NONE_FOUND
        self._prev_obs: Any = None
        self._broken_by: str | None = None  # why the last step() failed, until reset()
        self._obs_items: tuple[Any, ...] = ()  # each env's latest obs, as SyncVectorEnv keeps
        self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        self._any_done = False
        self._episodes = EpisodeTracker(
            self.num_envs, self._recorder.new_episode_id if self._recorder is not None else None)

    # -- construction helpers ------------------------------------------------------------------
    def _close_envs(self) -> None:
        policy = getattr(self, "_policy", None)
        run_all([lambda: self._router.run(
                     lambda actor, _: actor.env.close() if actor.env is not None else None,
                     [None] * len(self._actors), self._actors),
                 *([policy.close] if policy is not None else [])])

    def _close_envs_quietly(self) -> None:
        try:
            self._close_envs()
        except Exception:
            log.exception("closing environments after a failed construction")
        self._router.close()

    def _open_recording(self, options: RecordingOptions, router_scale: int | str, first: gym.Env
                        ) -> RunRecording | None:
        self.run_path: Path | None = None
        if not options.recording:
            return None
        recording = open_recording(
            options, self.run_id,
            lambda sinks: TransitionSchema.build(
                self.single_observation_space, self.single_action_space,
                metadata=self._run_metadata(first, router_scale, sinks),
                data_type=self._policy.data_type if self._policy is not None else None),
            [str(a.id) for a in self._actors])
        self.run_path = recording.run_path
        return recording

    def _run_metadata(self, first: gym.Env, router_scale: int | str, sinks: list[Sink]
                      ) -> dict[str, Any]:
        spec_json = None
        if first.spec is not None:
            try:
                spec_json = json.loads(first.spec.to_json())
            except Exception:  # kwargs that JSON cannot hold: keep the id only
                spec_json = None
        return {
            "run_id": self.run_id,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "relayrl_gym_version": __version__,
            "gymnasium_version": gym.__version__,
            "env_id": self.env_id,
            "env_spec": spec_json,
            "num_envs": self.num_envs,
            "actor_ids": [str(a.id) for a in self._actors],
            "autoreset_mode": self.autoreset_mode.value,
            "router_scale": router_scale,
            "render_mode": self.render_mode,
            "sinks": [type(s).__name__ for s in sinks],
        }

    # -- VectorEnv API ---------------------------------------------------------------------------
    @gated
    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Resets the envs (env i gets ``seed + i``); starts a new episode in each."""
        obs, each = self._reset(seed, options)
        infos: dict[str, Any] = {}
        for i, info in each.items():
            infos = self._add_info(infos, info, i)
        return obs, infos

    @gated
    def reset_each(self, *, seed: int | Sequence[int | None] | None = None,
                   options: dict[str, Any] | None = None) -> tuple[Any, dict[int, dict[str, Any]]]:
        """`reset`, with each reset env's own info dict (by env index) instead of Gymnasium's
        vector info (see `step_each`)."""
        return self._reset(seed, options)

    def _reset(self, seed: int | Sequence[int | None] | None, options: dict[str, Any] | None
               ) -> tuple[Any, dict[int, dict[str, Any]]]:
        self.check_open()
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int | np.integer):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ConfigError(f"`seed` as a list must have one seed per env "
                                  f"(num_envs={self.num_envs}), got {len(seeds)}")
        options = dict(options) if options else None
        mask = self._reset_mask(options)
        if self._policy is not None:
            self._policy.forget()
        indices = [i for i in range(self.num_envs) if mask is None or mask[i]]
        actors = [self._actors[i] for i in indices]
        # No options, no keyword (as DummyVecEnv): an env whose reset takes only a seed works.
        extra = {"options": options} if options is not None else {}
        results = self._router.run(lambda actor, s: actor.env.reset(seed=s, **extra),
                                   [seeds[i] for i in indices], actors)
        items = list(self._obs_items) if mask is not None and self._obs_items else \
            [None] * self.num_envs
        for i, r in zip(indices, results):
            items[i] = r[0]
        self._obs_items = tuple(items)
        obs = self._stack(items)
        self._autoreset = self._autoreset.copy()
        self._autoreset[indices] = False
        self._episodes.start(indices)
        self._any_done = bool(self._autoreset.any())
        self._broken_by = None
        self._prev_obs = self._own_copy(obs) if self._recorder is not None else obs
        return obs, {i: info for i, (_, info) in zip(indices, results)}

    def _reset_mask(self, options: dict[str, Any] | None) -> np.ndarray | None:
        mask = checked_reset_mask(options, self.num_envs)
        if mask is None:
            return None
        if self._prev_obs is None and not mask.all():
            when = "after a failed step()" if self._broken_by else "the first time"
            raise StateError(f"reset() must reset every env (no reset_mask) {when}")
        return mask

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Steps every env with its action; autoresets as `metadata["autoreset_mode"]` says."""
        with self._gate:  # (the hot path: no decorator layer)
            obs, rewards, terminated, truncated, step_infos, finals = self._step(actions)
            some = bool(finals) or any(step_infos)
            # (the key caches it uses are this env's: kept under the gate, as steps are)
            batched = self._batched_infos(step_infos) if some and not finals else None
        if batched is not None:
            return obs, rewards, terminated, truncated, batched
        infos: dict[str, Any] = {}
        if some:
            for i, info in enumerate(step_infos):
                final = finals.get(i)
                if final is not None:
                    infos = self._add_info(infos, {"final_obs": final[0],
                                                   "final_info": final[1]}, i)
                if info:
                    infos = self._add_info(infos, info, i)
        return obs, rewards, terminated, truncated, infos

    def _batched_infos(self, step_infos: tuple[dict[str, Any], ...]) -> dict[str, Any] | None:
        """The step's vector info when every env's info is alike (`VectorInfos`), else None."""
        found_in, alike = self._alike
        self._alike = _NONE_FOUND  # (the step's infos are not kept past it)
        if found_in is not step_infos:
            alike = self._row_infos.alike(step_infos)
        return None if alike is None else self._vector_infos(alike)

    @gated
    def step_each(self, actions: Any) -> EnvSteps:
        """`step`, with each env's own info dict instead of Gymnasium's vector info.

        Gymnasium's vector info batches each key into one array, whose dtype the first env
        reporting it decides (a ``0.25`` after a ``1`` becomes ``0``); here every env's dict
        comes back as the env returned it. The SB3 front end steps through this.
        """
        return EnvSteps(*self._step(actions))

    def _step(self, actions: Any) -> tuple[Any, ...]:
        if self.closed:
            self.check_open()
        if self._writer is not None and self._writer.alarm is not None:
            alarm = self._writer.take_alarm()  # storage in trouble: said before the next step
            if alarm is not None:
                raise alarm
        unreset = self._prev_obs is None
        if unreset and self._broken_by is not None:
            raise StateError(f"a previous step() failed ({self._broken_by}), so the envs "
                             "are out of step; call envs.reset() before stepping again")
        if self._any_done and self.autoreset_mode is AutoresetMode.DISABLED:
            done = np.flatnonzero(self._autoreset).tolist()
            raise StateError(f"envs {done} are done and autoreset_mode is DISABLED; reset them "
                             "with reset(options={'reset_mask': mask}) before stepping")
        action_list = self._actions.split(actions)
        # Before the first reset the envs decide (gym.make's envs raise ResetNeeded, as under
        # SyncVectorEnv); a step they take then has no observation to start from: not recorded.
        recording = self._recorder is not None and not unreset
        recorded_actions = self._actions.recorded(actions, action_list) if recording else None
        try:
            if self._next_step and self._any_done:  # some envs reset instead of stepping
                results = self._router.run(_reset_or_step, list(zip(
                    action_list, self._autoreset.tolist())), self._actors)
            else:
                results = self._router.run(_step_same if self._same_step else _step_only,
                                           action_list, self._actors)
        except BaseException as err:
            # Some envs may have stepped and others not: the batch is no longer consistent.
            self._prev_obs = None
            self._broken_by = f"{type(err).__name__}: {err}"
            raise

        obs_items, rewards_l, terminated_l, truncated_l, info_l, final_l = zip(*results)
        rewards = np.array(rewards_l, dtype=np.float64)
        terminated = np.array(terminated_l, dtype=np.bool_)
        truncated = np.array(truncated_l, dtype=np.bool_)
        any_done = any(terminated_l) or any(truncated_l)
        finals: dict[int, tuple[Any, dict[str, Any]]] = {}
        if self._same_step and any_done:
            finals = {i: final for i, final in enumerate(final_l) if final is not None}
        self._obs_items = obs_items
        obs = self._stack(obs_items)
        reset_rows = self._autoreset if self._next_step and self._any_done else None
        if not recording:
            self._prev_obs = self._own_copy(obs) if self._recorder is not None else obs
        else:
            # One copy of obs serves as this step's next_obs and the next step's obs.
            own_obs = self._own_copy(obs)
            # The per-env tuples are immutable: the recorder keeps them instead of array copies.
            self._record(actions, recorded_actions, own_obs, rewards_l, terminated_l, truncated_l,
                         info_l, finals, reset_rows)
            self._prev_obs = own_obs
        self._advance_episodes(terminated, truncated, reset_rows, any_done)
        if unreset:  # episodes are counted from the first observation the wrapper saw
            self._episodes.start()
        return obs, rewards, terminated, truncated, info_l, finals

    def _own_copy(self, obs: Any) -> Any:
        """The recorder's own copy of a batch of observations."""
        slab = self._slab
        if (slab is not None and type(obs) is np.ndarray and obs.dtype == slab.dtype
                and obs.shape[1:] == slab.shape):
            return slab.copy(obs)
        return copy_batch(obs)

    def _record(self, user_actions: Any, actions: Any, own_obs: Any, rewards: tuple[Any, ...],
                terminated: tuple[Any, ...],
                truncated: tuple[Any, ...], step_infos: tuple[dict[str, Any], ...],
                finals: dict[int, tuple[Any, dict[str, Any]]], reset_rows: np.ndarray | None
                ) -> None:
        # The recorder keeps what it is given: pass arrays nobody else will modify (the
        # tracker replaces its episode ids and steps, never modifies them in place).
        assert self._recorder is not None
        next_obs = own_obs
        if finals:
            next_obs = copy_batch(own_obs)
            obs_codec = self._recorder.schema.obs
            for i, (final_obs, _) in finals.items():
                next_obs = obs_codec.replace_row(next_obs, i, final_obs)
        infos: dict[int, RecordedInfo] | InfoRows | None = None
        self._alike = _NONE_FOUND
        if self.record_info and (finals or any(step_infos)):
            if not finals and reset_rows is None and all(step_infos):
                alike = self._row_infos.alike(step_infos)
                self._alike = (step_infos, alike)  # (`step` batches the same infos)
                if alike is not None:
                    infos = infos_record(alike)  # every env's info alike: one record
            if infos is None:
                each: dict[int, RecordedInfo] = {}
                for i, step_info in enumerate(step_infos):
                    info = finals[i][1] if i in finals else step_info
                    if info and (reset_rows is None or not reset_rows[i]):
                        kept = recorded_info(info)
                        if kept is not None:
                            each[i] = kept
                infos = each or None
        acted = self._policy.take(user_actions) if self._policy is not None else None
        episodes = self._episodes
        self._recorder.record(batch_of((
            self._arange, episodes.ids, episodes.steps, self._prev_obs, actions, rewards,
            next_obs, terminated, truncated, -1 if acted is None else acted[0], infos,
            None, None, None if reset_rows is None else ~reset_rows,
            None if acted is None else acted[1], None, None)))

    def _advance_episodes(self, terminated: np.ndarray, truncated: np.ndarray,
                          reset_rows: np.ndarray | None, any_done: bool) -> None:
        self._episodes.advance()
        starting = reset_rows if reset_rows is not None else None
        if any_done:
            done = terminated | truncated
            if self._same_step:
                starting = done
            self._autoreset = done
        elif self._any_done:
            self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        self._any_done = any_done
        if starting is not None:
            # NEXT_STEP: the pseudo-step reset those envs; SAME_STEP: they reset in this step.
            self._episodes.start(starting)

    def _stack(self, items: Sequence[Any]) -> Any:
        space = self.single_observation_space
        if self._box_obs:
            # One C call instead of concatenate()'s stack; same dtype and values.
            try:
                stacked = np.array(items, dtype=space.dtype)
            except (TypeError, ValueError):  # ragged: concatenate() names no env; see below
                stacked = None
            if stacked is not None and stacked.shape == self._batch_obs_shape:
                return stacked
        out = create_empty_array(space, self.num_envs, fn=np.empty)
        try:
            return concatenate(space, items, out)  # type: ignore[arg-type]
        except (TypeError, ValueError, KeyError, IndexError) as err:
            raise observation_mismatch(space, items) from err

    def act(self, obs: Any = None, mask: Any = None) -> np.ndarray:
        """Actions of the env's policy (``wrap(policy=...)``) for ``obs`` (default: the latest
        observations), one batched model call; stepping them records the policy's version."""
        self.check_open()
        if self._policy is None:
            raise StateError("this env has no policy; create it with relayrl_gym.wrap(env, "
                             "policy=ModelModule or path)")
        if obs is None:
            if self._prev_obs is None:
                raise StateError("act() before reset(); call envs.reset(seed=...) first")
            obs = self._prev_obs
        actions = self._policy.act(obs, mask)
        version = self._policy.answered
        if version != self._actors[0].model_version:  # a served policy's new version
            for actor in self._actors:
                actor.model_version = version
        return actions

    def _update_policy(self, model: Any, ids: Any = None) -> int:
        if self._policy is None:
            raise StateError("this env has no policy to update; create it with "
                             "relayrl_gym.wrap(env, policy=...)")
        if ids is not None:
            raise ConfigError("a wrapped env's actors share one policy: update_model(model) "
                              "without ids")
        version = self._policy.update(model)
        for actor in self._actors:
            actor.model, actor.model_version = self._policy.model, version
        return version

    @gated
    def render(self) -> tuple[Any, ...]:
        """Each env's render output, rendered on the thread that owns the env."""
        self.check_open()
        return tuple(self._router.run(lambda actor, _: actor.env.render(),
                                      [None] * self.num_envs, self._actors))

    @gated
    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Calls ``name(*args, **kwargs)`` on every env (or reads it, if not callable)."""
        self.check_open()

        def call_one(actor: Actor, _: Any) -> Any:
            attr = actor.env.get_wrapper_attr(name)
            return attr(*args, **kwargs) if callable(attr) else attr

        return tuple(self._router.run(call_one, [None] * self.num_envs, self._actors))

    @gated
    def get_attr(self, name: str) -> tuple[Any, ...]:
        """The attribute ``name`` of every env."""
        self.check_open()
        return tuple(self._router.run(lambda actor, _: actor.env.get_wrapper_attr(name),
                                      [None] * self.num_envs, self._actors))

    @gated
    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        """Sets ``name`` on every env: one value for all, or a list with one value per env."""
        self.check_open()
        if not isinstance(values, list | tuple):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ConfigError(f"`values` must have one value per env (num_envs={self.num_envs}), "
                              f"got {len(values)}")
        self._router.run(lambda actor, v: actor.env.set_wrapper_attr(name, v), list(values),
                         self._actors)

    @property
    def envs(self) -> list[gym.Env]:
        """The env copies, in actor order (SyncVectorEnv's and DummyVecEnv's ``envs``).

        With threads (``router_scale >= 1``) each env belongs to its actor's thread: read
        from them here, but step, render or call them through the vector env (`call`,
        `get_attr`), which runs the call on the env's own thread.
        """
        return [actor.env for actor in self._actors]

    # Per-env tuples, as SyncVectorEnv returns them (VectorEnv declares single values).
    @property
    def np_random_seed(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.get_attr("np_random_seed")

    @property  # type: ignore[misc]
    def np_random(self) -> tuple[np.random.Generator, ...]:  # type: ignore[override]
        return self.get_attr("np_random")

    @gated
    def flush(self) -> None:
        """Writes every transition recorded so far to the sinks (and waits for it)."""
        self.check_open()
        self.agent.flush()

    def close_extras(self, **kwargs: Any) -> None:
        """Closes the envs on their threads, flushes and closes the sinks, joins every thread."""
        try:
            self.agent.shutdown()
        finally:
            self._slab = None  # its array (up to a block of observations) is let go of

    def __del__(self) -> None:
        # VectorEnv has no __del__ of its own: an env dropped without close() must not leave
        # actor or writer threads running. At exit the lifecycle hook has closed it already;
        # once the interpreter finalizes, actor threads no longer run, so nothing waits on them.
        if not getattr(self, "closed", True) and hasattr(self, "agent") and not finalizing():
            try:
                self.close()
            except Exception:
                log.exception("closing a RelayRLVectorEnv dropped without close()")

    def check_open(self) -> None:
        """Raises `StateError` if the env is closed."""
        if self.closed:
            raise StateError("this env is closed; create a new one with relayrl_gym.wrap(...)")

    @property
    def needs_reset(self) -> bool:
        """True before the first `reset` and after a `step` that failed: the next reset must
        reset every env (no ``reset_mask``)."""
        return self._prev_obs is None

    @gated
    def call_each(self, fn: Callable[[gym.Env], Any], indices: Sequence[int] | None = None
                  ) -> list[Any]:
        """``fn(env)`` for the envs at ``indices`` (default: all), each on the thread that owns
        its env (`call` with a function instead of a name)."""
        self.check_open()
        actors = self._actors if indices is None else [self._actors[i] for i in indices]
        return self._router.run(lambda actor, _: fn(actor.env), [None] * len(actors), actors)

    def __repr__(self) -> str:
        return (f"RelayRLVectorEnv({self.env_id or 'env'}, num_envs={self.num_envs}, "
                f"router_scale={self._router.scale}, run_id={self.run_id!r})")

    def as_sb3(self) -> RelayRLSB3VecEnv:
        """This env behind Stable-Baselines3's `VecEnv` API: same actors, recording and run.

        SB3 resets a finished env in the same step, so the env must be in SAME_STEP mode: an
        env created in another mode is switched to it if it has not been reset yet (recorded
        rows are the same in every mode; the run description keeps the mode the env was
        created with, so prefer ``relayrl_gym.wrap(env, api="sb3")``). See `RelayRLSB3VecEnv`.

        Raises:
            StateError: the env was already reset in another autoreset mode, or is closed.
            MissingDependencyError: stable-baselines3 is not installed.
        """
        from relayrl_gym.wrappers.sb3 import RelayRLSB3VecEnv

        self.check_open()
        if self.autoreset_mode is not AutoresetMode.SAME_STEP:
            if self._prev_obs is not None:
                raise StateError(
                    f"as_sb3() needs autoreset_mode 'same_step', and this env was already reset "
                    f"in {self.autoreset_mode.name.lower()!r} mode; call as_sb3() before the first "
                    "reset(), or create it with relayrl_gym.wrap(env, api='sb3')")
            self.autoreset_mode = AutoresetMode.SAME_STEP
            self.metadata["autoreset_mode"] = AutoresetMode.SAME_STEP
            self._next_step, self._same_step = False, True
        return RelayRLSB3VecEnv(self)

