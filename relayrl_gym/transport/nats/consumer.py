"""`NatsCollector`: reads a run stream through a durable JetStream consumer and writes each
batch once, acknowledging it only after its run store committed it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from relayrl_gym.errors import ConfigError, RelayRLError
from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.transport.collector.run_store import RunBusyError
from relayrl_gym.transport.collector.stats import CollectorStats
from relayrl_gym.transport.nats.link import NatsLink
from relayrl_gym.transport.nats.options import NatsTarget
from relayrl_gym.transport.nats.streams import (
    HEADER_RUN,
    HEADER_SENDER,
    HEADER_SEQ,
    check_partition,
    data_subject,
    ensure_stream,
    partition_filter,
    schema_subject,
)
from relayrl_gym.transport.payloads import read_checked_batch
from relayrl_gym.transport.protocol import Header, Kind, ProtocolViolation

__all__ = ["DEFAULT_DURABLE", "NatsCollector"]

log = logging.getLogger(__name__)

#: The durable consumer name ``serve --source`` uses unless told another: every ``serve``
#: of one name shares the stream's messages; each other name gets a full copy.
DEFAULT_DURABLE = "relayrl"
_FETCH = 32  # messages a round (a message is at most the server's max_payload, 1 MiB default)
_ACK_WAIT = 10.0  # seconds before JetStream redelivers a message nobody acknowledged (a
# consumer killed mid-round: what it had fetched comes back to the others, or to it restarted)
_MAX_ACK_PENDING = 4096
_BUSY_DELAY = 0.2  # a run written by another member of the group: redelivered after this
_GAP_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)  # a batch that came before its predecessor
_CHECK_EVERY = 20  # empty fetches (0.25 s each) between checks that the consumer exists
_MAX_TRIES = 10  # deliveries of a message that fails for no known reason before it is dropped


class _LocalTrouble(Exception):
    """This side cannot take a run's batches now (its sink is down, its disk full)."""


