"""Closing at interpreter exit: what the caller left open is closed while its threads still run.

CPython stops daemon threads once finalization begins, after the `atexit` hooks. An env
dropped then (``__del__`` during module teardown) can no longer reach its actor or writer
threads, so waiting for them would hang the exit. Everything that owns threads registers here
and is closed by one `atexit` hook, newest first (an env before the writer it feeds), while the
threads still run; ``__del__`` methods check `finalizing` and skip what would wait on a thread.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["CallGate", "GatedClose", "close_at_exit", "finalizing", "forget_at_exit",
           "gated"]

log = logging.getLogger(__name__)

_OPEN: dict[int, tuple[weakref.ref[Any], Callable[[Any], None]]] = {}
_KEYS = itertools.count()
_LOCK = threading.Lock()
_exiting = False
_get_ident = threading.get_ident


def close_at_exit(obj: Any, close: Callable[[Any], None]) -> int:
    """Registers ``close(obj)`` to run at exit if ``obj`` is still alive; returns a key for
    `forget_at_exit`. Holds ``obj`` weakly: registering never keeps it alive."""
    key = next(_KEYS)
    with _LOCK:
        _OPEN[key] = (weakref.ref(obj), close)
    return key


def forget_at_exit(key: int | None) -> None:
    """Drops a registration (the object was closed); unknown keys are ignored."""
    if key is not None:
        with _LOCK:
            _OPEN.pop(key, None)


def finalizing() -> bool:
    """True once the interpreter exits: the exit hook ran or finalization began, so threads
    may no longer run and nothing may wait on them."""
    return _exiting or sys.is_finalizing()


@atexit.register
def _close_all() -> None:
    global _exiting
    while True:
        with _LOCK:
            if not _OPEN:
                break
            ref, close = _OPEN.pop(max(_OPEN))  # newest first
        obj = ref()
        if obj is None:
            continue
        try:
            close(obj)
        except Exception:
            log.exception("closing %s at interpreter exit failed", type(obj).__name__)
    _exiting = True


class CallGate:
    """Lets ``close()`` come from any thread: it waits for the call in flight to end.

    Calls (step, reset, render...) hold the gate while they run. ``close()`` from another
    thread (a watchdog) waits until the call in flight has finished and been recorded; from
    the calling thread itself, inside a call (a signal handler), it is deferred to the end of
    that call. Neither ever runs a close half-way through a step.

    >>> gate = CallGate()
    >>> with gate:
    ...     gate.close_now(lambda: print("closed"))   # inside a call: deferred
    False
    closed
    >>> gate.close_now(lambda: print("closed"))
    closed
    True
    """

    __slots__ = ("_caller", "_deferred", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caller: int | None = None
        self._deferred: Callable[[], None] | None = None

    def __enter__(self) -> None:  # every step passes here: kept to the bare minimum
        self._lock.acquire()
        self._caller = _get_ident()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._caller = None
        self._lock.release()
        if self._deferred is not None:
            deferred, self._deferred = self._deferred, None
            deferred()

    def close_now(self, close: Callable[[], None], timeout: float = 60.0) -> bool:
        """Runs ``close`` once no call is in flight (True), or defers it to the end of the
        call this thread is inside (False).

        Raises:
            TimeoutError: a call on another thread is still running after ``timeout`` s.
        """
        me = _get_ident()
        waited = 0.0
        while self._caller == me or not self._lock.acquire(timeout=0.05):
            if self._caller == me:  # inside a call on this thread: a signal handler
                self._deferred = close
                return False
            waited += 0.05
            if waited >= timeout:
                raise TimeoutError(f"a call on another thread is still running after "
                                   f"{timeout} s; close() did not run")
        try:
            close()
        finally:
            self._lock.release()
        return True


def gated(method: Callable[..., Any]) -> Callable[..., Any]:
    """Runs a front end's method holding the front end's `CallGate` (its ``_gate``): a
    ``close()`` from another thread waits for it, one from a signal handler inside it runs when
    it ends."""

    @functools.wraps(method)
    def run_gated(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._gate:
            return method(self, *args, **kwargs)

    return run_gated


class GatedClose:
    """``close()`` through the front end's `CallGate` (its ``_gate``), for a Gymnasium
    `VectorEnv` subclass (mixed in before it): safe from any thread (a call in flight finishes
    first; from a signal handler inside a call, the close runs when the call ends), idempotent,
    and ``closed`` even when an env's own ``close`` raised (everything else is closed first)."""

    _gate: CallGate
    closed: bool

    def close(self, **kwargs: Any) -> None:
        """Closes the env (see the class docstring)."""
        if not self.closed:
            self._gate.close_now(lambda: self._close_once(**kwargs))

    def _close_once(self, **kwargs: Any) -> None:
        if not self.closed:
            try:
                super().close(**kwargs)  # type: ignore[misc]
            finally:
                self.closed = True
