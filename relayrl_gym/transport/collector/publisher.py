"""The model publisher: hands the current ModelModule version to every actor that says hello."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from relayrl_gym.errors import ConfigError
from relayrl_gym.transport._zmq import require_zmq
from relayrl_gym.transport.models import as_model_module, pack_model
from relayrl_gym.transport.protocol import Kind, ProtocolViolation, decode_header
from relayrl_gym.transport.sockets import bind_socket

if TYPE_CHECKING:
    from relayrl_gym.transport.keys import ServerKeys

__all__ = ["DEFAULT_PEER_TIMEOUT", "ModelPublisher"]

log = logging.getLogger(__name__)

#: Seconds without a hello (actors send one a second) before an actor is forgotten.
DEFAULT_PEER_TIMEOUT = 30.0
_RESEND_AFTER = 5.0  # a model not confirmed by the next hellos is sent again after this


class ModelPublisher:
    """A ROUTER socket that serves model versions, and its thread.

    Actors say hello every second with the version they run (see `ModelFeed`); whoever runs
    an older one than the current gets the current one, at once on `publish` and again if a
    later hello shows it did not arrive. A late joiner's first hello gets the current model.
    ``versions`` only move forward: a published model gets ``max(module.version, last + 1)``.
    Hellos from peers are counted in ``hellos``; malformed ones in ``rejected``. An actor
    silent for ``peer_timeout`` seconds is forgotten (counted in ``dropped``): it gets no more
    models, and its next hello, if it comes back, makes it a late joiner again.

    >>> import zmq
    >>> ctx = zmq.Context()
    >>> publisher = ModelPublisher(ctx, "tcp://127.0.0.1:*")
    >>> publisher.version, publisher.peers
    (0, {})
    >>> publisher.close(); ctx.term()
    """

    def __init__(self, ctx: Any, bind: str, *, keys: ServerKeys | None = None,
                 max_message_bytes: int = 4096,
                 peer_timeout: float = DEFAULT_PEER_TIMEOUT) -> None:
        """Binds the socket and starts serving.

        Args:
            ctx: the ZMQ context (its authenticator enforces CURVE keys).
            bind: the endpoint, e.g. ``tcp://*:50051``.
            keys: the server keypair for CurveZMQ.
            max_message_bytes: the largest message an actor may send (hellos are tiny).
            peer_timeout: seconds without a hello before an actor is forgotten (default 30,
                thirty hellos).
        """
        zmq = require_zmq()
        if not peer_timeout > 0:
            raise ConfigError(f"`peer_timeout` must be > 0 seconds (actors say hello every "
                              f"second; a few times that at least), got {peer_timeout!r}")
        self.peer_timeout = float(peer_timeout)
        self._sock, self.endpoint = bind_socket(ctx, zmq.ROUTER, bind, keys=keys,
                                                max_message_bytes=max_message_bytes)
        self.version = 0
        self.hellos = 0
        self.rejected = 0
        self.sent = 0
        self.dropped = 0
        self._frames: list[Any] | None = None
        # identity -> (version it runs, newest it got, when it was last heard from)
        self._peers: dict[bytes, tuple[int, int, float]] = {}
        self._sent_at: dict[bytes, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._fresh = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relayrl-zmq-models",
                                        daemon=True)
        self._thread.start()

    def publish(self, module: Any) -> int:
        """Makes ``module`` (a ModelModule or a path to one) the current model; returns its
        version. Actors swap to it between steps, typically within a second."""
        module = as_model_module(module)
        with self._lock:
            version = max(int(module.version), self.version + 1)
            self._frames = pack_model(module, version)
            self.version = version
        self._fresh.set()
        return version

    @property
    def peers(self) -> dict[str, int]:
        """Actors heard from in the last ``peer_timeout`` seconds and the model version each
        reported."""
        now = time.monotonic()
        with self._lock:
            return {ident.hex(): have for ident, (have, _, heard) in self._peers.items()
                    if now - heard < self.peer_timeout}

    def close(self, timeout: float = 5.0) -> None:
        """Stops the thread (it closes the socket); idempotent."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        prune_at = 0.0
        try:
            while not self._stop.is_set():
                if self._sock.poll(50):
                    self._hellos()
                if time.monotonic() >= prune_at:
                    self._prune()
                    prune_at = time.monotonic() + min(1.0, self.peer_timeout / 4)
                if self._fresh.is_set():
                    self._fresh.clear()
                    now = time.monotonic()
                    with self._lock:
                        targets = [i for i, (_, _, heard) in self._peers.items()
                                   if now - heard < self.peer_timeout]
                    for identity in targets:
                        self._offer(identity, force=True)
        except Exception:
            log.exception("the model publisher thread stopped")
        finally:
            self._sock.close(0)

    def _prune(self) -> None:
        """Forgets the actors silent for ``peer_timeout`` (gone, or restarted with a new
        identity): the table holds the live ones only, however many came and went."""
        now = time.monotonic()
        with self._lock:
            gone = [i for i, (_, _, heard) in self._peers.items()
                    if now - heard >= self.peer_timeout]
            for identity in gone:
                del self._peers[identity]
                self._sent_at.pop(identity, None)
            self.dropped += len(gone)
        if gone:
            log.info("forgot %d actor(s) silent for %.0f s", len(gone), self.peer_timeout)

    def _hellos(self) -> None:
        zmq = require_zmq()
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity = frames[0]
            try:
                if len(frames) != 2:
                    raise ProtocolViolation("a hello is one header frame")
                header = decode_header(frames[1])
                if header.kind is not Kind.HELLO:
                    raise ProtocolViolation(f"the publisher takes hellos, not "
                                            f"{header.kind.value!r}")
                have = header.integer("have", minimum=-1)
                seen = header.integer("seen", minimum=-1) if "seen" in header.fields else have
            except ProtocolViolation as err:
                self.rejected += 1
                log.warning("rejected a message on the model channel: %s", err)
                continue
            self.hellos += 1
            with self._lock:
                self._peers[identity] = (have, max(have, seen), time.monotonic())
            self._offer(identity)

    def _offer(self, identity: bytes, force: bool = False) -> None:
        zmq = require_zmq()
        with self._lock:
            frames, version = self._frames, self.version
            have = self._peers.get(identity, (-1, -1, 0.0))[1]  # running or refused
            sent_version, sent_at = self._sent_at.get(identity, (-1, 0.0))
        if frames is None or have >= version:
            return
        now = time.monotonic()
        if not force and sent_version == version and now - sent_at < _RESEND_AFTER:
            return  # on its way, or being loaded
        try:
            self._sock.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            return  # gone or slow: its next hello asks again
        self.sent += 1
        with self._lock:
            self._sent_at[identity] = (version, now)
