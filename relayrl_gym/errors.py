"""Errors raised by relayrl-gym: one hierarchy; each message says what was wrong and how to fix
it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable

__all__ = [
    "ActionError",
    "ConfigError",
    "DatasetError",
    "EnvCreationError",
    "MissingDependencyError",
    "ModelError",
    "RelayRLError",
    "RouterError",
    "SinkError",
    "StateError",
    "TransportError",
    "UnsupportedSpaceError",
    "add_note",
    "run_all",
]

log = logging.getLogger(__name__)


class RelayRLError(Exception):
    """Base class of every error relayrl-gym raises on purpose."""


class ConfigError(RelayRLError, ValueError):
    """An argument or configuration value is invalid."""


class EnvCreationError(RelayRLError):
    """The environment could not be created from what was passed to `wrap`."""


class ActionError(RelayRLError, ValueError):
    """An action batch does not fit the action space (shape, dtype or bounds)."""


class StateError(RelayRLError, RuntimeError):
    """A call came at the wrong time (step before reset, use after close)."""


class RouterError(RelayRLError, RuntimeError):
    """The actor router could not run a command (a worker failed or timed out)."""


class SinkError(RelayRLError, OSError):
    """A sink could not be opened or written."""


class TransportError(RelayRLError, OSError):
    """A ZMQ transport endpoint could not be bound, reached, or spoken to."""


class DatasetError(RelayRLError, ValueError):
    """Recorded data could not be found or read back."""


class UnsupportedSpaceError(RelayRLError, TypeError):
    """A Gymnasium space cannot be recorded."""


class ModelError(RelayRLError, ValueError):
    """A policy model, its metadata, or an input given to it is invalid."""


class MissingDependencyError(RelayRLError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def missing_extra(module: str, extra: str) -> MissingDependencyError:
    """Builds the error for an optional module that failed to import."""
    return MissingDependencyError(
        f"{module!r} is not installed; install it with: pip install \"relayrl-gym[{extra}]\""
    )


def add_note(err: BaseException, note: str) -> None:
    """Adds context to an exception that is not ours to rename (``BaseException.add_note``;
    on Python 3.10, the same ``__notes__`` list, which 3.10's tracebacks do not print)."""
    if sys.version_info >= (3, 11):
        err.add_note(note)
    else:
        setattr(err, "__notes__", [*getattr(err, "__notes__", []), note])  # noqa: B010


def run_all(steps: Iterable[Callable[[], object]]) -> None:
    """Runs every step whatever fails on the way (closing many parts), then raises the first
    error as itself; the later ones are logged and counted in a note on it.

    >>> done = []
    >>> run_all([lambda: done.append(1), lambda: 1 / 0, lambda: done.append(3)])
    Traceback (most recent call last):
    ...
    ZeroDivisionError: division by zero
    >>> done
    [1, 3]
    """
    errors: list[Exception] = []
    for step in steps:
        try:
            step()
        except Exception as err:
            if errors:  # the first is raised below
                log.exception("a further step failed while closing")
            errors.append(err)
    if errors:
        if len(errors) > 1:
            add_note(errors[0], f"relayrl-gym: {len(errors) - 1} later step(s) failed too "
                                "(logged); every part was closed")
        raise errors[0]
