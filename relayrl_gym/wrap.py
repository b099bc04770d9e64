"""`relayrl_gym.wrap`: one line from an env to a recorded, multi-actor env."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal, overload

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from relayrl_gym.core.options import RecordingOptions
from relayrl_gym.errors import ConfigError, add_note
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT
from relayrl_gym.wrappers.detect import is_pettingzoo
from relayrl_gym.wrappers.factory import FirstMade, env_factories
from relayrl_gym.wrappers.pettingzoo.build import wrap_pettingzoo
from relayrl_gym.wrappers.vector import RelayRLVectorEnv, parse_autoreset_mode

if TYPE_CHECKING:
    from relayrl_gym.wrappers.sb3 import RelayRLSB3VecEnv

__all__ = ["wrap"]

_APIS = ("gymnasium", "sb3")


def _made_by(env: Any) -> Any:
    # A factory must be called to know what it makes (a Gymnasium env or a PettingZoo game);
    # what it makes is the first actor's env (or game), so errors name actor 0.
    try:
        return env()
    except Exception as err:  # the caller's own exception reaches them as itself
        add_note(err, "relayrl-gym: raised while creating the environment of actor 0")
        raise


@overload
def wrap(env: str | gym.Env, actors: int | None = ..., *,
         api: Literal["gymnasium"] | None = ..., **kwargs: Any) -> RelayRLVectorEnv: ...
@overload
def wrap(env: str | gym.Env, actors: int | None = ..., *, api: Literal["sb3"], **kwargs: Any
         ) -> RelayRLSB3VecEnv: ...
@overload
def wrap(env: Any, actors: int | None = ..., *, api: str | None = ..., **kwargs: Any) -> Any: ...


def wrap(
    env: Any,
    actors: int | None = None,
    *,
    api: str | None = None,
    sink: Any = DEFAULT_SINK_ROOT,
    autoreset_mode: str | AutoresetMode | None = None,
    router_scale: int | str = "auto",
    run_id: str | None = None,
    flush_interval: float = 1.0,
    record_info: bool = True,
    batch_rows: int | None = None,
    spill_dir: str | None = None,
    policy: Any = None,
    policies: dict[Any, Any] | None = None,
    copy: bool = True,
    observation_mode: str | tuple[gym.Space[Any], gym.Space[Any]] = "same",
    **make_kwargs: Any,
) -> Any:
    """Wraps an env into a recorded vector env of ``actors`` copies, or a PettingZoo game into
    a recorded game.

    Args:
        env: a Gymnasium env id, a `gymnasium.Env` (itself actor 0; the other actors' envs
            remade from its spec, else deep-copied), a PettingZoo `ParallelEnv` / `AECEnv`, a
            zero-argument callable returning one of those (called once here to see which), or
            a list of env factories, one per actor (CleanRL's ``make_env(i)``).
        actors: number of env copies (actors), >= 1 (default: the list's length, else 1). For
            a PettingZoo game:
            game copies; left out, a game keeps its own API (or, with `policies` leaving one
            agent, becomes a single `gymnasium.Env`).
        api: "gymnasium" (default for Gymnasium envs) for a `gymnasium.vector.VectorEnv`,
            "sb3" for a Stable-Baselines3 `VecEnv` (`RelayRLSB3VecEnv`; needs ``pip install
            "relayrl-gym[sb3]"``), "pettingzoo" (default for a game without policies) for the
            game's own API, recorded.
        sink: where transitions go: a directory (default ``./relayrl_runs``), ``arrow://DIR``, a
            `Sink`, a list of those, or None to record nothing.
        autoreset_mode: "next_step" (Gymnasium's default), "same_step" or "disabled";
            api="sb3" always uses "same_step" (SB3 resets a finished env in the same step).
        router_scale: "auto" (default) or 0 steps every env on the calling thread, as
            SyncVectorEnv does: safe for any env, and nothing is built or stepped to decide it.
            n >= 1 gives each actor its own thread (at most n stepping at once), for
            thread-safe envs whose steps release the GIL (MuJoCo, I/O, sleeps). "processes"
            gives each actor a process of its own (the env factory must be picklable by
            cloudpickle), for envs that hold the GIL or are not thread-safe.
        run_id: the run's name (default: env id, UTC time and a random suffix).
        flush_interval: seconds between time-based flushes (the most a crash can lose).
        record_info: record each step's info dict as JSON.
        batch_rows: rows per recorded Arrow batch (default: sized to about 8 MiB).
        spill_dir: where rows wait, as Arrow files, while a sink is down and more than 64 MiB
            are waiting (default: ``_spill`` in the Arrow sink's directory, else
            ``relayrl_runs/_spill``); they are retried with backoff.
        policy: a ModelModule (or a path to one, or an inference server's URL:
            ``zmq+tcp://HOST:PORT``, ``nats://HOST:PORT/NAME``) behind ``envs.act(obs)``: one
            batched model call (or request) for every copy; steps taking those actions record
            its version and outputs.
        policies: PettingZoo only: ``{agent: ModelModule | path | URL | callable}``, the agents the
            runtime plays (batched across game copies, hot-swappable with
            ``env.update_policy(agent, model)``); the caller plays the others.
        copy: as `gymnasium.vector.SyncVectorEnv`'s (observations are new arrays either way).
        observation_mode: as SyncVectorEnv's: "same" (default), "different" (copies whose
            observation spaces differ in bounds only), or (batched, single) spaces.
        **make_kwargs: passed to `gymnasium.make` when ``env`` is an id.

    Returns:
        A `RelayRLVectorEnv` (api="sb3": a `RelayRLSB3VecEnv` over one). For a PettingZoo
        game: a recorded env of the same kind (`RecordedParallelEnv` / `RecordedAECEnv`); with
        `policies` leaving one agent, a `gymnasium.Env` of that agent (`PettingZooAgentEnv`),
        or with ``actors`` or ``api`` a `PettingZooVectorEnv` of it (api="sb3": an SB3
        `VecEnv`); a ParallelEnv with several agents left and ``actors`` / ``api``: those
        agents as slots of one vector env (parameter sharing). ``run_id`` names the run and
        ``run_path`` is its Arrow directory; a game whose agents have different spaces is one
        run per group of agents with the same spaces (``run_ids`` / ``run_paths`` by agent).

    >>> import relayrl_gym
    >>> envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=None)
    >>> envs.num_envs, envs.single_action_space
    (4, Discrete(2))
    >>> envs.close()
    """
    # Checked before anything is made.
    options = RecordingOptions(sink=sink, run_id=run_id, flush_interval=flush_interval,
                               record_info=record_info, batch_rows=batch_rows,
                               spill_dir=spill_dir)
    first = made = None
    if is_pettingzoo(env):
        first, make = env, None
    elif callable(env) and not isinstance(env, str | gym.Env) and router_scale in ("auto", 0):
        # Inline, the env made to see what the factory makes is actor 0's. With threads or
        # processes each env is made where it will live, so a factory is taken to make
        # Gymnasium envs (games step inline), and one that makes something else is named there.
        made = _made_by(env)
        if is_pettingzoo(made):
            first, make = made, env
    if first is not None:
        if policy is not None:
            raise ConfigError("`policy` is for Gymnasium envs; for a PettingZoo game pass "
                              "policies={agent: ModelModule, path or callable}")
        if make_kwargs:
            raise ConfigError(f"extra keyword arguments {sorted(make_kwargs)} are passed to "
                              "gymnasium.make and need an env id string, not a PettingZoo game")
        return wrap_pettingzoo(first, make, actors=actors, api=api, policies=policies,
                               options=options, autoreset_mode=autoreset_mode,
                               router_scale=router_scale)
    if policies is not None:
        raise ConfigError("`policies` plays agents of a PettingZoo game; for a Gymnasium env "
                          "pass policy=ModelModule or path")
    if api is None:
        api = "gymnasium"
    if api not in _APIS:
        raise ConfigError(f"`api` must be one of {', '.join(map(repr, _APIS))}, got {api!r}")
    sb3 = api == "sb3"
    if sb3:
        from relayrl_gym.wrappers.sb3 import RelayRLSB3VecEnv  # before any env is made

        if autoreset_mode is not None and \
                parse_autoreset_mode(autoreset_mode) is not AutoresetMode.SAME_STEP:
            raise ConfigError(f"api='sb3' resets a finished env in the same step: leave out "
                              f"`autoreset_mode` or pass 'same_step', got {autoreset_mode!r}")
    if autoreset_mode is None:
        autoreset_mode = AutoresetMode.SAME_STEP if sb3 else AutoresetMode.NEXT_STEP
    env_fns, env_id = env_factories(env, actors, make_kwargs)
    if sb3 and isinstance(env, str):  # as make_vec_env(env_id): SB3 logs episode statistics
        from relayrl_gym.wrappers.sb3 import monitored

        env_fns = [functools.partial(monitored, fn) for fn in env_fns]
    premade = None
    if made is not None:  # the env made to see what the factory makes serves once more
        premade = FirstMade(env_fns[0], made)
        env_fns = [premade, *env_fns[1:]]
    try:
        envs = RelayRLVectorEnv(env_fns, sink=sink, autoreset_mode=autoreset_mode,
                                router_scale=router_scale, run_id=run_id, env_id=env_id,
                                flush_interval=flush_interval, record_info=record_info,
                                batch_rows=batch_rows, spill_dir=spill_dir, policy=policy,
                                copy=copy, observation_mode=observation_mode)
    finally:
        if premade is not None:
            premade.discard()
    if not sb3:
        return envs
    try:
        return RelayRLSB3VecEnv(envs)
    except BaseException:
        envs.close()
        raise
