"""Creating ZMQ sockets the same way on both sides: limits, linger, CurveZMQ, error messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relayrl_gym.errors import TransportError
from relayrl_gym.transport._zmq import require_zmq

if TYPE_CHECKING:
    from relayrl_gym.transport.keys import ClientKeys, ServerKeys

__all__ = ["bind_socket", "connect_socket", "failed_handshakes", "tcp_endpoint", "watch_handshakes"]


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
                max_message_bytes: int = -1, queued_messages: int = 1000) -> tuple[Any, str]:
    """A server socket bound to ``endpoint`` (CURVE server when ``keys``); returns it with the
    endpoint actually bound (port 0 or ``*`` resolved).

    A frame over twice ``max_message_bytes`` makes ZMQ drop the connection before reading it
    (up to that, a message is read, refused and counted); at most ``queued_messages`` messages
    wait per peer (``RCVHWM``)."""
    zmq = require_zmq()
    endpoint = tcp_endpoint(endpoint)
    if endpoint.endswith(":0"):
        endpoint = endpoint[:-1] + "*"
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    # ZMQ applies the limit per frame and drops a peer whose frame passes it, unread.
    sock.setsockopt(zmq.MAXMSGSIZE, -1 if max_message_bytes < 0 else
                    2 * max_message_bytes + 65536)
    sock.setsockopt(zmq.RCVHWM, queued_messages)
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


def watch_handshakes(sock: Any) -> Any:
    """A monitor socket that reports ``sock``'s failed handshakes (read with
    `failed_handshakes`); the caller closes it after ``sock.disable_monitor()``."""
    zmq = require_zmq()
    return sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH |
                                   zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                   zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def failed_handshakes(monitor: Any) -> list[str]:
    """What the failed handshakes waiting on ``monitor`` were, one line each."""
    zmq = require_zmq()
    from zmq.utils.monitor import recv_monitor_message

    found: list[str] = []
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return found
        endpoint = event.get("endpoint", b"")
        where = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            found.append(f"authentication refused by {where}: its CurveZMQ keys do not "
                         "authorize this client's key (relayrl-gym keygen --client, then "
                         "copy the client's public key into the server's authorized/ folder)")
        else:
            found.append(f"the handshake with {where} failed: one side speaks CurveZMQ and the "
                         "other does not, or the server key is not this server's (pass the "
                         "client key folder of this collector: ?curve=DIR / --curve-keys)")
