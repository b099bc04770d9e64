"""Per-sink delivery: batches reach a sink in order, and a sink that is down loses nothing."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from relayrl_gym.errors import SinkError
from relayrl_gym.sinks.arrow import ArrowSink

if TYPE_CHECKING:
    from collections.abc import Callable

    from relayrl_gym.sinks.base import Sink

__all__ = ["DEFAULT_BACKLOG_BYTES", "SinkDelivery"]

log = logging.getLogger(__name__)

#: Bytes of batches a failing sink may hold in memory before they spill to a local Arrow file:
#: none, so that what a crash during an outage can lose is no more than at any other time.
DEFAULT_BACKLOG_BYTES = 0

#: While a sink catches up, every batch that joins its backlog lets it deliver this many times
#: its rows from the backlog's head: the backlog shrinks even when the writer is never idle.
CATCH_UP = 2
#: Memory a failing sink's backlog may hold while it cannot spill either (a full disk): past
#: it the newest batches are dropped, counted, and said at the next step.
MAX_UNSPILLED_BYTES = 64 * 1024 * 1024


class SinkDelivery:
    """Hands batches to one sink in order; keeps what the sink refuses and retries it.

    While the sink works, ``offer`` is a plain ``sink.write``. Once a write fails, that batch
    and every later one wait in a backlog (batches never overtake each other), written as they
    come to Arrow files under ``spill_dir`` (a crash loses none of them; ``max_backlog_bytes``
    lets the newest wait in memory instead, and memory holds them when the spill cannot be
    written). ``retry`` tries again with exponential backoff (``retry_initial`` doubling up to
    ``retry_max`` seconds), within a time ``budget`` if given, and deletes spill files once
    their batches are delivered. While the sink catches up, each ``offer`` also delivers up to
    `CATCH_UP` times its rows from the head of the backlog, so the backlog shrinks a little at
    a time instead of holding the caller up for the whole of it. At ``close`` whatever is still
    undelivered is in the spill directory, which `relayrl_gym.load` reads as a run.

    >>> import pyarrow as pa, tempfile
    >>> from relayrl_gym.sinks.arrow import ArrowSink
    >>> sink = ArrowSink(tempfile.mkdtemp())
    >>> sink.start("run", pa.schema([("x", pa.int64())]))
    >>> delivery = SinkDelivery(sink, "run", sink.run_path.parent / "spill")
    >>> delivery.offer(pa.record_batch([pa.array([1, 2])], names=["x"]))
    >>> delivery.rows_delivered, delivery.rows_waiting
    (2, 0)
    """

    def __init__(self, sink: Sink, run_id: str, spill_dir: str | os.PathLike[str], *,
                 max_backlog_bytes: int = DEFAULT_BACKLOG_BYTES, retry_initial: float = 0.5,
                 retry_max: float = 30.0) -> None:
        """Wraps ``sink``.

        Args:
            sink: a started sink.
            run_id: the run (names the spill files' run directory).
            spill_dir: where the backlog is written; created only when needed.
            max_backlog_bytes: memory the backlog may hold before it spills to disk (0: none).
            retry_initial: seconds before the first retry after a failure.
            retry_max: the longest wait between retries.
        """
        self.sink = sink
        self.run_id = run_id
        self.spill_dir = Path(spill_dir)
        self.max_backlog_bytes = int(max_backlog_bytes)
        self.retry_initial = float(retry_initial)
        self.retry_max = float(retry_max)
        self.rows_delivered = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self.spill_error: BaseException | None = None
        #: Rows dropped because the sink failed, the spill failed and memory was full.
        self.rows_dropped = 0
        self._memory: collections.deque[pa.RecordBatch] = collections.deque()
        self._memory_bytes = 0
        self._memory_rows = 0
        self._spill: ArrowSink | None = None
        self._spill_files: list[Path] = []  # complete spill files, oldest first
        self._spill_taken = 0  # how many of the spill sink's files_written are in _spill_files
        self._spill_pos = 0  # batches of _spill_files[0] already delivered
        self._spill_rows = 0
        self._delay = self.retry_initial
        self._next_retry = 0.0

    @property
    def rows_waiting(self) -> int:
        """Rows refused by the sink so far and not yet delivered."""
        return self._memory_rows + self._spill_rows

    @property
    def retry_at(self) -> float:
        """``time.monotonic()`` from which `retry` will try again (infinity: nothing waits)."""
        return self._next_retry if self.rows_waiting else float("inf")

    @property
    def due(self) -> bool:
        """Rows wait and the backoff allows another try now."""
        return time.monotonic() >= self.retry_at

    @property
    def spill_path(self) -> Path:
        """The run directory of the spill files (exists only once something spilled)."""
        return self.spill_dir / self.run_id

    @property
    def trouble(self) -> str:
        """What a failing sink whose backlog cannot spill costs, in words."""
        return (f"sink {self.sink!r} is failing ({self.last_error}) and its backlog cannot be "
                f"spilled to {str(self.spill_dir)!r} ({self.spill_error}): {self._memory_rows} "
                f"rows are held in memory (at most {MAX_UNSPILLED_BYTES >> 20} MiB) and "
                f"{self.rows_dropped} were dropped. Free space there, or record with "
                "spill_dir= on another disk")

    def offer(self, batch: pa.RecordBatch) -> None:
        """Writes ``batch`` now, or queues it behind earlier undelivered batches (and, if the
        backoff allows, delivers some of those)."""
        if not self.rows_waiting:
            try:
                self.sink.write(batch)
            except Exception as err:
                self._failed(err, batch.num_rows)
            else:
                self.rows_delivered += batch.num_rows
                return
            self._keep(batch)
            return
        self._keep(batch)
        if self.due:
            self._try(rows=CATCH_UP * batch.num_rows)

    def retry(self, *, force: bool = False, budget: float | None = None) -> bool:
        """Delivers waiting batches, oldest first, if the backoff allows (always if ``force``);
        past ``budget`` seconds it stops after the batch it is writing (the rest goes on at the
        next call, with no backoff). Returns True when nothing is left waiting.
        """
        if not self.rows_waiting:
            return True
        if not force and time.monotonic() < self._next_retry:
            return False
        deadline = None if budget is None else time.monotonic() + max(budget, 0.0)
        return self._try(deadline=deadline)

    def close(self) -> None:
        """Moves what is still waiting to the spill files; raises `SinkError` saying where."""
        waiting = self.rows_waiting
        if not waiting:
            if self._spill is not None:  # everything spilled was delivered: leave no trace
                self._spill.close()
                shutil.rmtree(self.spill_path, ignore_errors=True)
                with contextlib.suppress(OSError):
                    self.spill_dir.rmdir()
                    if self.spill_dir.parent.name == "_spill":  # the default root, not the user's
                        self.spill_dir.parent.rmdir()
                self._spill = None
            return
        self._drop_delivered_spill()
        try:
            while self._memory:
                self._to_spill(self._memory[0])
                self._pop_memory()
        except (SinkError, OSError) as err:
            raise SinkError(
                f"{waiting} recorded rows could not be written to {self.sink!r} (last error: "
                f"{self.last_error}) and {self._memory_rows} of them could not be spilled to "
                f"{str(self.spill_dir)!r} either ({err}); they are lost") from err
        if self._spill is not None:
            self._spill.close()
        raise SinkError(
            f"{waiting} recorded rows could not be written to {self.sink!r} ({self.failures} "
            f"failed attempts; last error: {self.last_error}). They are kept in "
            f"{str(self.spill_path)!r}: read them with relayrl_gym.load() on that directory, "
            f"or send them to the sink once it is back with `relayrl-gym resend "
            f"{shlex.quote(str(self.spill_path))} --to SINK_URL`")

    def _drop_delivered_spill(self) -> None:
        """Rewrites the spill file a retry stopped in the middle of without the batches the
        sink already has, so the spill holds exactly the undelivered rows."""
        if not self._spill_pos or not self._spill_files:
            return
        path = self._spill_files[0]
        temp = path.with_name(path.name + ".rewrite")
        with pa.ipc.open_file(pa.memory_map(str(path))) as reader, \
                pa.OSFile(str(temp), "wb") as out, \
                pa.ipc.new_file(out, reader.schema) as writer:
            for i in range(self._spill_pos, reader.num_record_batches):
                writer.write_batch(reader.get_batch(i))
        os.replace(temp, path)
        self._spill_pos = 0

    # -- internals -------------------------------------------------------------------------
    def _try(self, *, deadline: float | None = None, rows: int | None = None) -> bool:
        """Delivers from the head of the backlog until it is empty, ``deadline`` passes or
        ``rows`` rows are delivered; True when it is empty."""
        before = self.rows_delivered
        try:
            done = self._drain(deadline, rows)
        except Exception as err:
            if self.rows_delivered > before:  # it worked for a while: back off from the start
                self._delay = self.retry_initial
            self._failed(err, 0)
            return False
        self._delay = self.retry_initial
        self._next_retry = 0.0  # it works: the rest may follow at once
        if done:
            log.info("sink %r is back: every waiting batch delivered", self.sink)
        return done

    def _failed(self, err: BaseException, rows: int) -> None:
        self.failures += 1
        self.last_error = err
        self._next_retry = time.monotonic() + self._delay
        log.warning("writing to sink %r failed (%s); %d rows waiting, next retry in %.1f s",
                    self.sink, err, self.rows_waiting + rows, self._delay)
        self._delay = min(self._delay * 2, self.retry_max)

    def _keep(self, batch: pa.RecordBatch) -> None:
        # The spill holds the oldest waiting batches, memory the newest: past the bound, the
        # oldest in memory move to the end of the spill, so order is kept on both sides.
        batch = _own_buffers(batch)
        self._memory.append(batch)
        self._memory_bytes += batch.nbytes
        self._memory_rows += batch.num_rows
        while self._memory_bytes > self.max_backlog_bytes and self._memory:
            try:
                self._to_spill(self._memory[0])  # written first, then let go of: never lost
            except (SinkError, OSError) as err:
                if self.spill_error is None:
                    log.error("cannot spill the backlog of sink %r (%s); keeping it in memory",
                              self.sink, err)
                self.spill_error = err
                if self._memory_bytes > MAX_UNSPILLED_BYTES:  # bounded: the newest go
                    dropped = self._memory.pop()
                    self._memory_bytes -= dropped.nbytes
                    self._memory_rows -= dropped.num_rows
                    self.rows_dropped += dropped.num_rows
                return
            self.spill_error = None
            self._pop_memory()

    def _pop_memory(self) -> pa.RecordBatch:
        batch = self._memory.popleft()
        self._memory_bytes -= batch.nbytes
        self._memory_rows -= batch.num_rows
        return batch

    def _to_spill(self, batch: pa.RecordBatch) -> None:
        if self._spill is None:
            # Batches kept as they came (the layout they were built in), for the sink later.
            self._spill = ArrowSink(self.spill_dir, compression="lz4", obs_layout="pairs")
            try:
                self._spill.start(self.run_id, batch.schema)
            except SinkError as err:
                self._spill = None
                raise SinkError(f"sink {self.sink!r} is failing and its backlog cannot spill "
                                f"to {str(self.spill_dir)!r}: {err}") from err
            log.warning("sink %r is failing: its batches wait in %s until it is back",
                        self.sink, self.spill_path)
        self._spill.write(batch)
        self._spill_rows += batch.num_rows

    def _drain(self, deadline: float | None, rows: int | None) -> bool:
        start = self.rows_delivered

        def enough() -> bool:  # at least one batch a call: every call makes progress
            delivered = self.rows_delivered - start
            return delivered > 0 and ((deadline is not None and time.monotonic() >= deadline)
                                      or (rows is not None and delivered >= rows))

        while self._spill_rows:
            if not self._spill_files:
                self._take_spill_file()
            if not self._spill_files:
                raise SinkError(f"{self._spill_rows} spilled rows are missing from "
                                f"{str(self.spill_path)!r}")
            if self._drain_spill_file(enough):
                return False
        while self._memory:
            if enough():
                return False
            batch = self._memory[0]
            self.sink.write(batch)
            self._pop_memory()
            self.rows_delivered += batch.num_rows
        return True

    def _take_spill_file(self) -> None:
        """Completes the spill file being written (batches that come later start a new one)
        and queues it for delivery after the complete ones."""
        assert self._spill is not None
        self._spill.close()
        self._spill_files.extend(self._spill.files_written[self._spill_taken:])
        self._spill_taken = len(self._spill.files_written)

    def _drain_spill_file(self, enough: Callable[[], bool]) -> bool:
        """Delivers the oldest spill file from where the last call stopped; deletes it once
        delivered. True if ``enough()`` said to stop first."""
        path = self._spill_files[0]
        with pa.ipc.open_file(pa.memory_map(str(path))) as reader:
            for i in range(self._spill_pos, reader.num_record_batches):
                if enough():
                    return True
                batch = reader.get_batch(i)
                self.sink.write(batch)
                self._spill_pos = i + 1
                self._spill_rows -= batch.num_rows
                self.rows_delivered += batch.num_rows
        path.unlink()
        self._spill_files.pop(0)
        self._spill_pos = 0
        return False


def _own_buffers(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch``, copied when it is a slice of a larger one (a block cut around dropped rows):
    a slice keeps the whole block's buffers alive, so the backlog's bound, which counts the
    rows it holds, would not bound its memory."""
    if batch.get_total_buffer_size() <= 2 * batch.nbytes + 4096:
        return batch
    return pa.RecordBatch.from_arrays([pa.concat_arrays([column]) for column in batch.columns],
                                      schema=batch.schema)
