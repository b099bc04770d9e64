"""Where new models come from: a `TrainingServer`'s model channel, on a path of its own.

The data path (env -> recorder -> writer -> sink) carries no models. A `ZMQModelSource` has
its own socket and thread: it says hello to the publisher every second (subscription,
heartbeat, late-join request), receives each newer model and hands its folder to ``update``
(`RelayRLAgent.update_model`), which swaps it in between two steps. The only thing it takes
from a ZMQ sink is where the publisher is, which the sink's collector announces.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relayrl_gym.transport._zmq import new_context, release_gc_thread, require_zmq
from relayrl_gym.transport.models import ModelFeed
from relayrl_gym.transport.protocol import ProtocolViolation, decode_header
from relayrl_gym.transport.sockets import connect_socket

if TYPE_CHECKING:
    from relayrl_gym.transport.keys import ClientKeys
    from relayrl_gym.transport.sender.sink import ZMQSink

__all__ = ["ZMQModelSource"]

log = logging.getLogger(__name__)

_POLL_MS = 50


class ZMQModelSource:
    """Follows a model publisher and hands each newer model to ``update``.

    ``version`` is the last version applied (-1: none yet), ``received`` / ``refused`` /
    ``rejected`` count models applied, models ``update`` refused (they did not fit: the old
    one keeps running, and the refused one is not asked for again) and malformed messages.
    ``close()`` stops the thread; idempotent.
    """

    def __init__(self, endpoint: str | Callable[[], str | None],
                 update: Callable[[str], int], *, keys: ClientKeys | None = None,
                 name: str = "relayrl-zmq-models") -> None:
        """Starts following.

        Args:
            endpoint: the publisher, ``tcp://HOST:PORT``, or a callable answering it once
                known (None until then: e.g. a ZMQ sink's collector announces it).
            update: hot-swaps the model; gets the model folder's path, returns the version.
            keys: client keys for CurveZMQ.
            name: the thread's name.
        """
        self._endpoint = endpoint if callable(endpoint) else (lambda: endpoint)
        self._feed = ModelFeed(update)
        self._keys = keys
        self._ctx = new_context()
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def following(cls, sink: ZMQSink, update: Callable[[str], int]) -> ZMQModelSource | None:
        """A source for the publisher ``sink``'s collector announces (or its URL names), with
        the sink's keys; None when the sink says ``models=off``."""
        if sink.models_off:
            return None
        return cls(lambda: sink.models_endpoint, update, keys=sink.keys,
                   name=f"relayrl-zmq-models-{sink.sender_id}")

    @property
    def version(self) -> int:
        return self._feed.running

    @property
    def received(self) -> int:
        return self._feed.received

    @property
    def refused(self) -> int:
        return self._feed.refused

    @property
    def rejected(self) -> int:
        return self._feed.rejected

    def close(self, timeout: float = 10.0) -> None:
        """Stops following; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout)
        self._ctx.term()
        release_gc_thread()

    def _run(self) -> None:
        zmq = require_zmq()
        sock = None
        try:
            while sock is None and not self._stop.wait(_POLL_MS / 1000):
                endpoint = self._endpoint()
                if endpoint:
                    sock = connect_socket(self._ctx, zmq.DEALER, endpoint, keys=self._keys)
            while sock is not None and not self._stop.is_set():
                hello = self._feed.hello_due(time.monotonic())
                if hello is not None:
                    with contextlib.suppress(zmq.Again):  # a full queue: the next one goes
                        sock.send(hello, zmq.NOBLOCK)
                if sock.poll(_POLL_MS):
                    self._messages(sock)
        except Exception:  # a bug, not the publisher's doing: keep it visible
            log.exception("the model source stopped")
        finally:
            if sock is not None:
                sock.close(0)

    def _messages(self, sock: Any) -> None:
        zmq = require_zmq()
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                header = decode_header(frames[0])
            except ProtocolViolation as err:
                self._feed.rejected += 1
                log.warning("ignoring a malformed message on the model channel: %s", err)
                continue
            self._feed.handle(header, frames[1:])
