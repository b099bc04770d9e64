"""The collector: receives ZMQ sinks' batches, writes each once, acknowledges what is stored."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from relayrl_gym.errors import ConfigError, RelayRLError
from relayrl_gym.transport._zmq import require_zmq
from relayrl_gym.transport.protocol import (
    Header,
    Kind,
    ProtocolViolation,
    decode_header,
    encode,
)
from relayrl_gym.transport.sockets import bind_socket
from relayrl_gym.transport.stats import CollectorStats

if TYPE_CHECKING:
    from relayrl_gym.transport.keys import ServerKeys

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_RUN_IDLE_TIMEOUT", "Collector", "RunStore"]

log = logging.getLogger(__name__)

#: The largest message a collector accepts (ZMQ drops a peer that sends a larger one).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Seconds without a message of a run before the collector closes it (completes its files,
#: lets go of its state; a sender that comes back reopens it).
DEFAULT_RUN_IDLE_TIMEOUT = 600.0
_DRAIN_MESSAGES = 256
# One commit (and acknowledgement) per this many bytes: a quarter of a sender's default window,
# so acknowledgements keep flowing while the rest of the window is in flight (draining a whole
# window before acknowledging made senders stop and wait: ~13% less throughput).
_DRAIN_BYTES = 8 * 1024 * 1024

#: Opens the store of a run: ``(run_id, schema) -> ArrowRunStore | SinkRunStore``.
RunStore = Callable[[str, pa.Schema], Any]


class _Round:
    """What one drain of the socket wrote, per (run, sender): committed together, then acked."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], int] = {}
        self.identity: dict[tuple[str, str], bytes] = {}
        self.rows: dict[tuple[str, str], list[int]] = {}  # [batches, rows], counted at commit
        self.batches: list[tuple[str, pa.RecordBatch]] = []


