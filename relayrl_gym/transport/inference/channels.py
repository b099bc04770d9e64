"""How an inference client's messages reach a server: a ZMQ DEALER socket, or NATS
request subjects served by a queue group of servers.

Both look alike to `RemotePolicy`: ``send(frames)`` (never blocks: a message that cannot go
now is dropped, and the client sends it again after its retry interval), ``receive(timeout)``
(the next answer's frames, or None), ``silence()`` (why nothing came, in words), ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import weakref
from typing import Any

from relayrl_gym.errors import TransportError
from relayrl_gym.transport._zmq import new_context, release_gc_thread, require_zmq
from relayrl_gym.transport.inference.wire import pack, unpack
from relayrl_gym.transport.keys import ClientKeys
from relayrl_gym.transport.nats.link import NatsLink
from relayrl_gym.transport.nats.options import NatsTarget, subject_token
from relayrl_gym.transport.protocol import ProtocolViolation
from relayrl_gym.transport.sockets import connect_socket, failed_handshakes, watch_handshakes

__all__ = ["QUEUE_GROUP", "NatsChannel", "ZmqChannel", "inference_subject"]

log = logging.getLogger(__name__)

#: The NATS queue group every inference server of a name joins: each request goes to one.
QUEUE_GROUP = "relayrl_inference"
_ANSWERS = 256  # answers kept for a client that is not reading (late duplicates)
_CONNECT_WAIT = 1.0  # how long a send waits for the connection (then the retries go on)


def inference_subject(name: str) -> str:
    """The subject the servers of ``nats://.../NAME`` answer on (outside any stream's
    ``NAME.>`` subjects, so a stream of the same name never stores or acknowledges requests).

    >>> inference_subject("pi")
    'relayrl_inference.pi'
    """
    return f"{QUEUE_GROUP}.{subject_token(name)}"


class ZmqChannel:
    """A DEALER socket to a server's ROUTER; reconnects by itself."""

    def __init__(self, endpoint: str, keys: ClientKeys | None) -> None:
        zmq = require_zmq()
        self._again = zmq.Again
        self._noblock = int(zmq.NOBLOCK)  # a plain int: enum flags are slow on the hot path
        ctx = new_context()
        self._sock = connect_socket(ctx, zmq.DEALER, endpoint, keys=keys)
        self._monitor = watch_handshakes(self._sock) if keys is not None else None
        # Closed in order even when dropped unclosed: a context collected with a socket that
        # the collector finalized first would wait for it for ever.
        self._close = weakref.finalize(self, _close_zmq, ctx, self._sock, self._monitor)

    def send(self, frames: list[Any]) -> None:
        with contextlib.suppress(self._again):  # nothing connected and the queue is full
            self._sock.send_multipart(frames, self._noblock, copy=False)

    def receive(self, timeout: float) -> list[bytes] | None:
        if not self._sock.poll(max(1, int(timeout * 1000))):
            return None
        return list(self._sock.recv_multipart(self._noblock))

    def interrupt(self) -> None:
        """Nothing to stop: sending never waits."""

    def silence(self) -> str | None:
        """What the socket's monitor saw go wrong (a handshake refused), if anything."""
        problems = failed_handshakes(self._monitor) if self._monitor is not None else []
        return problems[-1] if problems else None

    def close(self) -> None:
        self._close()


def _close_zmq(ctx: Any, sock: Any, monitor: Any) -> None:
    if monitor is not None:
        sock.disable_monitor()
        monitor.close(0)
    sock.close(0)
    ctx.term()
    release_gc_thread()


class NatsChannel:
    """Requests published to the servers' subject with this client's own inbox as the reply
    subject; answers arrive there. One connection (a `NatsLink` and its loop thread)."""

    def __init__(self, target: NatsTarget) -> None:
        self.subject = inference_subject(target.stream)
        self._answers: queue.Queue[bytes] = queue.Queue(_ANSWERS)
        self._inbox: str | None = None
        self._no_server = False
        self._interrupted = threading.Event()
        self._link = NatsLink(target, name="relayrl-inference-client",
                              on_connect=self._subscribe)

    async def _subscribe(self, nc: Any) -> None:
        if self._inbox is None:  # nats-py subscribes again by itself after a reconnection
            inbox = nc.new_inbox()
            await nc.subscribe(inbox, cb=self._answer)
            self._inbox = inbox

    async def _answer(self, msg: Any) -> None:
        if msg.headers and msg.headers.get("Status") == "503":  # NATS: no server subscribed
            self._no_server = True
            return
        self._no_server = False
        with contextlib.suppress(queue.Full):  # a client that does not read loses late answers
            self._answers.put_nowait(msg.data)

    def send(self, frames: list[Any]) -> None:
        link = self._link
        deadline = time.monotonic() + _CONNECT_WAIT
        while not link.connected.wait(0.05):
            if self._interrupted.is_set() or time.monotonic() > deadline:
                return  # sent again after the retry interval (or the client is closing)
        data = pack(frames)
        limit = link.nc.max_payload
        if len(data) > limit:
            raise TransportError(f"a request of {len(data)} bytes is over the NATS server's "
                                 f"max_payload ({limit} bytes): send fewer rows per call, or "
                                 "raise max_payload in the server's configuration")
        link.loop.call_soon_threadsafe(self._publish, data)

    def _publish(self, data: bytes) -> None:
        nc = self._link.nc
        if nc is not None and nc.is_connected:
            task = asyncio.ensure_future(nc.publish(self.subject, data, reply=self._inbox))
            task.add_done_callback(_read_outcome)

    def receive(self, timeout: float) -> list[bytes] | None:
        try:
            data = self._answers.get(timeout=timeout)
        except queue.Empty:
            return None
        try:
            return unpack(data)
        except ProtocolViolation as err:  # the client counts it and waits on
            log.warning("ignoring a malformed answer on %s: %s", self.subject, err)
            return []

    def silence(self) -> str | None:
        if self._no_server:
            return f"NATS says no inference server is subscribed to {self.subject}"
        return self._link.problem or None

    def interrupt(self) -> None:
        """Stops a send waiting for the connection (the client is closing)."""
        self._interrupted.set()

    def close(self) -> None:
        self._interrupted.set()
        self._link.close()


def _read_outcome(task: asyncio.Future[Any]) -> None:
    """Reads a finished publish's exception (a connection lost meanwhile: the request is sent
    again, or the client asks again), so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
