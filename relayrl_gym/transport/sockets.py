"""Creating ZMQ sockets the same way on both sides: limits, linger, CurveZMQ, error messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relayrl_gym.errors import TransportError
from relayrl_gym.transport._zmq import require_zmq

if TYPE_CHECKING:
    from relayrl_gym.transport.keys import ClientKeys, ServerKeys

__all__ = ["bind_socket", "connect_socket", "tcp_endpoint"]


def tcp_endpoint(address: str) -> str:
    """``tcp://HOST:PORT`` from ``HOST:PORT``, ``tcp://...`` or ``zmq+tcp://...``.

    >>> tcp_endpoint("zmq+tcp://collector:7776"), tcp_endpoint("127.0.0.1:9")
    ('tcp://collector:7776', 'tcp://127.0.0.1:9')
    """
    address = address.split("?", 1)[0]
    for prefix in ("zmq+tcp://", "tcp://"):
        if address.startswith(prefix):
            address = address[len(prefix):]
            break
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isdigit() or port == "*"):
        raise TransportError(f"address {address!r} must be HOST:PORT (e.g. "
                             "tcp://127.0.0.1:7776, or port * for any free port)")
    return f"tcp://{host}:{port}"


def bind_socket(ctx: Any, kind: int, endpoint: str, *, keys: ServerKeys | None = None,
                max_message_bytes: int = -1) -> tuple[Any, str]:
    """A server socket bound to ``endpoint`` (CURVE server when ``keys``); returns it with the
    endpoint actually bound (port 0 or ``*`` resolved)."""
    zmq = require_zmq()
    endpoint = tcp_endpoint(endpoint)
    if endpoint.endswith(":0"):
        endpoint = endpoint[:-1] + "*"
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    # ZMQ drops a peer whose message passes twice the limit before reading it; up to twice
    # the limit a message is read, refused and counted.
    sock.setsockopt(zmq.MAXMSGSIZE, -1 if max_message_bytes < 0 else
                    2 * max_message_bytes + 65536)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting peer takes its identity back
    if keys is not None:
        sock.curve_server = True
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as err:
        sock.close(0)
        raise TransportError(f"cannot bind {endpoint}: {err}; is another collector running "
                             "there? Use a free port, or port * for any") from err
    return sock, sock.getsockopt(zmq.LAST_ENDPOINT).decode()


def connect_socket(ctx: Any, kind: int, endpoint: str, *, keys: ClientKeys | None = None,
                   identity: bytes | None = None) -> Any:
    """A client socket connecting to ``endpoint`` (CURVE client when ``keys``); it reconnects
    by itself whenever the server comes back."""
    zmq = require_zmq()
    endpoint = tcp_endpoint(endpoint)
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if keys is not None:
        sock.curve_serverkey = keys.server
        sock.curve_publickey = keys.public
        sock.curve_secretkey = keys.secret
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as err:
        sock.close(0)
        raise TransportError(f"cannot connect to {endpoint}: {err}; check the host and port "
                             "(tcp://HOST:PORT)") from err
    return sock
