"""Where an inference server takes requests: a ZMQ ROUTER socket, or a NATS subject shared by a
queue group of servers.

Both are driven by the server's socket thread: `sockets` are polled with ZMQ's poller,
`receive` gives the messages waiting as ``(peer, reply_to, frames)`` (``peer`` names the
client for de-duplication and statistics, ``reply_to`` is where its answer goes), `send`
answers without blocking (an answer that cannot go is the client's loss: it asks again).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from relayrl_gym.transport._zmq import require_zmq
from relayrl_gym.transport.inference.channels import QUEUE_GROUP, inference_subject
from relayrl_gym.transport.inference.wire import pack, unpack
from relayrl_gym.transport.keys import ServerKeys
from relayrl_gym.transport.nats.link import NatsLink
from relayrl_gym.transport.nats.options import NatsTarget
from relayrl_gym.transport.protocol import Kind, ProtocolViolation, decode_header, encode
from relayrl_gym.transport.sockets import bind_socket, failed_handshakes, watch_handshakes

__all__ = ["NatsEndpoint", "ZmqEndpoint"]

log = logging.getLogger(__name__)

_BATCH = 1000  # messages read before the server answers and dispatches again
_NATS_QUEUE = 4096  # requests a NATS endpoint holds for the socket thread; more are dropped
_NATS_QUEUE_BYTES = 128 * 1024 * 1024  # and bytes of them


class ZmqEndpoint:
    """A ROUTER socket bound to ``bind``; CurveZMQ when ``keys``."""

    def __init__(self, ctx: Any, bind: str, keys: ServerKeys | None,
                 max_message_bytes: int) -> None:
        zmq = require_zmq()
        self._zmq = zmq
        # Plain ints: pyzmq's enum flags cost microseconds a call on the hot path.
        self._noblock, self._events, self._pollin = (
            int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN))
        self._sock, self.endpoint = bind_socket(ctx, zmq.ROUTER, bind, keys=keys,
                                                max_message_bytes=max_message_bytes)
        #: Where failed CurveZMQ handshakes are reported (`refused` reads them).
        self.monitor = watch_handshakes(self._sock) if keys is not None else None
        #: A ``policy=`` URL for a client on this host.
        self.url = "zmq+tcp://" + self.endpoint[len("tcp://"):].replace("0.0.0.0", "127.0.0.1")

    @property
    def sockets(self) -> list[Any]:
        return [self._sock]

    #: A ROUTER socket stays readable while messages wait: nothing else to look at.
    more = False

    def receive(self) -> Iterator[tuple[bytes, bytes, list[bytes] | ProtocolViolation]]:
        sock, noblock, events, pollin = self._sock, self._noblock, self._events, self._pollin
        for _ in range(_BATCH):
            if not sock.getsockopt(events) & pollin:  # cheaper than catching Again
                return
            frames = sock.recv_multipart(noblock)
            yield frames[0], frames[0], frames[1:]

    def refused(self) -> list[str]:
        """The failed CurveZMQ handshakes seen since the last call, one line each."""
        return failed_handshakes(self.monitor) if self.monitor is not None else []

    def send(self, reply_to: bytes, frames: list[Any]) -> None:
        try:
            self._sock.send_multipart([reply_to, *frames], self._noblock)
        except self._zmq.ZMQError as err:  # a full queue (a client not reading), or gone
            log.debug("could not answer a client: %s", err)

    def close(self) -> None:
        if self.monitor is not None:
            self._sock.disable_monitor()
            self.monitor.close(0)
        self._sock.close(0)


class NatsEndpoint:
    """A subscription to the servers' subject in their queue group (each request reaches one
    server of the group). Requests arrive on the link's loop thread; the socket thread is
    woken through an in-process socket and reads them from a bounded queue."""

    def __init__(self, ctx: Any, target: NatsTarget) -> None:
        zmq = require_zmq()
        self.subject = inference_subject(target.stream)
        self.endpoint = f"{target.display} (subject {self.subject}, queue group {QUEUE_GROUP})"
        #: A ``policy=`` URL for a client (without the credentials this server used).
        self.url = target.address
        self._waiting: collections.deque[tuple[bytes, str, bytes]] = collections.deque()
        self._waiting_bytes = 0
        self._lock = threading.Lock()
        #: Requests dropped because the socket thread was that far behind (the client asks
        #: again after its retry interval).
        self.dropped = 0
        #: Answers that could not be published (over ``max_payload``, connection lost).
        self.unsent = 0
        wake = f"inproc://relayrl-inference-nats-{id(self)}"
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.bind(wake)
        self._push = ctx.socket(zmq.PUSH)  # used on the link's loop thread only
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.connect(wake)
        self._noblock = int(zmq.NOBLOCK)
        self._again = zmq.Again
        self._subscribed = False
        self.monitor = None
        self._link = NatsLink(target, name="relayrl-inference-nats", on_connect=self._subscribe)

    async def _subscribe(self, nc: Any) -> None:
        if not self._subscribed:  # nats-py subscribes again by itself after a reconnection
            await nc.subscribe(self.subject, queue=QUEUE_GROUP, cb=self._request)
            # The subscription is only sent: a round trip makes sure the server holds it
            # before the endpoint says it is connected (a client's first request would
            # otherwise find no responders).
            await nc.flush()
            self._subscribed = True

    async def _request(self, msg: Any) -> None:
        if not msg.reply:
            return  # not a request: nowhere to answer
        with self._lock:
            if (len(self._waiting) >= _NATS_QUEUE or
                    self._waiting_bytes + len(msg.data) > _NATS_QUEUE_BYTES):
                self.dropped += 1
                return
            self._waiting.append((msg.reply.encode(), msg.reply, msg.data))
            self._waiting_bytes += len(msg.data)
        with contextlib.suppress(self._again):  # the socket thread is awake already
            self._push.send(b"", self._noblock)

    @property
    def connected(self) -> threading.Event:
        """Set while connected and subscribed."""
        return self._link.connected

    @property
    def problem(self) -> str:
        """Why it is not connected, in words."""
        return self._link.problem

    @property
    def sockets(self) -> list[Any]:
        return [self._pull]

    def receive(self) -> Iterator[tuple[bytes, str, list[bytes] | ProtocolViolation]]:
        with contextlib.suppress(self._again):
            while True:
                self._pull.recv(self._noblock)
        for _ in range(_BATCH):
            with self._lock:
                if not self._waiting:
                    return
                peer, reply_to, data = self._waiting.popleft()
                self._waiting_bytes -= len(data)
            try:
                yield peer, reply_to, unpack(data)
            except ProtocolViolation as err:  # refused as malformed, and counted
                yield peer, reply_to, err

    @property
    def more(self) -> bool:
        """Whether requests are still queued after a `receive` (read on without waiting)."""
        return bool(self._waiting)

    def refused(self) -> list[str]:
        return []  # NATS refuses credentials itself, before a request reaches a server

    def send(self, reply_to: str, frames: list[Any]) -> None:
        data = pack(frames)
        nc = self._link.nc
        limit = nc.max_payload if nc is not None and nc.is_connected else None
        if limit is not None and len(data) > limit:
            request_id = decode_header(frames[0]).fields.get("id", 0)
            data = pack([encode(Kind.ERROR, id=request_id, reason=(
                f"the answer of {len(data)} bytes is over the NATS server's max_payload "
                f"({limit} bytes): send fewer rows per request"))])
            self.unsent += 1
        try:
            self._link.loop.call_soon_threadsafe(self._publish, reply_to, data)
        except RuntimeError:  # the loop is closed: the server is closing
            self.unsent += 1

    def _publish(self, reply_to: str, data: bytes) -> None:
        nc = self._link.nc
        if nc is not None and nc.is_connected:
            task = asyncio.ensure_future(nc.publish(reply_to, data))
            task.add_done_callback(self._published)
        else:
            self.unsent += 1

    def _published(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.unsent += 1
            log.warning("an answer could not be published: %s", task.exception())

    def close(self) -> None:
        self._link.close()
        self._push.close(0)
        self._pull.close(0)

