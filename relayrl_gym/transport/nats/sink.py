"""The NATS sink: publishes a run's Arrow batches to a JetStream stream, each stored once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from relayrl_gym.errors import SinkError
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT, Sink
from relayrl_gym.transport.nats.link import NatsLink, require_nats
from relayrl_gym.transport.nats.options import NatsTarget, parse_nats_url
from relayrl_gym.transport.nats.streams import (
    HEADER_ROWS,
    HEADER_RUN,
    HEADER_SENDER,
    HEADER_SEQ,
    MSG_ID,
    data_subject,
    ensure_stream,
    schema_subject,
)
from relayrl_gym.transport.sender.outbox import Outbox
from relayrl_gym.transport.sender.spill_files import SPILL_INDEX, write_spill

__all__ = ["DEFAULT_WINDOW_BYTES", "NatsSink"]

log = logging.getLogger(__name__)

#: Bytes published and not yet acknowledged by JetStream before `write` refuses more (the
#: writer's backlog, then its spill files, take over).
DEFAULT_WINDOW_BYTES = 32 * 1024 * 1024
#: Room kept in a message for its headers under the server's ``max_payload``.
_HEADER_ROOM = 4096
_TICK = 0.05  # seconds between looks at what is due, when nothing wakes the publisher
_ACK_TIMEOUT = 10.0  # seconds a publish waits for JetStream's acknowledgement
#: The longest wait before an unacknowledged batch is published again: a stream's new leader
#: (elected within seconds) gets it soon; a resend costs little (the stream keeps it once).
_RESEND_MAX = 4.0


class NatsSink(Sink):
    """Publishes each batch to a JetStream stream (``sink="nats://HOST:4222/STREAM"``).

    The run's schema goes first on its own subject, then every batch as one Arrow IPC message
    under a message id made of (run, sender, sequence number): JetStream stores a batch
    published twice (a resend after a timeout or a reconnection) once, and a consumer
    (``relayrl-gym serve --source nats://...``) keeps each once after that too. Publishing is
    pipelined; a batch leaves the window when JetStream acknowledges it (stored, replicated
    as the stream says), and is published again while it is not. `write` never waits long:
    while the server is down or the window is full it raises, and the background writer keeps
    the batch (memory, then spill files) and retries. A batch larger than the server's
    ``max_payload`` is sent in row slices. The stream is created when missing (subjects
    ``STREAM.>``, file storage, ``?replicas=N``, ``?max_age=SECONDS`` (default 7 days),
    ``?max_bytes=N``); an existing one is used as it is.

    ``close`` waits up to ``close_timeout`` seconds for the last acknowledgements; what is
    still unacknowledged is written to a local Arrow run under ``spill_dir`` with its sequence
    numbers, and ``relayrl-gym resend`` publishes it later under the same message ids.

    Models do not ride the sink: a wrapped env with ``policy=`` follows the stream's model
    bucket with a `relayrl_gym.models.nats_source.NatsModelSource` (``?models=off``: not).

    URL: ``nats://[USER:PASSWORD@|TOKEN@]HOST:PORT[,HOST:PORT...]/STREAM`` with the options
    above, ``spill=DIR``, ``close_timeout=SECONDS`` and credentials (see
    `relayrl_gym.transport.nats.options`).

    >>> sink = NatsSink.from_url("nats://127.0.0.1:4222/relayrl?close_timeout=3")
    >>> sink.target.stream, sink.close_timeout
    ('relayrl', 3.0)
    """

    def __init__(self, target: NatsTarget | str, *,
                 spill_dir: str | Path = Path(DEFAULT_SINK_ROOT, "_spill", "nats"),
                 window_bytes: int = DEFAULT_WINDOW_BYTES, close_timeout: float = 10.0,
                 resend_after: float = 2.0) -> None:
        """Creates the sink; nothing connects before `start`.

        Args:
            target: the stream (a `NatsTarget` or a ``nats://`` URL).
            spill_dir: where batches still unacknowledged at close are kept.
            window_bytes: bytes published and unacknowledged before `write` refuses more.
            close_timeout: seconds ``close`` waits for acknowledgements.
            resend_after: seconds before an unacknowledged batch is published again
                (doubling up to 4 s).
        """
        self.target = (target if isinstance(target, NatsTarget)
                       else parse_nats_url(target))
        self.target.number("max_age", 0)  # a bad value is refused now, not at connection
        self.target.number("max_bytes", 0)
        #: ``models=off``: no model source follows this sink's stream.
        self.models_off = self.target.option("models") == "off"
        self.spill_dir = Path(spill_dir)
        self.close_timeout = float(close_timeout)
        self.sender_id = uuid.uuid4().hex[:16]
        self.run_id: str | None = None
        self.outbox = Outbox(window_bytes, resend_after=resend_after, resend_max=_RESEND_MAX)
        #: The batches JetStream said it had already (published again: stored once).
        self.duplicate_seqs: set[int] = set()
        self.link: NatsLink | None = None
        self._schema: pa.Schema | None = None
        self._schema_bytes = b""
        self._js: Any = None
        self._prefix = ""
        self._max_part = 1 << 20
        self._confirmed: set[int] = set()
        self._wake: asyncio.Event | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> NatsSink:
        """``nats://HOST:PORT/STREAM[?spill=DIR&close_timeout=S&replicas=N&...]``."""
        target = parse_nats_url(url)
        kwargs: dict[str, Any] = {"close_timeout": target.number("close_timeout", 10.0)}
        if target.option("spill"):
            kwargs["spill_dir"] = target.option("spill")
        return cls(target, **kwargs)

    def __repr__(self) -> str:
        return f"NatsSink({self.target.display!r})"

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected.is_set()

    # -- Sink API ---------------------------------------------------------------------------
    def start(self, run_id: str, schema: pa.Schema) -> None:
        require_nats()  # a clear error before anything is opened
        if self.link is not None:
            raise SinkError("NatsSink.start() called twice; use one sink per run")
        self.run_id, self._schema = run_id, schema
        self._schema_bytes = schema.serialize().to_pybytes()
        self.link = NatsLink(self.target, f"relayrl-nats-sender-{run_id}",
                             on_connect=self._on_connect)
        # A server that is up answers at once; one that is down costs no data (writes are
        # refused and kept by the writer until it is back), but credentials it refuses will
        # not get better: say so now.
        if not self.link.wait_connected(2.0) and "refused the credentials" in self.link.problem:
            problem = self.link.problem
            self.link.close()
            raise SinkError(f"NATS at {self.target.display}: {problem}")

    def write(self, batch: pa.RecordBatch) -> None:
        self._check()
        if not self.connected:
            raise SinkError(f"NATS at {self.target.display} cannot take batches now "
                            f"({self._problem()}); they wait locally and are retried")
        with self.outbox.changed:  # a short wait for room smooths a busy server
            if not self.outbox.changed.wait_for(lambda: not self.outbox.full, timeout=0.25):
                raise SinkError(
                    f"NATS at {self.target.display} has not acknowledged {self.outbox.rows} "
                    f"rows ({self.outbox.bytes} bytes); batches wait locally and are retried")
        for part in self._parts(batch):  # all parts or none (checked before any is put)
            self.outbox.put(part.serialize(), part.num_rows)  # nats-py copies it once
        self._kick()

    def flush(self) -> None:
        self._check()

    def wait_acknowledged(self, timeout: float = 10.0) -> bool:
        """Waits until JetStream has every batch written so far; True if it has."""
        with self.outbox.changed:
            return self.outbox.changed.wait_for(lambda: len(self.outbox) == 0, timeout)

    def resume(self, sender_id: str, batches: Iterable[tuple[int, pa.RecordBatch]]) -> None:
        """Before `start`: continues sender ``sender_id`` with ``batches``, consecutive
        ``(seq, batch)`` pairs published under their own sequence numbers (a spill's resend:
        the stream and its consumers keep each batch once)."""
        if self.link is not None:
            raise SinkError("NatsSink.resume() must come before start()")
        self.sender_id = sender_id
        for seq, batch in batches:
            self.outbox.put(batch.serialize(), batch.num_rows, seq=seq)

    def close(self, *, spill: bool = True) -> None:
        """Waits up to ``close_timeout`` for the last acknowledgements and stops; what is
        still unacknowledged is spilled (see the class) and a `SinkError` says where, or with
        ``spill=False`` left in `outbox` (a spill's resend, which keeps the spill it reads)."""
        if self._closed:
            return
        self._closed = True
        if self.link is None:
            return
        if len(self.outbox):  # everything due now; a reconnection may come meanwhile
            self.outbox.resend_from(self.outbox.first_seq)
            self._kick()
            self.wait_acknowledged(self.close_timeout)
        link = self.link
        if link.loop.is_running():
            with contextlib.suppress(Exception):
                link.call(self._stop_pump(), timeout=2.0)
        link.close()
        if spill and len(self.outbox):
            self._spill_pending()

    # -- internals -------------------------------------------------------------------------
    def _check(self) -> None:
        if self.link is None or self._closed:
            raise SinkError("NatsSink.write() called before start() or after close()")

    def _problem(self) -> str:
        return self.link.problem if self.link is not None else "not started"

    def _parts(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """``batch`` cut in halves until each fits the server's ``max_payload``."""
        if batch.nbytes <= self._max_part:
            return [batch]
        if batch.num_rows <= 1:
            raise SinkError(f"one row of {batch.nbytes} bytes is over the NATS server's "
                            f"max_payload ({self._max_part + _HEADER_ROOM} bytes); raise "
                            "max_payload in the server's configuration (up to 64 MiB)")
        half = batch.num_rows // 2
        return self._parts(batch.slice(0, half)) + self._parts(batch.slice(half))

    def _kick(self) -> None:
        link, wake = self.link, self._wake
        if link is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                link.loop.call_soon_threadsafe(wake.set)

    @property
    def close_retry(self) -> float:
        """Seconds the writer keeps retrying this sink at close (``close_timeout``): a stream
        electing a new leader, or a server restarting, takes seconds."""
        return self.close_timeout

    async def _on_connect(self, nc: Any) -> None:
        js = nc.jetstream()
        self._prefix = await ensure_stream(js, self.target)
        self._max_part = max(nc.max_payload - _HEADER_ROOM, 1024)
        assert self.run_id is not None
        # The schema before any batch: a consumer meets it first in the stream.
        await js.publish(schema_subject(self._prefix, self.run_id), self._schema_bytes,
                         headers={MSG_ID: f"{self.run_id}/{self.sender_id}/schema",
                                  HEADER_RUN: self.run_id, HEADER_SENDER: self.sender_id},
                         timeout=5.0)
        self._js = js
        # Connected again (to a server that may have lost its store: the stream and the
        # schema were made again above, the schema kept once by its message id): what waits
        # goes now, not after its backoff.
        self.outbox.resend_from(self.outbox.first_seq)
        if self._pump is None:
            self._wake = asyncio.Event()
            self._pump = asyncio.get_running_loop().create_task(self._publish_due())
        self._wake_now()

    def _wake_now(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _stop_pump(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    async def _publish_due(self) -> None:
        """Publishes what the window says is due (new batches at once, unacknowledged ones
        again after their backoff), oldest first."""
        assert self._wake is not None and self.run_id is not None
        subject = data_subject(self._prefix, self.run_id)
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _TICK)
            self._wake.clear()
            if not self.connected:
                continue
            for item in self.outbox.due():
                headers = {MSG_ID: f"{self.run_id}/{self.sender_id}/{item.seq}",
                           HEADER_RUN: self.run_id, HEADER_SENDER: self.sender_id,
                           HEADER_SEQ: str(item.seq), HEADER_ROWS: str(item.rows)}
                try:
                    future = await self._js.publish_async(subject, item.payload,
                                                          headers=headers, wait_stall=1.0)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # disconnected, stalled: due again after backoff
                    log.debug("publishing batch %d to %s failed: %s", item.seq,
                              self.target.display, err)
                    break
                # An acknowledgement that never comes (no stream leader just then) must not
                # hold its place among nats-py's pending publishes forever.
                timer = loop.call_later(_ACK_TIMEOUT, future.cancel)
                future.add_done_callback(
                    lambda f, seq=item.seq, timer=timer: self._acknowledged(seq, f, timer))

    def _acknowledged(self, seq: int, future: asyncio.Future[Any],
                      timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        if future.cancelled() or future.exception() is not None:
            return  # published again when due
        if getattr(future.result(), "duplicate", False):
            self.duplicate_seqs.add(seq)
        # The window is cumulative: a batch leaves it once every earlier one has too.
        self._confirmed.add(seq)
        first = self.outbox.first_seq
        top = None
        while first in self._confirmed:
            self._confirmed.discard(first)
            top, first = first, first + 1
        if top is not None:
            self.outbox.ack(top)
        self._confirmed = {s for s in self._confirmed if s >= first}

    def _spill_pending(self) -> None:
        assert self._schema is not None and self.run_id is not None
        pending = self.outbox.pending()
        rows = sum(item.rows for item in pending)
        where = self.target.address
        try:
            path = write_spill(self.spill_dir, self.run_id, self.sender_id, where,
                               self._schema, pending)
        except (SinkError, OSError) as err:
            raise SinkError(f"{rows} rows were never acknowledged by NATS at "
                            f"{self.target.display} and could not be spilled to "
                            f"{str(self.spill_dir)!r} ({err}); they may be lost") from err
        raise SinkError(
            f"{rows} rows (batches {pending[0].seq}..{pending[-1].seq} of sender "
            f"{self.sender_id}) were not acknowledged by NATS at {self.target.display} within "
            f"{self.close_timeout} s ({self._problem() or 'no answer'}). They are kept in "
            f"{str(path)!r} with their sequence numbers in {SPILL_INDEX}; the stream may hold "
            "some of them. Once NATS is reachable, publish them with `relayrl-gym resend "
            f"{shlex.quote(str(path))}`: the stream and its consumers keep each batch once, "
            "and the spill is removed")
