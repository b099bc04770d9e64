"""What ``relayrl_gym.wrap`` builds from a PettingZoo game: the same API recorded, a Gymnasium
view of the one agent left to the caller, or a vector env of agents sharing one policy."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from typing import Any

from gymnasium.vector import AutoresetMode

from relayrl_gym.core.options import RecordingOptions
from relayrl_gym.errors import ConfigError, EnvCreationError
from relayrl_gym.wrappers.detect import is_aec, is_parallel, require_pettingzoo
from relayrl_gym.wrappers.pettingzoo.observations import policy_space
from relayrl_gym.wrappers.pettingzoo.policies import AgentPolicies
from relayrl_gym.wrappers.pettingzoo.recording import GameRecording
from relayrl_gym.wrappers.pettingzoo.single import PettingZooAgentEnv

__all__ = ["PZ_APIS", "wrap_pettingzoo"]

#: ``api`` values for a PettingZoo game (None: its own API, or a Gymnasium view when
#: policies leave one agent to the caller).
PZ_APIS = ("pettingzoo", "gymnasium", "sb3")


def _copy_of(env: Any) -> Any:
    try:
        return copy.deepcopy(env)
    except Exception as err:
        raise EnvCreationError(
            f"cannot copy the {type(env).__name__} instance for more game copies "
            f"({type(err).__name__}: {err}); pass a zero-argument callable returning a new "
            "game instead (e.g. tictactoe_v3.env, not tictactoe_v3.env())") from err


def _close_quietly(env: Any) -> None:
    with contextlib.suppress(Exception):  # already failing: the first error is the one to see
        env.close()


def _copies_of(first: Any, factory: Callable[[], Any], copies: int, parallel: bool
               ) -> list[Any]:
    """``first`` and ``copies - 1`` more games from ``factory``, each checked to be of the
    first's kind; on failure the games made here are closed before the error is raised."""
    envs = [first]
    kind = "ParallelEnv" if parallel else "AECEnv"
    try:
        for c in range(1, copies):
            try:
                env = factory()
            except EnvCreationError:
                raise
            except Exception as err:
                raise EnvCreationError(f"creating game copy {c} failed: {type(err).__name__}: "
                                       f"{err}") from err
            if not (is_parallel(env) if parallel else is_aec(env)):
                _close_quietly(env)
                raise EnvCreationError(f"the game factory returned {type(env).__name__} for "
                                       f"game copy {c}, expected a PettingZoo {kind} like its "
                                       "first game")
            envs.append(env)
    except BaseException:
        for env in envs[1:]:
            _close_quietly(env)
        raise
    return envs


def _check_policy_spaces(env: Any, players: AgentPolicies) -> None:
    for agent in players.agents:
        model = players.model_of(agent)
        if model is None:
            continue
        obs_space, act_space = env.observation_space(agent), env.action_space(agent)
        if model.observation_space != policy_space(obs_space) or \
                model.action_space != act_space:
            hint = (" (its observation is a dict with an 'action_mask': a policy takes the "
                    "'observation' entry)" if policy_space(obs_space) is not obs_space else "")
            raise ConfigError(
                f"the policy for agent {agent!r} does not fit it: the policy takes "
                f"{model.observation_space} and acts in {model.action_space}, expected "
                f"{policy_space(obs_space)} and {act_space}{hint}; export a policy for the "
                "agent's spaces")


def wrap_pettingzoo(
    first: Any,
    make: Callable[[], Any] | None,
    *,
    actors: int | None,
    api: str | None,
    policies: dict[Any, Any] | None,
    options: RecordingOptions,
    autoreset_mode: str | AutoresetMode | None,
    router_scale: int | str,
) -> Any:
    """Builds the wrapped game (see `relayrl_gym.wrap` for the cases).

    Args:
        first: the game (a ParallelEnv or AECEnv instance), used as copy 0.
        make: makes more copies (None: deep copies of ``first``); when given, ``first`` was
            made by it in `relayrl_gym.wrap` and is closed here if wrapping fails.
        options: what to record and where (``wrap``'s recording arguments).
        Others: as `relayrl_gym.wrap`.

    Every game copy is made and every argument checked before the runs' sinks are opened; a
    failure closes what was made and opened (nothing is left running, no run directory).
    """
    require_pettingzoo()
    try:
        return _wrap(first, make, actors=actors, api=api, policies=policies, options=options,
                     autoreset_mode=autoreset_mode, router_scale=router_scale)
    except BaseException:
        if make is not None:  # ``first`` was made by wrap (to see what the factory makes)
            _close_quietly(first)
        raise


def _wrap(first: Any, make: Callable[[], Any] | None, *, actors: int | None, api: str | None,
          policies: dict[Any, Any] | None, options: RecordingOptions,
          autoreset_mode: str | AutoresetMode | None, router_scale: int | str) -> Any:
    if api is not None and api not in PZ_APIS:
        raise ConfigError(f"`api` for a PettingZoo game must be one of "
                          f"{', '.join(map(repr, PZ_APIS))} or left out, got {api!r}")
    if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or
                               actors < 1):
        raise ConfigError(f"`actors` must be an int >= 1 (game copies), got {actors!r}")
    scale = 0 if router_scale == "auto" else router_scale
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 0:
        raise ConfigError(f"the copies of a PettingZoo game step on the calling thread or on "
                          f"actor threads: `router_scale` must be 'auto', 0 or an int >= 1, got "
                          f"{router_scale!r}")
    parallel = is_parallel(first)
    players = AgentPolicies(policies or {}, first)
    try:
        return _wrap_game(first, players, make, actors, api, parallel, scale, options,
                          autoreset_mode, router_scale)
    except BaseException:
        players.close()  # its connections to inference servers; a built env closes them
        raise


