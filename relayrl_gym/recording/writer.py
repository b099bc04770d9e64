"""The background writer: turns column buffers into Arrow batches and hands them to the sinks."""

from __future__ import annotations

import enum
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from relayrl_gym.errors import SinkError
from relayrl_gym.lifecycle import close_at_exit, forget_at_exit
from relayrl_gym.recording.delivery import DEFAULT_BACKLOG_BYTES, SinkDelivery
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT

if TYPE_CHECKING:
    from collections.abc import Callable

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

    Guarantees: rows reach each sink in the order they were recorded; every ``flush_interval``
    seconds the rows recorded so far are written and the sinks flushed (a crash loses at most
    that interval); ``close()`` and interpreter exit write everything. A sink that fails does not
    stop the others or the env: its batches wait (in memory, then spilled to local Arrow files
    under ``spill_dir``) and are retried with backoff (see `SinkDelivery`). ``flush()`` and
    ``close()`` raise `SinkError` when rows could not be delivered, saying where they are.
    """

    def __init__(self, sinks: list[Sink], flush_interval: float = 1.0, max_queue: int = 8,
                 name: str = "relayrl-writer", *, run_id: str = "run",
                 spill_dir: str | os.PathLike[str] | None = None,
                 max_backlog_bytes: int = DEFAULT_BACKLOG_BYTES, close_retry: float = 5.0) -> None:
        """Starts the writer thread.

        Args:
            sinks: where batches go; each gets every batch.
            flush_interval: seconds between time-based flushes.
            max_queue: full buffers waiting to be written before ``submit`` blocks (backpressure
                that keeps memory bounded).
            name: thread name.
            run_id: the run being written (names spill files).
            spill_dir: where batches a failing sink cannot take spill past
                ``max_backlog_bytes``, one folder per sink (default: ``_spill`` in the first
                Arrow sink's directory, else ``relayrl_runs/_spill``).
            max_backlog_bytes: memory each failing sink's backlog may use before spilling.
            close_retry: seconds ``close()`` keeps retrying a failing sink before giving up.
        """
        self.sinks = list(sinks)
        self.flush_interval = float(flush_interval)
        self.close_retry = float(close_retry)
        spill_root = Path(spill_dir) if spill_dir is not None else _default_spill_root(sinks)
        self.deliveries = [
            SinkDelivery(sink, run_id, spill_root / f"sink{i}-{type(sink).__name__}",
                         max_backlog_bytes=max_backlog_bytes)
            for i, sink in enumerate(self.sinks)]
        self._queue: queue.Queue[_Block | _Request] = queue.Queue(maxsize=max_queue)
        self._recorders: list[Recorder] = []
        self._deferred: list[_Request] = []
        self.rows_written = 0
        self.rows_lost = 0
        self._conversion_errors = 0
        self._unreported: BaseException | None = None
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

    def attach(self, recorder: Recorder) -> None:
        self._recorders.append(recorder)

    def detach(self, recorder: Recorder) -> None:
        if recorder in self._recorders:
            self._recorders.remove(recorder)

    def follow_models(self, update: Callable[[str], int]) -> None:
        """Lets every sink that receives published models (the ZMQ sink) hot-swap through
        ``update``."""
        for sink in self.sinks:
            sink.follow_models(update)

    def submit(self, recorder: Recorder, buf: StepBlock) -> None:
        """Queues a full buffer; blocks while ``max_queue`` buffers are already waiting."""
        self._queue.put(_Block(recorder, buf))

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
        self._queue.put(_Request(_Command.FLUSH, done))
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
            done = threading.Event()
            self._queue.put(_Request(_Command.STOP, done))
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

    def _raise_unreported(self) -> None:
        err, self._unreported = self._unreported, None
        if err is not None:
            raise SinkError(self._conversion_problem(err)) from err

    def _conversion_problem(self, err: BaseException | None) -> str:
        return f"{self.rows_lost} recorded rows could not be converted to Arrow batches: {err}"

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
                elif item is not None:
                    self._write(item.recorder, item.buf)
                # A steady stream of full blocks must not postpone the time-based flush.
                if time.monotonic() >= next_flush:
                    self._flush_all()
                    next_flush = time.monotonic() + self.flush_interval
            except Exception:  # never let the writer die silently: log, go on
                log.exception("relayrl-gym writer failed to handle %r", item)
                if isinstance(item, _Request):
                    item.done.set()
                    if item.command is _Command.STOP:
                        return

    def _flush_all(self, force_retry: bool = False) -> None:
        # Take the partial blocks first: every full block recorded before them is then already
        # queued. Writing all of them in creation order keeps each recorder's rows in order.
        partials = [(rec, rec.take_partial()) for rec in list(self._recorders)]
        blocks = [_Block(rec, buf) for rec, buf in partials if buf is not None]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Request):
                self._deferred.append(item)  # handled next by the main loop
                continue
            blocks.append(item)
        blocks.sort(key=lambda block: block.buf.seq)
        for recorder, buf in blocks:
            self._write(recorder, buf)
        for delivery in self.deliveries:
            delivery.retry(force=force_retry)
            if not delivery.rows_waiting:
                try:
                    delivery.sink.flush()
                except Exception as err:
                    delivery.failures += 1
                    log.warning("flushing sink %r failed: %s", delivery.sink, err)

    def _retry_until(self, deadline: float) -> None:
        for delivery in self.deliveries:
            while not delivery.retry(force=True) and time.monotonic() < deadline:
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _write(self, recorder: Recorder, buf: StepBlock) -> None:
        try:
            batch = recorder.to_record_batch(buf)
        except Exception as err:
            self._conversion_errors += 1
            self.rows_lost += buf.n
            self._unreported = self._unreported or err
            log.exception("building an Arrow batch of %d recorded rows failed", buf.n)
            return
        for delivery in self.deliveries:
            try:  # one sink's trouble never keeps a batch from the others
                delivery.offer(batch)
            except Exception:
                log.exception("handing %d rows to sink %r failed", batch.num_rows,
                              delivery.sink)
        self.rows_written += batch.num_rows


def _default_spill_root(sinks: list[Sink]) -> Path:
    from relayrl_gym.sinks.arrow import ArrowSink

    for sink in sinks:
        if isinstance(sink, ArrowSink):
            return sink.root / "_spill"
    return Path(DEFAULT_SINK_ROOT, "_spill")


def _close_at_exit(writer: BackgroundWriter) -> None:
    writer.close(timeout=10.0)
