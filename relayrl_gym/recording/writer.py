"""The background writer: turns column buffers into Arrow batches and hands them to the sinks."""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from relayrl_gym.errors import SinkError
from relayrl_gym.lifecycle import close_at_exit, forget_at_exit
from relayrl_gym.recording.delivery import DEFAULT_BACKLOG_BYTES, SinkDelivery
from relayrl_gym.recording.pacing import WritePace
from relayrl_gym.sinks.arrow import ArrowSink
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT

if TYPE_CHECKING:

    from relayrl_gym.recording.buffer import StepBlock
    from relayrl_gym.recording.recorder import Recorder
    from relayrl_gym.sinks.base import Sink

__all__ = ["BackgroundWriter"]

log = logging.getLogger(__name__)

class _Command(enum.Enum):
    FLUSH = "flush"
    STOP = "stop"


class _Request(NamedTuple):
    command: _Command
    done: threading.Event


class _Block(NamedTuple):
    recorder: Recorder
    buf: StepBlock


class BackgroundWriter:
    """One thread per run that writes recorded batches to every sink, by size and by time.

    Guarantees: rows reach each sink in the order they were recorded; a row reaches every sink
    (or a failing sink's spill file) within about ``flush_interval`` seconds of being recorded,
    so a crash loses at most that interval. A sink too slow for that slows the stepping thread
    instead (``submit`` waits: back-pressure by time, see `WritePace`), which also bounds the
    memory the queue holds. A sink that fails does not stop the others or the env: its batches
    go to local Arrow files under ``spill_dir`` as they come and are retried with backoff, then
    caught up with a little at a time, so stepping never waits for a whole backlog (see
    `SinkDelivery`). ``close()`` and interpreter exit write everything. ``flush()`` and
    ``close()`` raise `SinkError` when rows could not be delivered, saying where they are.
    """

    def __init__(self, sinks: list[Sink], flush_interval: float = 1.0, max_queue: int = 8,
                 name: str = "relayrl-writer", *, run_id: str = "run",
                 spill_dir: str | os.PathLike[str] | None = None,
                 max_backlog_bytes: int = DEFAULT_BACKLOG_BYTES, close_retry: float = 5.0) -> None:
        """Starts the writer thread.

        Args:
            sinks: where batches go; each gets every batch.
            flush_interval: the most a row waits before it is written (and, when the writer
                has nothing else to do, the seconds between time-based flushes).
            max_queue: full buffers that may wait to be written, whatever their cost (an upper
                bound on the memory the queue holds; time usually bounds it sooner).
            name: thread name.
            run_id: the run being written (names spill files).
            spill_dir: where a failing sink's batches wait, one folder per sink (default:
                ``_spill`` in the first Arrow sink's directory, else ``relayrl_runs/_spill``).
            max_backlog_bytes: memory each failing sink's backlog may use before it spills
                (0, the default, spills at once: a crash during an outage loses no more).
            close_retry: seconds ``close()`` keeps retrying a failing sink before giving up.
        """
        self.sinks = list(sinks)
        self.flush_interval = float(flush_interval)
        self.max_queue = int(max_queue)
        self.close_retry = float(close_retry)
        spill_root = Path(spill_dir) if spill_dir is not None else _default_spill_root(sinks)
        self.deliveries = [
            SinkDelivery(sink, run_id, spill_root / f"sink{i}-{type(sink).__name__}",
                         max_backlog_bytes=max_backlog_bytes)
            for i, sink in enumerate(self.sinks)]
        self._pace = WritePace(self.flush_interval)
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._items: collections.deque[_Block | _Request] = collections.deque()
        self._queued_blocks = 0
        self._queued_rows = 0
        #: Some thread works with the sinks (the writer on an item or a flush, or a recording
        #: thread writing a block itself: see `write_now`); held with ``_lock``.
        self._busy = False
        self._free = threading.Condition(self._lock)
        #: Whether full blocks may be written by the thread that recorded them (every sink is
        #: local and quick: see `Sink.writes_inline`).
        self.inline = all(sink.writes_inline for sink in self.sinks)
        self._recorders: list[Recorder] = []
        self.rows_written = 0
        self.rows_lost = 0
        self._conversion_errors = 0
        self._unreported: BaseException | None = None
        #: Storage trouble the stepping thread has not raised yet (see `take_alarm`).
        self.alarm: SinkError | None = None
        self._told: dict[int, int] = {}
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._exit_key = close_at_exit(self, _close_at_exit)

    @property
    def errors(self) -> int:
        """Failed sink writes plus batches that could not be built, so far."""
        return self._conversion_errors + sum(d.failures for d in self.deliveries)

    @property
    def rows_waiting(self) -> int:
        """Rows some sink has not accepted yet (they wait for a retry)."""
        return sum(d.rows_waiting for d in self.deliveries)

    @property
    def rows_queued(self) -> int:
        """Rows of full buffers handed to the writer and not yet taken up by it."""
        return self._queued_rows

    def attach(self, recorder: Recorder) -> None:
        self._recorders.append(recorder)

    def detach(self, recorder: Recorder) -> None:
        if recorder in self._recorders:
            self._recorders.remove(recorder)

    def submit(self, recorder: Recorder, buf: StepBlock) -> None:
        """Queues a full buffer. Waits (back-pressure) while the writer is too far behind for
        the rows recorded next to reach the sinks within ``flush_interval``, or while
        ``max_queue`` buffers wait; never once the queue is empty or the writer stops."""
        with self._lock:
            if self._closed or not self._thread.is_alive():
                log.warning("%d rows recorded after the writer was closed are not written",
                            buf.n)
                return
            self._items.append(_Block(recorder, buf))
            self._queued_blocks += 1
            self._queued_rows += buf.n
            self._has_work.notify()
            while self._queued_blocks and (
                    self._queued_blocks > self.max_queue
                    or self._pace.must_wait(self._queued_rows, buf.n, time.monotonic())):
                if self._stopping or not self._thread.is_alive() or sys.is_finalizing():
                    return
                self._has_room.wait(0.05)  # woken when a block is done; the timeout re-checks

    def write_now(self, recorder: Recorder, buf: StepBlock) -> bool:
        """Writes a full, built block on the calling thread (the one that recorded it) when
        nothing is ahead of it (no block queued, no backlog, nobody else at the sinks), else
        queues it with `submit`; True when it was written here. Whatever is raised (a Ctrl-C
        included), the block is written or queued, and the sinks are not left claimed.

        For local sinks this is cheaper than the writer thread: the write is a few calls that
        let the GIL go, while a second thread waiting for the GIL at every one of them costs
        the recording thread several times the work (seen on loops that release the GIL every
        step, such as ``action_space.sample()``).
        """
        claimed = written = False
        try:
            with _ctrl_c_deferred():  # a block is written whole, or left to the writer
                try:
                    with self._lock:
                        if (not self.inline or self._busy or self._items or self._stopping
                                or self._closed or not self._thread.is_alive()
                                or self.rows_waiting):
                            return False
                        self._busy = claimed = True  # no check for signals between the two
                    started = time.monotonic()
                    self._write(recorder, buf)
                    written = True
                    with self._lock:
                        self._pace.finished(buf.n,
                                            time.monotonic() - started + buf.build_seconds)
                finally:
                    if claimed:
                        with self._lock:
                            self._busy = False
                            self._free.notify_all()
        finally:
            if not written and not buf.offered:  # not claimed, or stopped before any sink
                self.submit(recorder, buf)
        return written

    def flush(self, timeout: float | None = 60.0) -> None:
        """Writes every row recorded so far to the sinks, flushes them, and waits for it.

        Rows a failing sink refuses are not an error here: they wait (``rows_waiting``) and
        are retried, so a database restart does not stop a training loop that flushes.

        Raises:
            SinkError: recorded rows could not be built into Arrow batches.
        """
        if self._closed or not self._thread.is_alive():
            return
        done = threading.Event()
        self._request(_Request(_Command.FLUSH, done))
        if not done.wait(timeout):
            raise SinkError(f"flushing the sinks took longer than {timeout} s")
        self._raise_unreported()

    def close(self, timeout: float = 60.0) -> None:
        """Writes everything, stops the thread and closes the sinks. Idempotent.

        Raises:
            SinkError: rows could not be delivered to some sink (the message says where they
                were spilled) or a sink failed to close; every sink is closed regardless.
        """
        if self._closed:
            return
        if self._thread.is_alive():
            self._request(_Request(_Command.STOP, threading.Event()))
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise SinkError(f"the writer thread did not stop within {timeout} s")
        self._closed = True
        forget_at_exit(self._exit_key)
        problems: list[str] = []
        first: BaseException | None = None
        for delivery in self.deliveries:
            for step in (delivery.close, delivery.sink.close):
                try:
                    step()
                except Exception as err:
                    log.error("closing sink %r: %s", delivery.sink, err)
                    problems.append(str(err))
                    first = first or err
        if self._unreported is not None or self.rows_lost:
            problems.insert(0, self._conversion_problem(self._unreported))
            first = first or self._unreported
        if problems:
            raise SinkError("; ".join(problems)) from first

    def _request(self, request: _Request) -> None:
        with self._lock:
            if request.command is _Command.STOP:
                self._stopping = True
                self._has_room.notify_all()
            self._items.append(request)
            self._has_work.notify()

    def _raise_unreported(self) -> None:
        err, self._unreported = self._unreported, None
        if err is not None:
            raise SinkError(self._conversion_problem(err)) from err

    def _conversion_problem(self, err: BaseException | None) -> str:
        return f"{self.rows_lost} recorded rows could not be converted to Arrow batches: {err}"

    # -- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        next_flush = time.monotonic() + self._pace.tick()
        follow_up = math.inf  # when to take what the recorders asked back did not hand over
        while True:
            item = self._next(min(next_flush, follow_up))
            try:
                if isinstance(item, _Request) and item.command is _Command.STOP:
                    try:
                        self._flush_all()
                        self._retry_until(time.monotonic() + self.close_retry)
                    finally:
                        item.done.set()
                    return
                if isinstance(item, _Request):
                    self._flush_all(force_retry=True)
                    item.done.set()
                elif isinstance(item, _Block):
                    self._write_queued(item)
                elif time.monotonic() < min(next_flush, follow_up):
                    self._catch_up_while_idle()
                # A steady stream of full blocks must not postpone the time-based flush.
                now = time.monotonic()
                if now >= follow_up:
                    follow_up = math.inf
                    self._flush_all(asked_only=True)
                elif now >= next_flush:  # the recorders hand over their rows themselves...
                    if self._flush_all(ask=True):  # ...or the follow-up takes them
                        follow_up = time.monotonic() + self._pace.slice
                    next_flush = time.monotonic() + self._pace.tick()
            except Exception:  # never let the writer die silently: log, go on
                log.exception("relayrl-gym writer failed to handle %r", item)
                if isinstance(item, _Request):
                    item.done.set()
                    if item.command is _Command.STOP:
                        return
            finally:
                self._done()

    def _next(self, deadline: float) -> _Block | _Request | None:
        """The next queued item, waiting for one until ``deadline``; None at the deadline, or
        at once when a failing sink may be retried (that work fills the idle time)."""
        with self._lock:
            while True:
                while self._busy and not sys.is_finalizing():  # a recording thread writes
                    self._free.wait(0.05)                          # a block: it comes first
                if self._items:
                    break
                now = time.monotonic()
                wake = min([deadline, *(d.retry_at for d in self.deliveries)])
                if wake <= now:
                    self._busy = True
                    return None
                self._has_work.wait(wake - now)
            self._busy = True
            item = self._items.popleft()
            if isinstance(item, _Block):
                self._queued_blocks -= 1
                self._queued_rows -= item.buf.n
                self._pace.began(item.buf.n, time.monotonic())
            return item

    def _done(self) -> None:
        with self._lock:
            self._pace.finished(0, 0.0)
            self._busy = False
            self._free.notify_all()
            self._has_room.notify_all()

    def _write_queued(self, block: _Block) -> None:
        started = time.monotonic()
        self._write(block.recorder, block.buf)
        with self._lock:
            self._pace.finished(block.buf.n,
                                time.monotonic() - started + block.buf.build_seconds)

    def _catch_up_while_idle(self) -> None:
        """One slice of a failing sink's backlog, while nothing else waits."""
        with self._lock:
            self._pace.began(0, time.monotonic(), expected=self._pace.slice)
        for delivery in self.deliveries:
            delivery.retry(budget=self._pace.slice)

    def _flush_all(self, force_retry: bool = False, ask: bool = False,
                   asked_only: bool = False) -> bool:
        """Writes the partial blocks and the queued ones, then flushes the sinks. ``ask``:
        asks the recorders for their partial blocks instead (`Recorder.ask_back`), for a
        follow-up (``asked_only``) to take what they did not hand over; returns whether any
        was asked."""
        # Take the partial blocks first: every full block recorded before them is then already
        # queued. Writing all of them in creation order keeps each recorder's rows in order.
        started = time.monotonic()
        recorders = list(self._recorders)
        asked = ask and any([rec.ask_back() for rec in recorders])
        partials = [] if ask else [(rec, rec.take_partial(asked_only)) for rec in recorders]
        blocks = [_Block(rec, buf) for rec, buf in partials if buf is not None]
        partial_ids = {id(block.buf) for block in blocks}
        with self._lock:  # requests stay queued, in order: the main loop handles them next
            queued = [item for item in self._items if isinstance(item, _Block)]
            self._items = collections.deque(
                item for item in self._items if isinstance(item, _Request))
            self._pace.began(self._queued_rows, started)
            self._queued_blocks = self._queued_rows = 0
        blocks.extend(queued)
        blocks.sort(key=lambda block: block.buf.seq)
        queued_cost = 0.0
        for recorder, buf in blocks:
            begun = time.monotonic()
            self._write(recorder, buf)
            if id(buf) not in partial_ids:
                queued_cost += time.monotonic() - begun + buf.build_seconds
        for delivery in self.deliveries:
            delivery.retry(force=force_retry, budget=None if force_retry else self._pace.slice)
            if not delivery.rows_waiting:
                try:
                    delivery.sink.flush()
                except Exception as err:
                    delivery.failures += 1
                    log.warning("flushing sink %r failed: %s", delivery.sink, err)
        with self._lock:
            rows = sum(block.buf.n for block in queued)
            self._pace.finished(rows, queued_cost)
            if not force_retry:
                self._pace.finished_partial(time.monotonic() - started - queued_cost)
        return asked

    def _retry_until(self, deadline: float) -> None:
        start = time.monotonic()
        for delivery in self.deliveries:
            # A sink may ask for longer (a replicated stream electing a new leader).
            until = max(deadline, start + float(getattr(delivery.sink, "close_retry", 0.0)))
            while (not delivery.retry(force=True, budget=until - time.monotonic())
                   and time.monotonic() < until):
                if not delivery.due:  # it failed: wait a little before the next try
                    time.sleep(min(0.5, max(0.0, until - time.monotonic())))

    def _write(self, recorder: Recorder, buf: StepBlock) -> None:
        try:
            batches = recorder.to_record_batches(buf)
            buf.offered = True
        except Exception as err:
            self._conversion_errors += 1
            self.rows_lost += buf.n
            self._unreported = self._unreported or err
            log.exception("building an Arrow batch of %d recorded rows failed", buf.n)
            return
        for batch in batches:
            for delivery in self.deliveries:
                try:  # one sink's trouble never keeps a batch from the others
                    delivery.offer(batch)
                except Exception:
                    log.exception("handing %d rows to sink %r failed", batch.num_rows,
                                  delivery.sink)
                # Said once when the backlog stops spilling and once when rows start to drop;
                # again only after the sink or the spill has recovered.
                level = (delivery.spill_error is not None) + (delivery.rows_dropped > 0)
                if level > self._told.get(id(delivery), 0):
                    self.alarm = SinkError(delivery.trouble)
                self._told[id(delivery)] = level if delivery.spill_error is not None else 0
            self.rows_written += batch.num_rows

    def take_alarm(self) -> SinkError | None:
        """The storage trouble found since the last call (a sink failing and its backlog
        unable to spill: data at risk), for the stepping thread to raise; None when none."""
        alarm, self.alarm = self.alarm, None
        return alarm


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Holds a SIGINT (Ctrl-C) that arrives inside the block until its end, then handles it
    as the handler in place would have: a block written by the recording thread (the main
    thread, which Python's signal handlers run on) is then never half written. Elsewhere, or
    when the handler in place was not set from Python, nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    if handler is None:
        yield
        return
    caught: list[Any] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        if caught:
            if callable(handler):
                handler(signal.SIGINT, caught[0])
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


def _default_spill_root(sinks: list[Sink]) -> Path:
    for sink in sinks:
        if isinstance(sink, ArrowSink):
            return sink.root.absolute() / "_spill"
    return Path(DEFAULT_SINK_ROOT, "_spill").absolute()  # said as a full path in errors


def _close_at_exit(writer: BackgroundWriter) -> None:
    writer.close(timeout=10.0)