def _wrap_game(first: Any, players: AgentPolicies, make: Any, actors: int | None,
               api: str | None, parallel: bool, scale: int, options: RecordingOptions,
               autoreset_mode: str | AutoresetMode | None, router_scale: int | str) -> Any:
    from relayrl_gym.wrappers.vector import parse_autoreset_mode

    agents = list(first.possible_agents)
    _check_policy_spaces(first, players)
    left = [agent for agent in agents if agent not in players]
    if not left:
        raise ConfigError(f"`policies` plays every agent ({agents}); leave at least one agent "
                          "for the caller, or wrap the game without policies to record it")
    own_api = api == "pettingzoo" or (api is None and actors is None and not players.agents)
    vector = not own_api and (actors is not None or api is not None or len(left) > 1)
    if own_api and (players.agents or actors is not None):
        raise ConfigError(f"api='pettingzoo' keeps the game's own API, which has no "
                          f"`policies` or `actors` (got policies for {players.agents}, "
                          f"actors={actors!r}); use api='gymnasium' or 'sb3' for those")
    if not own_api and not vector and scale:
        raise ConfigError(f"this call makes a single gymnasium.Env of one game, which steps on "
                          f"the calling thread: `router_scale` applies to game copies behind a "
                          f"vector env (actors=N or api='gymnasium'/'sb3'); leave it at 'auto' "
                          f"or 0, got {router_scale!r}")
    if own_api and scale:
        raise ConfigError(f"a game with its own API is stepped by the caller: `router_scale` "
                          f"applies to game copies behind a vector env (actors=N or api="
                          f"'gymnasium'/'sb3'); leave it at 'auto' or 0, got {router_scale!r}")
    mode = None if autoreset_mode is None else parse_autoreset_mode(autoreset_mode)
    if mode not in (None, AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
        raise ConfigError(f"`autoreset_mode` for a PettingZoo game must be 'next_step' or "
                          f"'same_step', got {mode.value!r}")
    if mode is not None and not vector:
        made = "the game with its own API" if own_api else "a single gymnasium.Env"
        raise ConfigError(f"`autoreset_mode` applies to vector envs (actors=N or api="
                          f"'gymnasium'/'sb3'), and this call makes {made}: leave it out, got "
                          f"{autoreset_mode!r}")
    if api == "sb3":
        from relayrl_gym.wrappers.pettingzoo.sb3 import PettingZooSB3VecEnv  # noqa: F401
        if mode not in (None, AutoresetMode.SAME_STEP):
            raise ConfigError(f"api='sb3' resets a finished game in the same step: leave out "
                              f"`autoreset_mode` or pass 'same_step', got {autoreset_mode!r}")
        mode = AutoresetMode.SAME_STEP
    if not parallel and not own_api and len(left) > 1:
        raise ConfigError(
            f"a turn-based (AEC) game as a Gymnasium env needs `policies` for every agent but "
            f"one (agents {agents}, left to the caller: {left}); parameter sharing needs a "
            "ParallelEnv. Or keep the AEC API: relayrl_gym.wrap(env) without actors/policies")
    if parallel and not own_api:
        from relayrl_gym.wrappers.pettingzoo.simultaneous import SHARING, shared_spaces

        shared_spaces(first, left, *SHARING)  # before any sink is opened
    copies = 1 if own_api else actors or 1
    factory = make if make is not None else functools.partial(_copy_of, first)
    # Every copy is made before the run is opened: a game that cannot be made leaves no run
    # directory (and no open sink) behind.
    envs = _copies_of(first, factory, copies, parallel)
    try:
        recording = (GameRecording(options, first, copies,
                                   kind="parallel" if parallel else "aec",
                                   data_type=players.data_type)
                     if options.recording else None)
        try:
            return _build(envs, parallel, own_api, vector, left, players, recording, mode, api,
                          scale)
        except BaseException:
            if recording is not None:
                recording.close()
            raise
    except BaseException:
        for env in envs[1:]:  # the first is closed by wrap_pettingzoo when wrap made it
            _close_quietly(env)
        raise


def _build(envs: list[Any], parallel: bool, own_api: bool, vector: bool, left: list[Any],
           players: AgentPolicies, recording: GameRecording | None, mode: AutoresetMode | None,
           api: str | None, scale: int) -> Any:
    from relayrl_gym.wrappers.pettingzoo.simultaneous import SimultaneousGames
    from relayrl_gym.wrappers.pettingzoo.turns import TurnGames
    from relayrl_gym.wrappers.pettingzoo.vector import PettingZooVectorEnv

    first = envs[0]
    if own_api:
        tracker = recording.tracker(0) if recording is not None else None
        if parallel:
            from relayrl_gym.wrappers.pettingzoo.parallel import RecordedParallelEnv

            return RecordedParallelEnv(first, tracker, recording)
        from relayrl_gym.wrappers.pettingzoo.aec import RecordedAECEnv

        return RecordedAECEnv(first, tracker, recording)
    env_id = recording.env_id if recording is not None else str(first.metadata.get("name", ""))
    games: Any = (SimultaneousGames(envs, left, players, recording, scale) if parallel else
                  TurnGames(envs, left[0], players, recording, scale))
    if not vector:
        return PettingZooAgentEnv(games, env_id=env_id or None)
    vector_env = PettingZooVectorEnv(games, autoreset_mode=mode or AutoresetMode.NEXT_STEP,
                                     env_id=env_id or None)
    return vector_env.as_sb3() if api == "sb3" else vector_env