class _Round:
    """What one fetch wrote, per run: the last seq of each sender, the messages to
    acknowledge once the run committed, and its batches for the learner."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], int] = {}
        self.rows: dict[tuple[str, str], list[int]] = {}
        self.acks: dict[str, list[Any]] = {}
        self.batches: list[tuple[str, pa.RecordBatch]] = []
        self.now: list[Any] = []  # acknowledged whatever the commits do (refused, repeats)
        self.naks: list[tuple[Any, float]] = []


class NatsCollector:
    """A durable pull consumer of a run stream and the thread that writes what it delivers.

    Messages are taken per (run, sender) in sequence order only: a repeat (published again
    after the stream's duplicate window, or redelivered after a crash) is acknowledged and
    counted as a duplicate; a batch whose predecessor has not come yet is handed back (a
    negative acknowledgement with a delay) until it has, for ``gap_timeout`` seconds, after
    which the missing batches are counted as lost (``gaps``) and the run goes on. Each round
    writes its batches, commits every touched run (data first, then the per-sender last
    sequence numbers) and only then acknowledges: a collector killed at any point loses
    nothing and, reopening its run directories, keeps nothing twice.

    ``partition=(i, n)`` shares the stream among ``n`` collectors of one ``durable`` name
    (``n`` a power of two up to 32): this one takes the runs whose partition (see
    `relayrl_gym.transport.nats.streams`) is ``i`` modulo ``n``, through a durable consumer of
    its own, ``<durable>-<i>of<n>``. The members' runs never overlap, so the union of what they
    wrote holds every batch once, each member keeping its own crash-safe state; a member that
    stops leaves its share waiting in the stream until it (or a collector with the same
    ``partition``) comes back. Run stores are also locked while open: two collectors given
    the same share and one sink directory never write one run at once (the second hands the
    run's batches back).

    A run's schema is read from its schema subject (the last message there) when its first
    batch comes, so a collector may join a stream at any time.

    (Tested against real servers in tests/transport/nats.)
    """

    def __init__(self, target: NatsTarget, open_store: Callable[[str, pa.Schema], Any], *,
                 durable: str = DEFAULT_DURABLE,
                 on_batches: Callable[[list[tuple[str, pa.RecordBatch]]], None] | None = None,
                 run_idle_timeout: float | None = 600.0, gap_timeout: float = 300.0,
                 max_open_runs: int = 128, partition: tuple[int, int] = (0, 1)) -> None:
        """Connects (in the background) and starts consuming.

        Args:
            target: the stream.
            open_store: opens a run's store, ``(run_id, schema) -> ArrowRunStore | ...``.
            durable: the consumer's name (shared by the members of one group).
            on_batches: gets ``(run_id, batch)`` pairs once they are committed.
            run_idle_timeout: seconds without a batch of a run before its files are
                completed and its lock let go (None: never).
            gap_timeout: seconds a missing batch is waited for before the run goes on.
            max_open_runs: runs held open at once (the least recently written is closed).
            partition: ``(i, n)``: this collector's share of the stream (see above).
        """
        if run_idle_timeout is not None and not run_idle_timeout > 0:
            raise ConfigError(f"`run_idle_timeout` must be > 0 seconds or None, got "
                              f"{run_idle_timeout!r}")
        check_partition(*partition)
        self.target = target
        self.partition = partition
        #: The JetStream consumer's name: ``durable``, or ``<durable>-<i>of<n>`` for a share.
        self.durable = durable if partition[1] == 1 else f"{durable}-{partition[0]}of{partition[1]}"
        self.run_idle_timeout = run_idle_timeout
        self.gap_timeout = float(gap_timeout)
        self.max_open_runs = int(max_open_runs)
        self.stats = CollectorStats()
        #: Messages of runs another member of the group was writing (handed back to it).
        self.elsewhere = 0
        #: Batches given up on after ``gap_timeout`` (their sender never published them).
        self.gaps = 0
        self.redelivered = 0
        self.error: BaseException | None = None
        self._open_store = open_store
        self._on_batches = on_batches
        self._stores: OrderedDict[str, Any] = OrderedDict()  # least recently written first
        self._heard: dict[str, float] = {}
        self._waiting_since: dict[tuple[str, str, int], float] = {}
        self._prefix = ""
        self._js: Any = None
        self._sub: Any = None
        self._idle_fetches = 0
        self._stop = threading.Event()
        self.link = NatsLink(target, "relayrl-nats-collector-io", on_connect=self._on_connect)
        self._thread = threading.Thread(target=self._run, name="relayrl-nats-collector",
                                        daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def open_runs(self) -> list[str]:
        return list(self._stores)

    def snapshot(self) -> dict[str, Any]:
        """The counters of `CollectorStats` and ``elsewhere``, ``gaps``, ``redelivered``."""
        return {**self.stats.snapshot(), "elsewhere": self.elsewhere, "gaps": self.gaps,
                "redelivered": self.redelivered}

    def close(self, timeout: float = 5.0) -> None:
        """Stops consuming, completes every run's files; idempotent."""
        self._stop.set()
        self._thread.join(timeout)
        for run_id in list(self._stores):
            self._close_run(run_id, "the collector closes")
        self.link.close(timeout)

    # -- on the link's loop ------------------------------------------------------------------
    async def _on_connect(self, nc: Any) -> None:
        # Every (re)connection: the server may have come back without its store.
        js = nc.jetstream()
        self._prefix = await ensure_stream(js, self.target)
        self._js = js
        await self._subscribe()

    async def _subscribe(self) -> None:
        """Creates the durable consumer when it is missing (first start, a server that lost
        its store, or the consumer deleted by hand), and the pull subscription to it."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        if self._sub is not None:
            try:
                await self._js.consumer_info(self.target.stream, self.durable)
                return
            except NotFoundError:
                log.warning("the consumer %s of %s is gone; creating it again", self.durable,
                            self.target.display)
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
                self._sub = None
        config = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, ack_wait=_ACK_WAIT,
                                max_ack_pending=_MAX_ACK_PENDING,
                                description="relayrl-gym serve")
        config.filter_subject = partition_filter(self._prefix, *self.partition)
        self._sub = await self._js.pull_subscribe(config.filter_subject, durable=self.durable,
                                                  stream=self.target.stream, config=config)

    async def _fetch(self) -> list[Any]:
        import nats.errors

        try:
            messages = list(await self._sub.fetch(batch=_FETCH, timeout=0.25))
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            # Nothing for a while: also what a deleted consumer looks like; check now and then.
            self._idle_fetches += 1
            if self._idle_fetches % _CHECK_EVERY == 0:
                await self._subscribe()
            return []
        except Exception:  # the consumer may be gone: make sure it is there, then go on
            await self._subscribe()
            raise
        self._idle_fetches = 0
        return messages

    async def _answer(self, acks: list[Any], naks: list[tuple[Any, float]]) -> None:
        for msg in acks:
            with contextlib.suppress(Exception):  # lost: redelivered, then a duplicate
                await msg.ack()
        for msg, delay in naks:
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)

    async def _schema_of(self, run_id: str) -> bytes | None:
        """The first schema message of the run: its sender published it before any batch
        (a later one can only repeat it, or come from someone else)."""
        from nats.js.errors import NotFoundError

        try:
            msg = await self._js.get_msg(self.target.stream, seq=1, next=True,
                                         subject=schema_subject(self._prefix, run_id))
        except NotFoundError:
            return None
        return bytes(msg.data or b"")

    # -- the collector thread ------------------------------------------------------------------
    def _run(self) -> None:
        idle_check = 0.0
        ahead: concurrent.futures.Future[list[Any]] | None = None
        try:
            while not self._stop.is_set():
                if self.run_idle_timeout is not None and time.monotonic() >= idle_check:
                    self._close_idle_runs(self.run_idle_timeout)
                    idle_check = time.monotonic() + min(1.0, self.run_idle_timeout / 4)
                if not self.link.connected.wait(0.1) or self._sub is None:
                    continue
                try:
                    future, ahead = ahead or self.link.submit(self._fetch()), None
                    messages = future.result(10.0)
                except Exception as err:  # disconnected meanwhile: the link reconnects
                    log.debug("fetching from %s failed: %s", self.target.display, err)
                    self._stop.wait(0.1)
                    continue
                if not messages:
                    continue
                # The next round travels while this one is written.
                ahead = self.link.submit(self._fetch())
                work = _Round()
                for msg in messages:
                    self._handle(msg, work)
                self._commit(work)
        except Exception as err:  # a bug, not a peer's doing: keep it visible
            self.error = err
            log.exception("the NATS collector thread stopped")
        finally:
            self._hand_back(ahead)

    def _hand_back(self, ahead: concurrent.futures.Future[list[Any]] | None) -> None:
        """Messages fetched and not written go back at once (not after ``ack_wait``)."""
        if ahead is None:
            return
        with contextlib.suppress(Exception):
            messages = ahead.result(1.0)
            self.link.call(self._answer([], [(m, 0) for m in messages]), timeout=2.0)

    def _handle(self, msg: Any, work: _Round) -> None:
        sender = "?"
        try:
            if msg.metadata.num_delivered > 1:
                self.redelivered += 1
            headers = msg.headers or {}
            run_id = _name(headers, HEADER_RUN)
            sender = _name(headers, HEADER_SENDER)
            if msg.subject != data_subject(self._prefix, run_id):  # a run's rows come on its
                raise ProtocolViolation(f"a batch of run {run_id!r} came on subject "  # own
                                        f"{msg.subject!r}")  # subject only
            self._batch(msg, run_id, sender, headers, work)
        except ProtocolViolation as err:
            self.stats.count(sender, rejected=1)
            log.warning("rejected a message on %s from sender %s: %s", msg.subject, sender, err)
            work.now.append(msg)  # never written: redelivering it would not change that
        except Exception:  # a bug, or this side's trouble: tried again, then given up on
            delivered = msg.metadata.num_delivered
            if delivered <= 1:
                log.exception("handling a message on %s failed", msg.subject)
            if delivered >= _MAX_TRIES:
                self.stats.count(sender, rejected=1)
                log.error("gave up on a message on %s after %d tries", msg.subject, delivered)
                work.now.append(msg)
            else:
                work.naks.append((msg, _GAP_DELAYS[-1]))

    def _read_schema(self, run_id: str, data: bytes) -> pa.Schema:
        try:
            schema = pa.ipc.read_schema(pa.py_buffer(data))
            TransitionSchema.from_arrow(schema)  # a recorded run's schema, metadata included
        except Exception as err:
            raise ProtocolViolation(f"the schema of run {run_id!r} is not a recorded run's: "
                                    f"{str(err)[:200]}") from err
        return schema

    def _store(self, run_id: str) -> Any:
        store = self._stores.get(run_id)
        if store is not None:
            self._stores.move_to_end(run_id)
            return store
        data = self.link.call(self._schema_of(run_id), timeout=10.0)
        if data is None:
            raise ProtocolViolation(f"run {run_id!r} has no schema in the stream; its "
                                    "batches cannot be read")
        schema = self._read_schema(run_id, data)
        while len(self._stores) >= self.max_open_runs:
            self._close_run(next(iter(self._stores)), "room for another run")
        try:
            store = self._open_store(run_id, schema)
        except RunBusyError:
            raise
        except Exception as err:  # this side's trouble (a sink down, a full disk): not the
            self.stats.sink_errors += 1  # peer's; its batches come back later
            if not isinstance(err, RelayRLError):
                log.exception("opening run %s failed", run_id)
            raise _LocalTrouble(f"cannot open run {run_id!r}: {err}") from err
        self._stores[run_id] = store
        log.info("run %s started", run_id)
        return store

    def _batch(self, msg: Any, run_id: str, sender: str, headers: dict[str, str],
               work: _Round) -> None:
        seq = _integer(headers, HEADER_SEQ)
        try:
            store = self._store(run_id)
        except RunBusyError:
            self.elsewhere += 1
            work.naks.append((msg, _BUSY_DELAY))
            return
        except _LocalTrouble as err:
            if msg.metadata.num_delivered <= 1:
                log.warning("%s; its batches wait in the stream", err)
            work.naks.append((msg, _GAP_DELAYS[-1]))
            return
        self._heard[run_id] = time.monotonic()
        key = (run_id, sender)
        committed = store.last_seq(sender)
        last = work.last.get(key, committed)
        if seq <= last:
            self.stats.count(sender, duplicates=1)
            (work.now if seq <= committed else work.acks.setdefault(run_id, [])).append(msg)
            return
        if seq > last + 1 and not self._gave_up(run_id, sender, last + 1, seq):
            self.stats.count(sender, out_of_order=1)
            tries = max(msg.metadata.num_delivered - 1, 0)
            work.naks.append((msg, _GAP_DELAYS[min(tries, len(_GAP_DELAYS) - 1)]))
            return
        what = f"batch {seq} of run {run_id!r}"
        batch = read_checked_batch(pa.py_buffer(msg.data), store.schema, what)
        try:
            store.write(batch)
        except Exception as err:  # not acknowledged: redelivered, written after repair
            self.stats.sink_errors += 1
            log.warning("writing %s failed: %s", what, err)
            self._abandon(run_id, work)
            work.naks.append((msg, _GAP_DELAYS[-1]))
            return
        work.last[key] = seq
        work.acks.setdefault(run_id, []).append(msg)
        work.batches.append((run_id, batch))
        counts = work.rows.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += batch.num_rows

    def _gave_up(self, run_id: str, sender: str, missing: int, seq: int) -> bool:
        """Whether batch ``missing`` has been waited for ``gap_timeout`` seconds (then the
        batches up to ``seq`` are counted lost and ``seq`` is taken)."""
        key = (run_id, sender, missing)
        since = self._waiting_since.setdefault(key, time.monotonic())
        if time.monotonic() - since < self.gap_timeout:
            return False
        del self._waiting_since[key]
        self.gaps += seq - missing
        log.error("sender %s of run %s: batches %d..%d never came in %.0f s; going on without "
                  "them", sender, run_id, missing, seq - 1, self.gap_timeout)
        return True

    def _commit(self, work: _Round) -> None:
        by_run: dict[str, dict[str, int]] = {}
        for (run_id, sender), seq in work.last.items():
            by_run.setdefault(run_id, {})[sender] = seq
        acks = list(work.now)
        committed = set()
        for run_id in set(by_run) | set(work.acks):
            store = self._stores.get(run_id)
            if store is None:  # abandoned during the round
                work.naks.extend((m, _GAP_DELAYS[-1]) for m in work.acks.get(run_id, []))
                continue
            try:
                if run_id in by_run:
                    store.commit(by_run[run_id])
            except Exception as err:  # not acknowledged: redelivered, written after repair
                self.stats.sink_errors += 1
                log.error("committing run %s failed: %s", run_id, err)
                self._abandon(run_id)
                work.naks.extend((m, _GAP_DELAYS[-1]) for m in work.acks.get(run_id, []))
                continue
            committed.add(run_id)
            acks.extend(work.acks.get(run_id, []))
        if self._on_batches is not None and work.batches:
            self._on_batches([(r, b) for r, b in work.batches if r in committed])
        for (run_id, sender), seq in work.last.items():
            if run_id in committed:
                batches, rows = work.rows.get((run_id, sender), (0, 0))
                self.stats.count(sender, batches=batches, rows=rows)
                self.stats.set_last_seq(sender, seq)
                self._waiting_since = {k: v for k, v in self._waiting_since.items()
                                       if k[:2] != (run_id, sender) or k[2] > seq}
        try:
            self.link.call(self._answer(acks, work.naks), timeout=10.0)
        except Exception as err:  # not acknowledged: redelivered later, kept once
            log.warning("acknowledging to %s failed: %s", self.target.display, err)

    def _abandon(self, run_id: str, work: _Round | None = None) -> None:
        store = self._stores.pop(run_id, None)
        self._heard.pop(run_id, None)
        if store is not None:
            store.abandon()
        if work is not None:
            for key in [k for k in work.last if k[0] == run_id]:
                del work.last[key]
                work.rows.pop(key, None)
            work.naks.extend((m, _GAP_DELAYS[-1]) for m in work.acks.pop(run_id, []))
            work.batches = [(r, b) for r, b in work.batches if r != run_id]

    def _close_idle_runs(self, idle: float) -> None:
        now = time.monotonic()
        for run_id in [r for r in self._stores if now - self._heard.get(r, now) >= idle]:
            self.stats.runs_idle_closed += 1
            self._close_run(run_id, f"{idle:.0f} s without a batch")

    def _close_run(self, run_id: str, why: str) -> None:
        store = self._stores.pop(run_id)
        self._heard.pop(run_id, None)
        try:
            store.close()
        except Exception as err:
            self.stats.sink_errors += 1
            log.error("closing run %s (%s) failed: %s", run_id, why, err)
            store.abandon()
        else:
            log.info("run %s closed: %s", run_id, why)


def _name(headers: dict[str, str], key: str) -> str:
    """A run or sender name, safe as a directory name (the ZMQ collector's rule)."""
    return Header(Kind.BATCH, {key: headers.get(key)}).name(key)


def _integer(headers: dict[str, str], key: str) -> int:
    value = headers.get(key, "")
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise ProtocolViolation(f"header {key!r} must be a sequence number, got "
                                f"{value[:40]!r}")
    return int(value)