class Collector:
    """A ROUTER socket and the thread that serves it (see `relayrl_gym.transport.protocol`).

    Batches of a sender are taken in sequence order only: a repeat is acknowledged again and
    counted as a duplicate, a gap is answered with the sequence number expected. Each drain of
    the socket writes its batches, commits every touched run (data first, then the per-sender
    last sequence numbers), and only then acknowledges. Malformed, oversized or unknown-version
    messages are refused with a ``reject`` reply and counted; nothing a peer sends stops the
    thread. A run without a message for ``run_idle_timeout`` seconds is closed: its files are
    completed (readable as a finished run) and its committed state stays on disk, so a sender
    that comes back later is asked to start again and continues the same run, its batches
    still de-duplicated. `TrainingServer` builds one; ``close`` joins the thread.

    >>> import zmq
    >>> ctx = zmq.Context()
    >>> collector = Collector(ctx, "tcp://127.0.0.1:*", open_store=lambda run, schema: None)
    >>> collector.alive, collector.stats.snapshot()["received"]
    (True, 0)
    >>> collector.close(); ctx.term()
    """

    def __init__(self, ctx: Any, bind: str, open_store: RunStore, *,
                 keys: ServerKeys | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 models_endpoint: str | None = None,
                 on_batches: Callable[[list[tuple[str, pa.RecordBatch]]], None] | None = None,
                 run_idle_timeout: float | None = DEFAULT_RUN_IDLE_TIMEOUT) -> None:
        """Binds the socket and starts serving.

        Args:
            ctx: the ZMQ context (its authenticator enforces CURVE keys).
            bind: the endpoint, e.g. ``tcp://*:7776`` (port ``*`` or 0: any free port).
            open_store: opens a run's store.
            keys: the server keypair for CurveZMQ.
            max_message_bytes: larger messages are refused.
            models_endpoint: announced to senders as where models come from.
            on_batches: gets ``(run_id, batch)`` pairs once they are committed.
            run_idle_timeout: seconds without a message of a run before it is closed
                (default 600); None: runs stay open until the collector closes.
        """
        zmq = require_zmq()
        if run_idle_timeout is not None and not run_idle_timeout > 0:
            raise ConfigError(f"`run_idle_timeout` must be > 0 seconds or None (never close "
                              f"idle runs), got {run_idle_timeout!r}")
        self.run_idle_timeout = run_idle_timeout
        self.stats = CollectorStats()
        self.max_message_bytes = int(max_message_bytes)
        self.models_endpoint = models_endpoint
        self._open_store = open_store
        self._on_batches = on_batches
        self._stores: dict[str, Any] = {}
        self._heard: dict[str, float] = {}  # run -> when a message of it last came
        self._sock, self.endpoint = bind_socket(ctx, zmq.ROUTER, bind, keys=keys,
                                                max_message_bytes=self.max_message_bytes)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="relayrl-zmq-collector",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stops the thread and completes every run's files; idempotent."""
        self._stop.set()
        self._thread.join(timeout)
        problems = []
        for run_id, store in list(self._stores.items()):
            try:
                store.close()
            except Exception as err:
                problems.append(f"{run_id}: {err}")
        self._stores.clear()
        self._heard.clear()
        if problems:
            log.error("closing runs failed: %s", "; ".join(problems))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def open_runs(self) -> list[str]:
        """The runs being written now (idle ones are closed, see ``run_idle_timeout``)."""
        return list(self._stores)

    # -- thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        zmq = require_zmq()
        sock = self._sock
        idle_check = 0.0
        try:
            while not self._stop.is_set():
                if self.run_idle_timeout is not None and time.monotonic() >= idle_check:
                    self._close_idle_runs(self.run_idle_timeout)
                    idle_check = time.monotonic() + min(1.0, self.run_idle_timeout / 4)
                if not sock.poll(50):
                    continue
                messages: list[list[Any]] = []
                size = 0
                while len(messages) < _DRAIN_MESSAGES and size < _DRAIN_BYTES:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    messages.append(frames)
                    size += sum(len(f) for f in frames)
                work = _Round()
                for frames in messages:
                    self._handle(frames, work)
                self._commit(work)
        except Exception as err:  # a bug, not a peer's doing: keep it visible
            self.error = err
            log.exception("the collector thread stopped")
        finally:
            sock.close(0)

    def _reply(self, identity: bytes, kind: Kind, **fields: Any) -> None:
        zmq = require_zmq()
        with contextlib.suppress(zmq.ZMQError):  # the peer is gone or slow: it asks again
            self._sock.send_multipart([identity, encode(kind, **fields)], zmq.NOBLOCK)

    def _handle(self, frames: list[Any], work: _Round) -> None:
        identity = frames[0].bytes
        sender = "?"
        try:
            if len(frames) < 2:
                raise ProtocolViolation("empty message")
            if sum(len(f) for f in frames) > self.max_message_bytes:
                raise ProtocolViolation(f"message over the {self.max_message_bytes}-byte limit")
            header = decode_header(frames[1].buffer)
            if header.kind not in (Kind.START, Kind.BATCH):
                raise ProtocolViolation(f"a collector takes start and batch messages, not "
                                        f"{header.kind.value!r}")
            sender = header.name("sender")
            run_id = header.name("run")
            if len(frames) != 3:
                raise ProtocolViolation(f"a {header.kind.value} message has one payload frame, "
                                        f"got {len(frames) - 2}")
            if header.kind is Kind.START:
                self._start(identity, sender, run_id, header, frames[2], work)
            else:
                self._batch(identity, sender, run_id, header, frames[2], work)
        except ProtocolViolation as err:
            self.stats.count(sender, rejected=1)
            log.warning("rejected a message from sender %s: %s", sender, err)
            self._reply(identity, Kind.REJECT, reason=str(err)[:300])
        except Exception as err:  # a bug; one message must not stop serving everyone else
            self.stats.count(sender, rejected=1)
            log.exception("handling a message from sender %s failed", sender)
            self._reply(identity, Kind.REJECT, reason=f"collector error: {str(err)[:200]}")

    def _start(self, identity: bytes, sender: str, run_id: str, header: Header, payload: Any,
               work: _Round) -> None:
        try:
            schema = pa.ipc.read_schema(pa.py_buffer(payload.buffer))
            from relayrl_gym.schema.transitions import TransitionSchema

            TransitionSchema.from_arrow(schema)  # a recorded run's schema, metadata included
        except Exception as err:
            raise ProtocolViolation(f"start of run {run_id!r} carries no valid recorded-run "
                                    f"schema: {str(err)[:200]}") from err
        store = self._stores.get(run_id)
        if store is None:
            try:
                store = self._open_store(run_id, schema)
            except Exception as err:  # a damaged run directory must not stop the thread
                if not isinstance(err, RelayRLError):
                    log.exception("opening run %s failed", run_id)
                raise ProtocolViolation(f"cannot open run {run_id!r}: {err}") from err
            self._stores[run_id] = store
            log.info("run %s started by sender %s", run_id, sender)
        elif not store.schema.equals(schema, check_metadata=False):
            raise ProtocolViolation(f"run {run_id!r} is already being written with another "
                                    "schema; a sender must not reuse a run id")
        self._heard[run_id] = time.monotonic()
        key = (run_id, sender)
        # ``next`` is what is committed, never a batch of this round that a failed commit
        # could still lose: a sender takes ``next`` as an acknowledgement.
        committed = store.last_seq(sender)
        last = work.last.get(key, committed)
        first = header.fields.get("first")
        if isinstance(first, int) and not isinstance(first, bool) and first - 1 > last:
            # The sender no longer has batches this run never got: an earlier collector (whose
            # state is gone: another sink directory, a lost state file) acknowledged them.
            log.warning("sender %s of run %s resumes at batch %d; batches %d..%d were "
                        "acknowledged by a collector whose state this one does not have",
                        sender, run_id, first, last + 1, first - 1)
            committed = work.last[key] = first - 1
            work.identity[key] = identity
        self.stats.set_last_seq(sender, committed)
        self._reply(identity, Kind.STARTED, run=run_id, next=committed + 1,
                    models=self.models_endpoint, max_bytes=self.max_message_bytes)

    def _batch(self, identity: bytes, sender: str, run_id: str, header: Header, payload: Any,
               work: _Round) -> None:
        seq = header.integer("seq")
        store = self._stores.get(run_id)
        if store is None:
            self._reply(identity, Kind.NEED_START, run=run_id)
            return
        self._heard[run_id] = time.monotonic()
        key = (run_id, sender)
        committed = store.last_seq(sender)
        last = work.last.get(key, committed)
        if seq <= last:
            self.stats.count(sender, duplicates=1)
            if seq <= committed:
                self._reply(identity, Kind.ACK, run=run_id, seq=committed)
            return
        if seq > last + 1:
            self.stats.count(sender, out_of_order=1)
            self._reply(identity, Kind.NACK, run=run_id, expected=last + 1)
            return
        try:
            batch = pa.ipc.read_record_batch(pa.py_buffer(payload.buffer), store.schema)
            batch.validate(full=True)
        except Exception as err:
            raise ProtocolViolation(f"batch {seq} of run {run_id!r} is not a valid record "
                                    f"batch of the run's schema: {str(err)[:200]}") from err
        try:
            store.write(batch)
        except Exception as err:  # not acknowledged: the sender resends it
            self.stats.sink_errors += 1
            log.warning("writing batch %d of run %s failed: %s", seq, run_id, err)
            self._abandon(run_id, work)
            return
        work.last[key] = seq
        work.identity[key] = identity
        work.batches.append((run_id, batch))
        counts = work.rows.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += batch.num_rows

    def _abandon(self, run_id: str, work: _Round | None = None) -> None:
        """Drops a run whose files a failed write or commit left in an unknown state; its
        senders' next batches get ``need_start``, and reopening it cuts the uncommitted
        batches (written again when resent), so none is kept twice."""
        store = self._stores.pop(run_id, None)
        self._heard.pop(run_id, None)
        if store is not None:
            store.abandon()
        if work is not None:  # this round's batches of the run are gone with its file
            for key in [k for k in work.last if k[0] == run_id]:
                del work.last[key], work.identity[key]
                work.rows.pop(key, None)
            work.batches = [(r, b) for r, b in work.batches if r != run_id]

    def _close_idle_runs(self, idle: float) -> None:
        """Closes the runs without a message for ``idle`` seconds. Between rounds every batch
        written is committed, so a closed run's files and state agree; a sender that comes
        back gets ``need_start`` and its ``start`` reopens the run where it stopped."""
        now = time.monotonic()
        for run_id in [r for r in self._stores if now - self._heard.get(r, now) >= idle]:
            store = self._stores[run_id]
            try:
                store.close()
            except Exception as err:  # reopening repairs it (cut back to what is committed)
                self.stats.sink_errors += 1
                log.error("closing idle run %s failed: %s", run_id, err)
                store.abandon()
            else:
                log.info("run %s closed after %.0f s without a message", run_id, idle)
            finally:  # counted, then out of `open_runs`, once its files are complete
                self.stats.runs_idle_closed += 1
                self._heard.pop(run_id, None)
                del self._stores[run_id]

    def _commit(self, work: _Round) -> None:
        by_run: dict[str, dict[str, int]] = {}
        for (run_id, sender), seq in work.last.items():
            by_run.setdefault(run_id, {})[sender] = seq
        committed_runs = set()
        for run_id, seqs in by_run.items():
            try:
                store = self._stores.get(run_id)
                if store is None:  # abandoned during the round
                    continue
                store.commit(seqs)
            except Exception as err:  # not acknowledged: resent, written again after repair
                self.stats.sink_errors += 1
                log.error("committing run %s failed: %s", run_id, err)
                self._abandon(run_id)
                continue
            committed_runs.add(run_id)
        for (run_id, sender), seq in work.last.items():
            if run_id in committed_runs:
                batches, rows = work.rows.get((run_id, sender), (0, 0))
                self.stats.count(sender, batches=batches, rows=rows)
                self.stats.set_last_seq(sender, seq)
                self._reply(work.identity[(run_id, sender)], Kind.ACK, run=run_id, seq=seq)
        if self._on_batches is not None and work.batches:
            self._on_batches([(r, b) for r, b in work.batches if r in committed_runs])
