"""Turns what a user passes to `wrap` (an id, an env, a factory) into per-actor env factories."""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from relayrl_gym.errors import ConfigError, EnvCreationError, add_note
from relayrl_gym.wrappers.detect import is_pettingzoo

__all__ = ["FirstMade", "env_factories", "make_checked"]


def _make_from_id(env_id: str, kwargs: dict[str, Any]) -> gym.Env:
    return gym.make(env_id, **kwargs)


def _copy_of(env: gym.Env) -> gym.Env:
    if env.spec is not None:
        try:
            return gym.make(env.spec)
        except Exception:  # a spec that cannot be remade (e.g. wrappers without recorded args)
            pass
    return copy.deepcopy(env)


class FirstMade:
    """An env factory that first hands out an env already made, then calls the factory.

    `wrap` calls a user's factory once to see whether it makes a Gymnasium env or a PettingZoo
    game; that env is not wasted: the first call on the thread that made it gets it (actor 0
    when stepping inline). An env still unclaimed when the vector env is built (actor 0 made
    on its own thread) is closed by `discard`, on the thread that made it.

    >>> import gymnasium as gym
    >>> first = gym.make("CartPole-v1")
    >>> fn = FirstMade(lambda: gym.make("CartPole-v1"), first)
    >>> fn() is first, fn() is first
    (True, False)
    >>> fn.discard()
    """

    def __init__(self, fn: Callable[[], Any], env: Any) -> None:
        self._fn = fn
        self._env = env
        self._lock = threading.Lock()
        self._thread = threading.get_ident()

    def __call__(self) -> Any:
        if threading.get_ident() == self._thread:
            with self._lock:
                env, self._env = self._env, None
            if env is not None:
                return env
        return self._fn()

    def discard(self) -> None:
        """Closes the premade env if nothing took it (call on the thread that made it)."""
        with self._lock:
            env, self._env = self._env, None
        if env is not None and hasattr(env, "close"):
            env.close()


def make_checked(fn: Callable[[], Any], index: int) -> gym.Env:
    """Calls an env factory and checks that it made a `gymnasium.Env`."""
    try:
        env = fn()
    except Exception as err:  # the caller's own exception, as SyncVectorEnv lets it through
        add_note(err, f"relayrl-gym: raised while creating the environment of actor {index}")
        raise
    if is_pettingzoo(env):
        raise EnvCreationError(
            f"the env factory made a PettingZoo game ({type(env).__name__}) on an actor's own "
            "thread or process, where only Gymnasium envs are made: leave `router_scale` at "
            "'auto' or 0, or pass the game itself (relayrl_gym.wrap(game, actors=N, "
            "router_scale=n): its copies are made here and stepped on actor threads)")
    if not isinstance(env, gym.Env):
        raise EnvCreationError(
            f"the env factory returned {type(env).__name__}, expected a gymnasium.Env; pass an "
            "env id, a gymnasium.Env, or a zero-argument callable returning one")
    return env


def _given(env: gym.Env) -> gym.Env:
    return env


def env_factories(env: Any, actors: int | None, make_kwargs: dict[str, Any] | None = None
                  ) -> tuple[list[Callable[[], gym.Env]], str | None]:
    """Returns one factory per actor and the env id (when known).

    ``env`` is a registered env id, a `gymnasium.Env` (itself actor 0; the others remade from
    its spec, else deep-copied), a zero-argument callable returning an env, or a list of such
    callables, one per actor (CleanRL's ``[make_env(i) for i in range(n)]``). ``actors``
    defaults to the list's length, else 1.
    """
    if isinstance(env, list | tuple):
        if not env or not all(callable(fn) for fn in env):
            raise ConfigError("`env` as a list must hold one zero-argument env factory per "
                              f"actor, got {env!r}")
        if actors is not None and actors != len(env):
            raise ConfigError(f"`actors` must match the {len(env)} env factories given, got "
                              f"{actors!r}; leave it out")
        actors = len(env)
    elif actors is None:
        actors = 1
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
        raise ConfigError(f"`actors` must be an int >= 1, got {actors!r}")
    make_kwargs = dict(make_kwargs or {})
    if isinstance(env, str):
        try:
            gym.spec(env)
        except gym.error.Error as err:  # Gymnasium's own error (SB3 catches DeprecatedEnv)
            add_note(err, f"relayrl-gym: {env!r} is not a registered env id; pass an id from "
                         "gymnasium.registry (e.g. 'CartPole-v1'), a gymnasium.Env, or a "
                         "callable returning one")
            raise
        return [functools.partial(_make_from_id, env, make_kwargs)] * actors, env
    if make_kwargs:
        raise ConfigError(f"extra keyword arguments {sorted(make_kwargs)} are passed to "
                          "gymnasium.make and need an env id string, not "
                          f"{type(env).__name__}")
    if isinstance(env, gym.Env):
        # The instance itself is actor 0, with every change made to it after creation.
        copies = [functools.partial(_copy_of, env)] * (actors - 1)
        return [functools.partial(_given, env), *copies], (env.spec.id if env.spec else None)
    if isinstance(env, list | tuple):
        return list(env), None
    if callable(env):
        return [env] * actors, None
    raise ConfigError(f"`env` must be a Gymnasium env id, a gymnasium.Env, a zero-argument "
                      f"callable returning one, or a list of such callables; got "
                      f"{type(env).__name__}")
