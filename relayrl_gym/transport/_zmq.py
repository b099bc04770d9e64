"""pyzmq, imported on first use: a missing install is a clear error naming the extra."""

from __future__ import annotations

from typing import Any

from relayrl_gym.errors import missing_extra

__all__ = ["release_gc_thread", "require_zmq"]


def require_zmq() -> Any:
    """The ``zmq`` module; raises `MissingDependencyError` naming ``relayrl-gym[zmq]``."""
    try:
        import zmq
    except ImportError as err:
        raise missing_extra("pyzmq", "zmq") from err
    return zmq


def release_gc_thread() -> None:
    """Stops pyzmq's garbage-collector thread once no zero-copy send is outstanding.

    pyzmq starts that thread at the first zero-copy send and keeps it for the process's life;
    a sink or server calls this after terminating its context, so closing leaves no thread
    behind. The thread starts again by itself at the next zero-copy send.
    """
    from zmq.utils.garbage import gc

    if gc.is_alive() and not gc.refs:
        gc.stop()
