"""The background writer: turns column buffers into Arrow batches and hands them to the sinks."""

from __future__ import annotations

import atexit
import enum
import logging
import queue
import threading
import time
import weakref
from typing import TYPE_CHECKING

from relayrl_gym.errors import SinkError

if TYPE_CHECKING:
    import pyarrow as pa

    from relayrl_gym.recording.buffer import StepBlock
    from relayrl_gym.recording.recorder import Recorder
    from relayrl_gym.sinks.base import Sink

__all__ = ["BackgroundWriter"]

log = logging.getLogger(__name__)

_LIVE: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


class _Command(enum.Enum):
    FLUSH = "flush"
    STOP = "stop"


class BackgroundWriter:
    """One thread per run that writes recorded batches to every sink, by size and by time.

    Guarantees: rows handed over are written in order; every ``flush_interval`` seconds the rows
    recorded so far are written and the sinks flushed (a crash loses at most that interval);
    ``close()`` and interpreter exit write everything. A sink that fails keeps its batches in a
    retry list (retried at every flush) instead of dropping them; ``close()`` raises `SinkError`
    saying how many rows could not be delivered.
    """

    def __init__(self, sinks: list[Sink], flush_interval: float = 1.0, max_queue: int = 8,
                 name: str = "relayrl-writer") -> None:
        """Starts the writer thread.

        Args:
            sinks: where batches go; each gets every batch.
            flush_interval: seconds between time-based flushes.
            max_queue: full buffers waiting to be written before ``submit`` blocks (backpressure
                that keeps memory bounded).
            name: thread name.
        """
        self.sinks = list(sinks)
        self.flush_interval = float(flush_interval)
        self._queue: queue.Queue[tuple[Recorder, StepBlock] | tuple[_Command, threading.Event]]
        self._queue = queue.Queue(maxsize=max_queue)
        self._recorders: list[Recorder] = []
        self._pending: list[tuple[Sink, pa.RecordBatch]] = []
        self._deferred: list[tuple[_Command, threading.Event]] = []
        self.rows_written = 0
        self.errors = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _LIVE.add(self)

    def attach(self, recorder: Recorder) -> None:
        self._recorders.append(recorder)

    def detach(self, recorder: Recorder) -> None:
        if recorder in self._recorders:
            self._recorders.remove(recorder)

    def submit(self, recorder: Recorder, buf: StepBlock) -> None:
        """Queues a full buffer; blocks while ``max_queue`` buffers are already waiting."""
        self._queue.put((recorder, buf))

    def flush(self, timeout: float | None = 60.0) -> None:
        """Writes every row recorded so far to the sinks and flushes them; waits for it."""
        if self._closed or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put((_Command.FLUSH, done))
        if not done.wait(timeout):
            raise SinkError(f"flushing the sinks took longer than {timeout} s")

    def close(self, timeout: float = 60.0) -> None:
        """Writes everything, stops the thread and closes the sinks. Idempotent."""
        if self._closed:
            return
        if self._thread.is_alive():
            done = threading.Event()
            self._queue.put((_Command.STOP, done))
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise SinkError(f"the writer thread did not stop within {timeout} s")
        self._closed = True
        _LIVE.discard(self)
        undelivered = sum(batch.num_rows for _, batch in self._pending)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:
                log.exception("closing sink %r failed", sink)
                raise SinkError(f"closing sink {sink!r} failed: {err}") from err
        if undelivered:
            raise SinkError(f"{undelivered} recorded rows could not be written to their sink "
                            f"after retries ({self.errors} write errors); see the log")

    # -- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval
        while True:
            try:
                item = (self._deferred.pop(0) if self._deferred else
                        self._queue.get(timeout=max(0.0, next_flush - time.monotonic())))
            except queue.Empty:
                item = None
            try:
                if item is None:
                    self._flush_all()
                    next_flush = time.monotonic() + self.flush_interval
                elif item[0] is _Command.FLUSH:
                    self._flush_all()
                    item[1].set()
                elif item[0] is _Command.STOP:
                    try:
                        self._flush_all()
                    finally:
                        item[1].set()
                    return
                else:
                    recorder, buf = item
                    self._write(recorder.to_record_batch(buf))
            except Exception:  # never let the writer die silently: log, count, go on
                self.errors += 1
                log.exception("relayrl-gym writer failed to handle %r", item)
                if item is not None and isinstance(item[1], threading.Event):
                    item[1].set()
                    if item[0] is _Command.STOP:
                        return

    def _flush_all(self) -> None:
        # Buffers already queued are older than the partial ones: write them first, in order.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item[0], _Command):
                self._deferred.append(item)  # the main loop handles it next
                continue
            recorder, buf = item
            self._write(recorder.to_record_batch(buf))
        for recorder in list(self._recorders):
            partial = recorder.take_partial()
            if partial is not None:
                self._write(recorder.to_record_batch(partial))
        self._retry_pending()
        for sink in self.sinks:
            try:
                sink.flush()
            except Exception:
                self.errors += 1
                log.exception("flushing sink %r failed", sink)

    def _write(self, batch: pa.RecordBatch) -> None:
        for sink in self.sinks:
            try:
                sink.write(batch)
            except Exception:
                self.errors += 1
                log.exception("writing %d rows to sink %r failed; will retry", batch.num_rows, sink)
                self._pending.append((sink, batch))
        self.rows_written += batch.num_rows

    def _retry_pending(self) -> None:
        pending, self._pending = self._pending, []
        for sink, batch in pending:
            try:
                sink.write(batch)
            except Exception:
                self.errors += 1
                self._pending.append((sink, batch))


@atexit.register
def _close_live_writers() -> None:
    for writer in list(_LIVE):
        try:
            writer.close(timeout=10.0)
        except Exception:
            log.exception("closing a relayrl-gym writer at exit failed")
