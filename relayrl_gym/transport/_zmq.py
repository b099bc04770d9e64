"""pyzmq, imported on first use: a missing install is a clear error naming the extra."""

from __future__ import annotations

import threading
import time
from typing import Any

from relayrl_gym.errors import missing_extra

__all__ = ["new_context", "release_gc_thread", "require_zmq"]

_contexts = 0  # contexts made by new_context and not yet released
_contexts_lock = threading.Lock()


def require_zmq() -> Any:
    """The ``zmq`` module; raises `MissingDependencyError` naming ``relayrl-gym[zmq]``."""
    try:
        import zmq
    except ImportError as err:
        raise missing_extra("pyzmq", "zmq") from err
    return zmq


def new_context() -> Any:
    """A new ``zmq.Context``, counted: `release_gc_thread` stops pyzmq's garbage-collector
    thread only once every counted context is released."""
    global _contexts
    context = require_zmq().Context()
    with _contexts_lock:
        _contexts += 1
    return context


#: How long the last release waits for pyzmq's gc thread to drop the references of messages
#: libzmq has already freed.
_REFS_DRAIN_S = 1.0


def release_gc_thread() -> None:
    """Releases a context of `new_context` (after terminating it); the last one stops pyzmq's
    garbage-collector thread once no zero-copy send is outstanding.

    pyzmq starts that thread at the first zero-copy send and keeps it for the process's life;
    closing the last sink, server or model source leaves no thread behind. Stopping it while
    another of them still sends could wait for ever (its context cannot terminate under a
    send in flight), hence the count. The thread starts again by itself at the next
    zero-copy send.
    """
    global _contexts
    from zmq.utils.garbage import gc

    with _contexts_lock:
        _contexts = max(0, _contexts - 1)
        if _contexts == 0 and gc.is_alive():
            # Every context is terminated, so libzmq has let go of every zero-copy message;
            # the gc thread drops their references as its notices arrive: wait for that.
            deadline = time.monotonic() + _REFS_DRAIN_S
            while gc.refs and time.monotonic() < deadline:
                time.sleep(0.001)
            if not gc.refs:
                gc.stop()
