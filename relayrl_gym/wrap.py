"""`relayrl_gym.wrap`: one line from an env to a recorded, multi-actor env."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

from gymnasium.vector import AutoresetMode

from relayrl_gym.errors import ConfigError
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT
from relayrl_gym.wrappers.factory import env_factories
from relayrl_gym.wrappers.vector import RelayRLVectorEnv, parse_autoreset_mode

if TYPE_CHECKING:
    from relayrl_gym.wrappers.sb3 import RelayRLSB3VecEnv

__all__ = ["wrap"]

_APIS = ("gymnasium", "sb3")


@overload
def wrap(env: Any, actors: int = ..., *, api: Literal["gymnasium"] = ...,
         **kwargs: Any) -> RelayRLVectorEnv: ...
@overload
def wrap(env: Any, actors: int = ..., *, api: Literal["sb3"], **kwargs: Any
         ) -> RelayRLSB3VecEnv: ...
@overload
def wrap(env: Any, actors: int = ..., *, api: str, **kwargs: Any
         ) -> RelayRLVectorEnv | RelayRLSB3VecEnv: ...


def wrap(
    env: Any,
    actors: int = 1,
    *,
    api: str = "gymnasium",
    sink: Any = DEFAULT_SINK_ROOT,
    autoreset_mode: str | AutoresetMode | None = None,
    router_scale: int | str = "auto",
    run_id: str | None = None,
    flush_interval: float = 1.0,
    record_info: bool = True,
    batch_rows: int | None = None,
    spill_dir: str | None = None,
    policy: Any = None,
    **make_kwargs: Any,
) -> RelayRLVectorEnv | RelayRLSB3VecEnv:
    """Wraps an env into a recorded vector env of ``actors`` copies.

    Args:
        env: a Gymnasium env id, a `gymnasium.Env` (remade from its spec, else deep-copied), or
            a zero-argument callable returning an env.
        actors: number of env copies (actors), >= 1.
        api: "gymnasium" for a `gymnasium.vector.VectorEnv`, "sb3" for a Stable-Baselines3
            `VecEnv` (`RelayRLSB3VecEnv`; needs ``pip install "relayrl-gym[sb3]"``).
        sink: where transitions go: a directory (default ``./relayrl_runs``), ``arrow://DIR``, a
            `Sink`, a list of those, or None to record nothing.
        autoreset_mode: "next_step" (Gymnasium's default), "same_step" or "disabled";
            api="sb3" always uses "same_step" (SB3 resets a finished env in the same step).
        router_scale: "auto" measures the env and picks inline stepping (cheap envs) or one
            thread per actor (slow envs whose step releases the GIL); 0 or n >= 1 forces it.
        run_id: the run's name (default: env id, UTC time and a random suffix).
        flush_interval: seconds between time-based flushes (the most a crash can lose).
        record_info: record each step's info dict as JSON.
        batch_rows: rows per recorded Arrow batch (default: sized to about 4 MiB).
        spill_dir: where rows wait, as Arrow files, while a sink is down and more than 64 MiB
            are waiting (default: ``_spill`` in the Arrow sink's directory, else
            ``relayrl_runs/_spill``); they are retried with backoff.
        policy: a ModelModule (or a path to one) behind ``envs.act(obs)``: one batched model
            call for every copy; steps taking those actions record its version and outputs.
        **make_kwargs: passed to `gymnasium.make` when ``env`` is an id.

    Returns:
        A `RelayRLVectorEnv` (api="sb3": a `RelayRLSB3VecEnv` over one); ``run_id`` names the
        run and ``run_path`` is its Arrow directory.

    >>> import relayrl_gym
    >>> envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=None)
    >>> envs.num_envs, envs.single_action_space
    (4, Discrete(2))
    >>> envs.close()
    """
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
    envs = RelayRLVectorEnv(env_fns, sink=sink, autoreset_mode=autoreset_mode,
                            router_scale=router_scale, run_id=run_id, env_id=env_id,
                            flush_interval=flush_interval, record_info=record_info,
                            batch_rows=batch_rows, spill_dir=spill_dir, policy=policy)
    if not sb3:
        return envs
    try:
        return RelayRLSB3VecEnv(envs)
    except BaseException:
        envs.close()
        raise
