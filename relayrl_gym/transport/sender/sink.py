"""The ZMQ sink: streams a run's Arrow batches to a collector, at least once (models come back on
a path of their own: `relayrl_gym.models.zmq_source`)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa

from relayrl_gym.errors import ConfigError, SinkError
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT, Sink
from relayrl_gym.transport._zmq import new_context, release_gc_thread, require_zmq
from relayrl_gym.transport.keys import client_keys
from relayrl_gym.transport.payloads import payload_crc
from relayrl_gym.transport.protocol import (
    MIN_MESSAGE_LIMIT,
    Kind,
    ProtocolViolation,
    decode_header,
    encode,
)
from relayrl_gym.transport.sender.outbox import Outbox
from relayrl_gym.transport.sender.spill_files import spill_pending
from relayrl_gym.transport.sockets import (
    connect_socket,
    failed_handshakes,
    tcp_endpoint,
    watch_handshakes,
)

__all__ = ["DEFAULT_WINDOW_BYTES", "ZMQSink"]

log = logging.getLogger(__name__)

#: Bytes sent and not yet acknowledged before `write` refuses more (the writer's backlog,
#: then its spill files, take over).
DEFAULT_WINDOW_BYTES = 32 * 1024 * 1024
_POLL_MS = 50  # timers (resends, hellos) are checked at least this often
_PROBE_EVERY = 0.5  # while closing: seconds between asking the collector what it committed
_WILDCARD_HOSTS = ("0.0.0.0", "*", "[::]", "::")


class ZMQSink(Sink):
    """Sends each batch to a collector (``relayrl-gym serve`` / `TrainingServer`).

    A batch travels as one Arrow IPC record-batch message behind a JSON header (protocol
    version, run, sender, sequence number); the run starts with its Arrow schema, metadata
    included, so the collector writes a self-describing dataset. Delivery is at least once:
    every batch stays in a bounded window until the collector acknowledges that its sink has
    it, and is resent after a timeout, a gap or a collector restart; the collector drops
    duplicates, so its dataset holds each batch once. `write` never waits long: when the window
    is full it raises and the background writer keeps the batch (memory, then spill files) and
    retries. A batch larger than half the collector's message limit is sent in row slices.

    ``close`` waits up to ``close_timeout`` for the last acknowledgements, asking the collector
    meanwhile which batches it committed (so an acknowledgement lost on the way is made up for
    without waiting for a resend), and takes every acknowledgement that arrived before it
    stopped listening. What is still unacknowledged then is written to a local Arrow run under
    ``spill_dir`` with an index of each batch's sequence number (`sender.spill`): a batch
    the collector committed but could not acknowledge in time may be among them.
    ``relayrl-gym resend SPILL`` (`relayrl_gym.transport.spill.resend`) sends them later as
    this sender, the collector keeping each batch once; or
    `relayrl_gym.transport.spill.uncollected` drops those against the collector's state.

    The sink carries no models: where the collector says its learner publishes them
    (``models_endpoint``) is all a `ZMQModelSource` takes from it.

    A sender process that dies ends its run: restarted, it records a new run (new run id and
    sender id). What the collector acknowledged is kept exactly once; batches the dead process
    had not sent yet are lost with it, as with any sink (at most the last flush interval), and
    batches it had spilled stay in its spill directory, readable with `relayrl_gym.load`.

    URL: ``zmq+tcp://HOST:PORT`` with optional ``?models=tcp://HOST:PORT`` (where models come
    from; default: the endpoint the collector announces, ``off`` for none),
    ``curve=DIR`` (a client key folder from ``relayrl-gym keygen``), ``spill=DIR`` and
    ``close_timeout=SECONDS``.

    >>> sink = ZMQSink.from_url("zmq+tcp://127.0.0.1:7776?models=off&close_timeout=3")
    >>> sink.endpoint, sink.close_timeout
    ('tcp://127.0.0.1:7776', 3.0)
    """

    def __init__(self, address: str, *, models: str | None = None,
                 curve_keys: str | Path | None = None,
                 spill_dir: str | Path = Path(DEFAULT_SINK_ROOT, "_spill", "zmq"),
                 window_bytes: int = DEFAULT_WINDOW_BYTES, close_timeout: float = 10.0,
                 resend_after: float = 2.0) -> None:
        """Creates the sink; nothing connects before `start`.

        Args:
            address: the collector, ``tcp://HOST:PORT`` (or ``zmq+tcp://``, ``HOST:PORT``).
            models: the model publisher's endpoint, ``"off"``, or None to use the one the
                collector announces.
            curve_keys: a client key folder (``client.key_secret`` and ``server.key``) to
                speak CurveZMQ.
            spill_dir: where batches still unacknowledged at close are kept.
            window_bytes: bytes sent and unacknowledged before `write` refuses more.
            close_timeout: seconds ``close`` waits for acknowledgements.
            resend_after: seconds before an unacknowledged batch is sent again (doubling).
        """
        self.endpoint = tcp_endpoint(address)
        #: ``models=off``: no model source follows this sink's collector.
        self.models_off = models == "off"
        self.models_endpoint = None if models in (None, "off") else tcp_endpoint(str(models))
        self.keys = client_keys(curve_keys) if curve_keys is not None else None
        self.spill_dir = Path(spill_dir)
        self.close_timeout = float(close_timeout)
        self.sender_id = uuid.uuid4().hex[:16]
        #: What binds the sender name to this sender at the collector (from ``started``).
        # Proposed from the first start on, so a lost `started` reply cannot lock it out.
        self.token: str | None = secrets.token_hex(16)
        self.run_id: str | None = None
        self.outbox = Outbox(window_bytes, resend_after=resend_after)
        self.rejected: list[str] = []
        self.started = threading.Event()
        self._schema: pa.Schema | None = None
        self._max_batch_bytes = MIN_MESSAGE_LIMIT // 2  # until the collector tells its limit
        self._ctx: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._wake_r, self._wake_w = -1, -1  # a pipe: `write` wakes the I/O thread at once
        self._error: BaseException | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> ZMQSink:
        """``zmq+tcp://HOST:PORT[?models=...&curve=DIR&spill=DIR&close_timeout=S]``."""
        parts = urlsplit(url)
        if parts.scheme != "zmq+tcp":
            raise ConfigError(f"the ZMQ sink speaks TCP only: write zmq+tcp://HOST:PORT, got "
                              f"{url.split('?', 1)[0]!r}")
        options = dict(parse_qsl(parts.query))
        known = {"models", "curve", "spill", "close_timeout"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} in sink URL {url!r}; known: "
                              f"{sorted(known)}")
        kwargs: dict[str, Any] = {"models": options.get("models"),
                                  "curve_keys": options.get("curve")}
        if "spill" in options:
            kwargs["spill_dir"] = options["spill"]
        if "close_timeout" in options:
            try:
                kwargs["close_timeout"] = float(options["close_timeout"])
            except ValueError as err:
                raise ConfigError(f"close_timeout in {url!r} must be seconds, got "
                                  f"{options['close_timeout']!r}") from err
        return cls(f"tcp://{parts.netloc}", **kwargs)

    def __repr__(self) -> str:
        return f"ZMQSink({self.endpoint!r})"

    # -- Sink API ---------------------------------------------------------------------------
    def start(self, run_id: str, schema: pa.Schema) -> None:
        require_zmq()  # a clear error before anything is opened
        if self._thread is not None:
            raise SinkError("ZMQSink.start() called twice; use one sink per run")
        self.run_id, self._schema = run_id, schema
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ctx = new_context()
        self._thread = threading.Thread(target=self._run, name=f"relayrl-zmq-sender-{run_id}",
                                        daemon=True)
        self._thread.start()

    def write(self, batch: pa.RecordBatch) -> None:
        self._check()
        with self.outbox.changed:  # a short wait for room smooths a busy collector
            if not self.outbox.changed.wait_for(lambda: not self.outbox.full, timeout=0.25):
                raise SinkError(
                    f"the collector at {self.endpoint} has not acknowledged "
                    f"{self.outbox.rows} rows ({self.outbox.bytes} bytes); batches wait "
                    "locally and are retried. Check that `relayrl-gym serve` runs there")
        # All parts or none: a batch refused half-way would be offered again whole.
        for part in self._parts(batch):
            self.outbox.put(part.serialize(), part.num_rows)
        self._wake()

    def _parts(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """``batch`` cut in halves until each fits the collector's message limit."""
        if batch.num_rows <= 1 or batch.nbytes <= self._max_batch_bytes:
            return [batch]
        half = batch.num_rows // 2
        return self._parts(batch.slice(0, half)) + self._parts(batch.slice(half))

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already woken (the pipe is full), or closing
            os.write(self._wake_w, b"x")

    def flush(self) -> None:
        self._check()

    def wait_acknowledged(self, timeout: float = 10.0) -> bool:
        """Waits until the collector has every batch written so far; True if it has."""
        with self.outbox.changed:
            return self.outbox.changed.wait_for(lambda: len(self.outbox) == 0, timeout)

    def close(self, *, spill: bool = True) -> None:
        """Waits up to ``close_timeout`` for the last acknowledgements and stops. What is still
        unacknowledged is spilled (see the class), or with ``spill=False`` left in `outbox`
        (a spill's resend, which keeps the spill it reads)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        self._closing.set()  # the I/O thread asks the collector what it has committed
        self._wake()
        self.wait_acknowledged(self.close_timeout)
        self._stop.set()
        self._wake()
        self._thread.join(10.0)
        if self._ctx is not None:
            self._ctx.term()
            release_gc_thread()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if spill and len(self.outbox):  # acknowledgements taken after the wait count too
            self._spill_pending()

    def resume(self, sender_id: str, batches: Iterable[tuple[int, pa.RecordBatch]], *,
               token: str | None = None) -> None:
        """Before `start`: continues sender ``sender_id`` (with the ``token`` its collector
        gave it) with ``batches``, consecutive ``(seq, batch)`` pairs, each sent whole under
        its seq: a spill's resend (`relayrl_gym.transport.spill.resend`), which the collector
        de-duplicates as the original sender's."""
        if self._thread is not None:
            raise SinkError("ZMQSink.resume() must come before start()")
        self.sender_id, self.token = sender_id, token
        for seq, batch in batches:
            self.outbox.put(batch.serialize(), batch.num_rows, seq=seq)

    # -- internals -------------------------------------------------------------------------
    def _check(self) -> None:
        if self._error is not None:
            raise SinkError(f"the ZMQ sender to {self.endpoint} failed: {self._error}"
                            ) from self._error
        if self._thread is None or self._closed:
            raise SinkError("ZMQSink.write() called before start() or after close()")

    def _spill_pending(self) -> None:
        assert self._schema is not None and self.run_id is not None
        spill_pending(self.spill_dir, self.run_id, self.sender_id, self.endpoint, self._schema,
                      self.outbox.pending(), self.close_timeout, self.token,
                      refused=self.rejected[-1] if self.rejected else None)

    def _run(self) -> None:
        zmq = require_zmq()
        sock = monitor = None
        try:
            # No fixed identity: the collector binds the sender name to its token (and CURVE
            # key), and a reconnection shows up as a new connection that starts again.
            sock = connect_socket(self._ctx, zmq.DEALER, self.endpoint, keys=self.keys)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing to a collector that is not there
            monitor = watch_handshakes(sock)  # a refused key is told apart from a down host
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            next_start = next_probe = 0.0
            start_delay = self.outbox.resend_after
            while not self._stop.is_set():
                events = dict(poller.poll(_POLL_MS))
                if self._wake_r in events:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                if sock in events:
                    self._replies(sock)
                if monitor in events:
                    self._handshakes_failed(failed_handshakes(monitor))
                now = time.monotonic()
                if not self.started.is_set():
                    if now >= next_start and self._send(sock, self._start_frames()):
                        next_start = now + start_delay
                        start_delay = min(start_delay * 2, self.outbox.resend_max)
                else:
                    start_delay = self.outbox.resend_after
                    self._send_due(sock, now)
                    # Closing: the answer to ``start`` (``started``) says what the collector
                    # committed, making up for acknowledgements lost on the way (a resend would
                    # only after its backoff, maybe after ``close_timeout``).
                    if (self._closing.is_set() and len(self.outbox) and now >= next_probe and
                            self._send(sock, self._start_frames())):
                        next_probe = now + _PROBE_EVERY
            if sock is not None:  # acknowledgements that arrived while stopping: not spilled
                self._replies(sock)
        except Exception as err:  # reported by the next write/flush
            self._error = err
            log.exception("the ZMQ sender to %s stopped", self.endpoint)
        finally:
            if monitor is not None and sock is not None:
                sock.disable_monitor()
                monitor.close(0)
            if sock is not None:
                sock.close(0)

    def _start_frames(self) -> list[Any]:
        assert self._schema is not None
        schema = self._schema.serialize()
        fields: dict[str, Any] = {"token": self.token} if self.token is not None else {}
        return [encode(Kind.START, run=self.run_id, sender=self.sender_id, seq=-1,
                       first=self.outbox.first_seq, crc=payload_crc(schema), **fields), schema]

    def _send(self, sock: Any, frames: list[Any]) -> bool:
        zmq = require_zmq()
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def _send_due(self, sock: Any, now: float) -> None:
        due = self.outbox.due(now)
        for i, item in enumerate(due):
            header = encode(Kind.BATCH, run=self.run_id, sender=self.sender_id, seq=item.seq,
                            crc=payload_crc(item.payload))
            if not self._send(sock, [header, item.payload]):
                for rest in due[i:]:
                    self.outbox.unsent(rest.seq)
                return

    def _replies(self, sock: Any) -> None:
        for frames in _waiting(sock):
            try:
                header = decode_header(frames[0])
                if header.kind is Kind.ACK:
                    self.outbox.ack(header.integer("seq"))
                elif header.kind is Kind.NACK:
                    expected = header.integer("expected")
                    if expected < self.outbox.first_seq:  # acked before: its state is gone
                        log.warning("the collector at %s asks for batch %d, acknowledged "
                                    "before; starting the run again with it", self.endpoint,
                                    expected)
                        self.started.clear()
                    else:  # not an acknowledgement: batches before it may be uncommitted
                        self.outbox.resend_from(expected)
                elif header.kind is Kind.STARTED:
                    if self.started.is_set():  # a close-time probe: take what it says it has
                        self.outbox.hurry(header.integer("next"))  # and send what it lacks
                    else:
                        self._started(header.fields)
                        self.outbox.rewind(header.integer("next"))
                elif header.kind is Kind.NEED_START:
                    self.started.clear()
                elif header.kind is Kind.REJECT:
                    reason = str(header.fields.get("reason", "?"))[:300]
                    self.rejected.append(reason)
                    log.warning("the collector at %s rejected a message: %s", self.endpoint,
                                reason)
            except ProtocolViolation as err:
                log.warning("ignoring a malformed reply from %s: %s", self.endpoint, err)

    def _handshakes_failed(self, problems: list[str]) -> None:
        for problem in problems:
            if problem not in self.rejected:  # it repeats at every reconnection: once is enough
                self.rejected.append(problem)
                log.error("the ZMQ sender to %s cannot connect: %s", self.endpoint, problem)

    def _started(self, fields: dict[str, Any]) -> None:
        token = fields.get("token")
        if isinstance(token, str):
            self.token = token
        limit = fields.get("max_bytes")
        if isinstance(limit, int) and limit >= MIN_MESSAGE_LIMIT:
            self._max_batch_bytes = limit // 2
        announced = fields.get("models")
        if self.models_endpoint is None and not self.models_off and isinstance(announced, str):
            try:
                endpoint = tcp_endpoint(announced)
            except Exception:
                log.warning("the collector announced an invalid model endpoint %r", announced)
            else:
                host, _, port = endpoint[len("tcp://"):].rpartition(":")
                if host in _WILDCARD_HOSTS:  # bound on every interface: reach it as we did
                    host = self.endpoint[len("tcp://"):].rpartition(":")[0]
                self.models_endpoint = f"tcp://{host}:{port}"
        self.started.set()


def _waiting(sock: Any) -> Iterator[list[Any]]:
    """The messages waiting on ``sock``, without blocking."""
    zmq = require_zmq()
    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
