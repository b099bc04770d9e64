"""pyzmq, imported on first use: a missing install is a clear error naming the extra."""

from __future__ import annotations

from typing import Any

from relayrl_gym.errors import missing_extra

__all__ = ["require_zmq"]


def require_zmq() -> Any:
    """The ``zmq`` module; raises `MissingDependencyError` naming ``relayrl-gym[zmq]``."""
    try:
        import zmq
    except ImportError as err:
        raise missing_extra("pyzmq", "zmq") from err
    return zmq
