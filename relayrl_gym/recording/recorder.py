"""The stepping side of recording: rows go into column buffers, full buffers go to the writer."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from relayrl_gym.recording.buffer import StepBlock
from relayrl_gym.recording.slab import ObsSlab, ZeroRows
from relayrl_gym.schema.codecs import LeafCodec
from relayrl_gym.storage.obs_layout import stored_schema

if TYPE_CHECKING:
    import pyarrow as pa

    from relayrl_gym.core.transitions import TransitionBatch
    from relayrl_gym.recording.writer import BackgroundWriter
    from relayrl_gym.schema.transitions import TransitionSchema

__all__ = ["Recorder"]

#: Target size of one buffer (and so of one Arrow record batch): a block's build costs a few
#: hundred microseconds whatever its rows, which 8 MiB blocks of images spread over twice the
#: steps of 4 MiB ones (a cheap 84x84x4 image env: 6% faster, ~30 MiB more at its peak).
TARGET_BATCH_BYTES = 8 * 1024 * 1024
MAX_BATCH_ROWS = 8192
MIN_BATCH_ROWS = 16
#: Observations of fewer bytes: full buffers are written by the recording thread if it can.
WRITTEN_HERE_BELOW = 4 * 1024
#: Observations of at least this many bytes: full buffers are built on the writer thread.
WRITER_BUILDS_FROM = 64 * 1024
#: Observations of at least this many bytes are copied into an `ObsSlab` when stepping.
SLAB_ROWS_FROM = 1024
#: In the once layout, a buffer holds at least this many steps of every slot...
STEPS_OF_EVERY_SLOT = 4
#: ...unless that passes this size.
MAX_BATCH_BYTES = 16 * 1024 * 1024


class Recorder:
    """Collects transitions of a fixed set of slots (env copies / actors) into Arrow batches.

    ``record`` is a list append per call, whatever the number of rows. A full buffer is built
    into one Arrow batch on the recording thread (large C-level calls) and handed to the writer
    thread, whose work (encoding, compression, I/O) mostly runs with the GIL released; a buffer
    of large rows (``build_on_writer``) is built by the writer, beside the recording thread.
    Thread-safe: the writer takes partial blocks for its time-based flush under the same lock
    (and builds those itself), with the rows a ``feeder`` holds back for it (a game's rows
    waiting to fill a batch).
    """

    def __init__(
        self,
        schema: TransitionSchema,
        run_id: str,
        actor_ids: list[str],
        agent_ids: list[str] | None = None,
        writer: BackgroundWriter | None = None,
        batch_rows: int | None = None,
        obs_once: bool = False,
    ) -> None:
        """Creates a recorder.

        Args:
            schema: the transition schema of the run.
            run_id: the run every row belongs to.
            actor_ids: actor id of each slot (``env_index`` indexes it).
            agent_ids: PettingZoo agent name of each slot; empty strings for single-agent envs.
            writer: the background writer that receives full buffers.
            batch_rows: rows per buffer; default: as many as fit in ~8 MiB (16..8192).
            obs_once: build batches in the ``once`` observation layout (every sink stores it;
                see `relayrl_gym.storage.obs_layout`).
        """
        self.schema = schema
        self.run_id = run_id
        self.actor_ids = list(actor_ids)
        self.agent_ids = list(agent_ids) if agent_ids is not None else [""] * len(actor_ids)
        # In the once layout most rows store one observation, and a batch is worth it only
        # when it holds several steps of every slot (its last step of each keeps its next obs).
        row_bytes = ((1 if obs_once else 2) * schema.obs.row_bytes + schema.action.row_bytes
                     + 64)
        self.capacity = batch_rows or int(
            np.clip(TARGET_BATCH_BYTES // row_bytes, MIN_BATCH_ROWS, MAX_BATCH_ROWS))
        if obs_once and not batch_rows:
            self.capacity = max(self.capacity, min(STEPS_OF_EVERY_SLOT * len(actor_ids),
                                                   MAX_BATCH_BYTES // row_bytes))
        self._writer = writer
        #: Nanoseconds a block may gather rows before it is handed over, full or not.
        self._max_age = (int(writer.flush_interval * 0.5e9) if writer is not None
                         else 1 << 62)
        #: The schema of the batches built in the ``once`` layout (None: the run's own).
        self._once_schema = stored_schema(schema.arrow) if obs_once else None
        codec = schema.obs
        #: Whether blocks of large observations are cut around dropped rows instead of
        #: filtered: when every sink is a local Arrow directory, for which a few more batches
        #: cost nothing (a database transaction or a message each would).
        self._cut = writer is not None and writer.inline
        #: Zeroed ``next_obs`` rows of the ``once`` layout, reused block after block.
        self._zeros = (ZeroRows(codec.shape, codec.dtype, self.capacity)
                       if obs_once and isinstance(codec, LeafCodec) and codec.shape else None)
        #: Whether full buffers are built on the writer thread: for large rows, where the
        #: build is mostly copies that let the GIL go, and so run beside the stepping thread.
        self.build_on_writer = schema.obs.row_bytes >= WRITER_BUILDS_FROM
        #: Whether full buffers are written by the recording thread itself when the writer has
        #: nothing ahead of them (see `BackgroundWriter.write_now`): for small rows, whose
        #: write is cheap; larger ones are compressed by the writer, beside this thread.
        self.writes_here = schema.obs.row_bytes < WRITTEN_HERE_BELOW
        self._lock = threading.Lock()
        #: Rows recorded elsewhere and not handed over yet, for the writer's time-based flush:
        #: called (with this recorder's lock held, on the writer thread) to get them as
        #: ``(batch, stamps)`` pairs; it must never wait for a lock the stepping thread holds.
        self.feeder: Callable[[], list[tuple[TransitionBatch, np.ndarray]]] | None = None
        #: Set by the writer's time-based flush: the stepping thread hands over the rows it
        #: holds at its next record (see `ask_back`).
        self.asked_back = False
        self._block = StepBlock()
        self._episode_ids = itertools.count()
        self._rows = 0
        self._dropped = 0
        if writer is not None:
            writer.attach(self)

    @property
    def rows_recorded(self) -> int:
        """Transitions recorded so far (rows marked invalid excluded)."""
        return self._rows - self._dropped

    def obs_slab(self) -> ObsSlab | None:
        """Where one stepping thread copies its observations to, so that a block's
        observations need no joining copy (None: for observations of composite spaces, and
        for small ones, whose plain copy and join cost less than the slab's bookkeeping)."""
        codec = self.schema.obs
        if not isinstance(codec, LeafCodec) or codec.row_bytes < SLAB_ROWS_FROM:
            return None
        return ObsSlab(codec.shape, codec.dtype, self.capacity, self._rows_left)

    def _rows_left(self) -> int:
        return self.capacity - self._block.n

    def new_episode_id(self) -> int:
        """A run-unique episode id (thread-safe)."""
        return next(self._episode_ids)

    def record(self, batch: TransitionBatch, stamps: np.ndarray | None = None) -> None:
        """Appends the batch's rows (a list append: the writer thread converts them).

        The recorder keeps the batch and the arrays in it (no copy): the caller must not
        modify them afterwards. Rows its ``valid`` marks False are dropped, not recorded.
        ``stamps``: each row's timestamp (ns since the epoch, whole microseconds: what every
        sink, PostgreSQL included, stores exactly); default: now, for every row.
        """
        k = len(batch.env_index)
        now = time.time_ns()
        stamp = now // 1000 * 1000 if stamps is None else stamps
        with self._lock:
            block = self._block
            # Full, or old: the writer's time-based flush may find this lock taken whenever it
            # looks, so the rows also leave by age, within half the flush interval.
            if block.n and (block.n + k > self.capacity or now - block.first > self._max_age):
                self._hand_over_locked()
                block = self._block
            if not block.n:
                block.first = now
            block.batches.append(tuple(batch))  # StepBlock.append inlined (the hot path)
            block.stamps.append(stamp)
            block.n += k
            self._rows += k
            if self.asked_back:  # the writer asks for the rows (`ask_back`): these go too
                self._hand_over_locked()
        if batch.valid is not None:
            self._dropped += k - int(np.count_nonzero(batch.valid))

    def _hand_over_locked(self) -> None:
        self.asked_back = False
        full, self._block = self._block, StepBlock()
        if self._writer is None or not full.n:
            return
        # Small rows are built here, on the recording thread: the conversion is a few large
        # C-level calls (~0.3 us a CartPole row), while on a second thread every call that
        # lets the GIL go hands it back and forth with a stepping thread that waits for it
        # each time, costing that thread several times the work itself; for the same reason
        # the smallest are also written here when nothing is queued (`writes_here`). Large
        # rows are left to the writer: their build is mostly copies that let the GIL go, and
        # run beside the stepping thread. A block that fails to build is left to the writer,
        # which reports it.
        try:
            if not self.build_on_writer:
                with contextlib.suppress(Exception):
                    began = time.monotonic()
                    full.arrow = self.to_record_batches(full)
                    full.batches = []
                    full.build_seconds = time.monotonic() - began
        finally:  # even on Ctrl-C: the block is queued, built or not
            if full.arrow is None or not self.writes_here:
                self._writer.submit(self, full)
            else:  # written here, or queued (write_now queues what it does not write)
                self._writer.write_now(self, full)

    def ask_back(self) -> bool:
        """Asks the stepping thread to hand over the rows it holds at its next record, as it
        does a full block (the writer's time-based flush; a game's waiting rows go too). Built
        there, a block costs that thread its build, where the writer building it would cost
        it more: every call of the build that lets the GIL go hands it back and forth between
        the two threads. The writer takes what is still not handed over a moment later
        (``take_partial(asked_only=True)``): a thread that stopped recording hands nothing.
        Returns whether anything may be waiting (False: nothing to ask for)."""
        if not self._block.n and self.feeder is None:
            return False
        self.asked_back = True
        return True

    def take_partial(self, asked_only: bool = False) -> StepBlock | None:
        """Detaches the rows recorded since the last hand-over (for the time-based flush);
        ``asked_only``: only if the stepping thread has not handed them over since
        `ask_back` (None: it did, and holds only rows recorded since).

        Never waits for the lock: the stepping thread may hold it while it blocks on a full
        writer queue, and the writer waiting here would deadlock. A busy recorder is flushed
        at the next tick instead.
        """
        if asked_only and not self.asked_back:
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self.asked_back = False
            if self.feeder is not None:
                for batch, stamps in self.feeder():
                    self._block.append(batch, stamps)
                    self._rows += len(batch.env_index)
                    if batch.valid is not None:
                        self._dropped += len(batch.valid) - int(np.count_nonzero(batch.valid))
            if self._block.n == 0:
                return None
            full, self._block = self._block, StepBlock()
            return full
        finally:
            self._lock.release()

    def flush(self) -> None:
        """Hands every recorded row to the writer and waits until the sinks have it."""
        if self._writer is not None:
            self._writer.flush()

    def to_record_batches(self, block: StepBlock) -> list[pa.RecordBatch]:
        """The block's rows as Arrow batches (built at hand-over, or now)."""
        if block.arrow is not None:
            return block.arrow
        return block.to_record_batches(self.schema, self.run_id, self.actor_ids, self.agent_ids,
                                     once_schema=self._once_schema, zeros=self._zeros,
                                     cut=self._cut)

    def close(self) -> None:
        """Flushes and detaches from the writer; the writer itself is closed by its owner."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.detach(self)
            self._writer = None
        self._zeros = None  # the reused zero rows (up to a few blocks' worth) are let go of
