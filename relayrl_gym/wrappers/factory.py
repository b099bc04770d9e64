"""Turns what a user passes to `wrap` (an id, an env, a factory) into per-actor env factories."""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from relayrl_gym.errors import ConfigError, EnvCreationError

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
    game; that env is not wasted: the first call on the thread that made it gets it (the
    router's probe, or actor 0 when stepping inline). An env still unclaimed when the vector
    env is built is closed by `discard`, on its own thread.

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
    except Exception as err:
        raise EnvCreationError(f"creating the environment of actor {index} failed: "
                               f"{type(err).__name__}: {err}") from err
    if not isinstance(env, gym.Env):
        raise EnvCreationError(
            f"the env factory returned {type(env).__name__}, expected a gymnasium.Env; pass an "
            "env id, a gymnasium.Env, or a zero-argument callable returning one")
    return env


def env_factories(env: Any, actors: int, make_kwargs: dict[str, Any] | None = None
                  ) -> tuple[list[Callable[[], gym.Env]], str | None]:
    """Returns one factory per actor and the env id (when known).

    ``env`` is a registered env id, a `gymnasium.Env` (remade from its spec, else deep-copied:
    the instance passed in is never stepped), or a zero-argument callable returning an env.
    """
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
        raise ConfigError(f"`actors` must be an int >= 1, got {actors!r}")
    make_kwargs = dict(make_kwargs or {})
    if isinstance(env, str):
        try:
            gym.spec(env)
        except gym.error.Error as err:
            raise EnvCreationError(f"unknown env id {env!r}: {err}. Use an id from "
                                   "gymnasium.registry (e.g. 'CartPole-v1'), a gymnasium.Env, "
                                   "or a callable returning one") from err
        return [functools.partial(_make_from_id, env, make_kwargs)] * actors, env
    if make_kwargs:
        raise ConfigError(f"extra keyword arguments {sorted(make_kwargs)} are passed to "
                          "gymnasium.make and need an env id string, not "
                          f"{type(env).__name__}")
    if isinstance(env, gym.Env):
        return [functools.partial(_copy_of, env)] * actors, (env.spec.id if env.spec else None)
    if callable(env):
        return [env] * actors, None
    raise ConfigError(f"`env` must be a Gymnasium env id, a gymnasium.Env, or a zero-argument "
                      f"callable returning one; got {type(env).__name__}")
