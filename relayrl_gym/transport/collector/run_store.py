"""Where the collector writes a run, with the de-duplication state that makes it exactly once.

A run's store knows, per sender, the last sequence number it holds (``last_seq``). The collector
writes batches, then `commit`s: the data is made durable first and the state second, and only
then are the batches acknowledged. Two kinds:

- `ArrowRunStore` (a directory, the default): ``ROOT/<run_id>/part-NNNNN.arrow`` like
  `ArrowSink`, plus ``_collector.json`` (per-sender last seq, and how many batches of the file
  being written are committed) and ``_schema.arrow``. Reopened after a crash (``kill -9``), it
  cuts the file being written back to its committed batches, so batches written but never
  acknowledged (which the sender resends) are not kept twice: exactly once across restarts.
- `SinkRunStore` (any other sink: SQL URL): one sink per run and the state in
  ``STATE_DIR/<run_id>.json``. A batch written just before a crash, before the state, may be
  written twice after the restart, and a run resumed by a restarted collector continues as
  ``<run_id>+r<N>`` (a SQL run cannot be reopened): exactly once within one collector process.

Either kind holds a lock on its run (a file under ``.locks/`` of the sink directory or of the
state directory) while it is open: collectors sharing a directory never write one run at once
(`RunBusyError`), and a run left by a collector that died is taken over where it committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from relayrl_gym.errors import SinkError
from relayrl_gym.sinks.base import Sink, open_sink
from relayrl_gym.storage.run_dir import (
    STATE_FILE,
    RunDirWriter,
    write_json_atomic,
    write_run_file,
)

__all__ = ["ArrowRunStore", "RunBusyError", "SinkRunStore"]
_SCHEMA_FILE = "_schema.arrow"
#: In a database sink's state directory: one lock file a run, held by the collector writing it.
LOCK_DIR = ".locks"


class RunBusyError(SinkError):
    """Another collector (another process, or another consumer in this one) writes the run."""


class _RunLock:
    """An exclusive lock on a run (``flock`` on its directory, or on a lock file), so that two
    collectors sharing a sink directory never write one run at once; the kernel lets go of it
    when the process dies."""

    def __init__(self, path: Path, run_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = (os.open(path, os.O_RDONLY) if path.is_dir() else
                    os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._fd)
            self._fd = -1
            raise RunBusyError(f"run {run_id!r} is being written by another collector "
                               f"(it holds {str(path)!r})") from err

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor releases the lock
            self._fd = -1

    __del__ = release  # a store dropped without close lets go of its run too


class _CommittedState:
    """What a run store has committed: the last batch of each sender and the rows, saved as
    JSON; a commit builds the next state from it and the rows written since."""

    _state: dict[str, Any]
    _pending_rows: int

    @property
    def rows(self) -> int:
        """Rows committed to the run (by this collector, for a database sink)."""
        return int(self._state["rows"])

    def last_seq(self, sender: str) -> int:
        """The last batch of ``sender`` the run holds (-1: none)."""
        return int(self._state["senders"].get(sender, -1))

    def owner(self, sender: str) -> dict[str, str] | None:
        """Who ``sender`` belongs to: ``{"token": digest of its token, "user": CURVE key}``,
        as claimed on this run (None: nobody yet)."""
        owner = self._state.get("owners", {}).get(sender)
        return dict(owner) if isinstance(owner, dict) else None

    def claim(self, sender: str, token_digest: str, user: str) -> None:
        """Binds ``sender`` to a token and CURVE user; saved with the next commit."""
        self._state.setdefault("owners", {})[sender] = {"token": token_digest, "user": user}

    def _committing(self, last_seqs: dict[str, int], **extra: Any) -> dict[str, Any]:
        return {**self._state, "senders": {**self._state["senders"], **last_seqs},
                "rows": self._state["rows"] + self._pending_rows, **extra}


class ArrowRunStore(_CommittedState):
    """One run directory written by the collector; survives a crash of the collector.

    >>> import tempfile, pyarrow as pa
    >>> schema = pa.schema([("x", pa.int64())])
    >>> store = ArrowRunStore(tempfile.mkdtemp(), "run", schema)
    >>> store.write(pa.record_batch([pa.array([1])], schema=schema)); store.commit({"s": 0})
    >>> store.last_seq("s"), store.close()
    (0, None)
    """

    def __init__(self, root: str | os.PathLike[str], run_id: str, schema: pa.Schema, *,
                 max_file_bytes: int = 256 * 1024 * 1024, compression: str | None = "lz4",
                 fsync: bool = False) -> None:
        """Opens the run, creating it, or reopening (and repairing) one written before.

        Args:
            root: the collector's sink directory.
            run_id: the run.
            schema: the run's Arrow schema (must match a reopened run's).
            max_file_bytes: a data file is completed and a new one started past this size.
            compression: IPC buffer compression, "lz4" (as fast as none here, files ~4x
                smaller), "zstd" or None.
            fsync: also ``fsync`` data and state at each commit (survives power loss).
        """
        self.run_id = run_id
        self.schema = schema
        self.run_path = Path(root) / run_id
        try:
            self.run_path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SinkError(f"cannot create run {run_id!r} in {str(root)!r}: {err}") from err
        self._lock = _RunLock(self.run_path, run_id)
        try:
            self._open(schema, max_file_bytes, compression, fsync)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, schema: pa.Schema, max_file_bytes: int, compression: str | None,
              fsync: bool) -> None:
        self.max_file_bytes = int(max_file_bytes)
        self.fsync = fsync
        self.compression = compression
        # Fewer, larger writes; `commit` flushes before anything is acknowledged.
        self._parts = RunDirWriter(self.run_path, schema, compression=compression,
                                   max_file_bytes=max_file_bytes, fsync=fsync,
                                   buffer_size=4 * 1024 * 1024)
        self._pending_rows = 0
        state_path = self.run_path / STATE_FILE
        try:
            if state_path.exists():
                self._state: dict[str, Any] = json.loads(state_path.read_text())
                self._reopen()
            else:  # a run directory without collector state is someone else's: keep off
                if any(self.run_path.iterdir()):
                    raise FileExistsError(self.run_path)
                write_run_file(self.run_path, schema)
                (self.run_path / _SCHEMA_FILE).write_bytes(schema.serialize().to_pybytes())
                self._state = {"senders": {}, "part": 0, "batches": 0, "rows": 0}
                self._save_state()
        except FileExistsError as err:
            raise SinkError(f"{str(self.run_path)!r} exists but was not written by a collector "
                            "(no _collector.json); give the collector its own sink directory"
                            ) from err
        except (OSError, ValueError, KeyError, TypeError) as err:  # KeyError: damaged state
            raise SinkError(f"cannot open run {self.run_id!r} in "
                            f"{str(self.run_path.parent)!r}: {type(err).__name__}: {err}"
                            ) from err

    def write(self, batch: pa.RecordBatch) -> None:
        """Appends a batch (not acknowledged before `commit`)."""
        self._parts.write(batch)
        self._pending_rows += batch.num_rows

    def commit(self, last_seqs: dict[str, int]) -> None:
        """Makes the written batches durable, then records ``last_seqs`` (sender -> seq)."""
        self._parts.flush()
        # The state in memory moves only once it is saved: after a failure it still says
        # what the files hold, and the collector `abandon`s the store and reopens the run.
        state = self._committing(last_seqs, batches=self._parts.batches)
        write_json_atomic(self.run_path / STATE_FILE, state)
        self._state = state
        self._pending_rows = 0
        if self._parts.full:
            self._complete()

    def abandon(self) -> None:
        """Lets go of the data file without completing it, after a failed `write` or
        `commit` left it in an unknown state; reopening the run cuts it back to its committed
        batches (as after a crash)."""
        self._parts.abandon()
        self._lock.release()

    def close(self) -> None:
        """Completes the file being written; idempotent."""
        try:
            self._complete()
        finally:
            self._lock.release()

    def _complete(self) -> None:
        """Finishes the current file (every batch in it is committed) and moves on."""
        if self._parts.complete() is None:
            return
        self._state["part"] = self._parts.part
        self._state["batches"] = 0
        self._save_state()

    def _reopen(self) -> None:
        stored = pa.ipc.read_schema(pa.py_buffer((self.run_path / _SCHEMA_FILE).read_bytes()))
        if not stored.equals(self.schema, check_metadata=False):
            raise SinkError(f"run {self.run_id!r} already exists in {str(self.run_path)!r} "
                            "with another schema; a sender must not reuse a run id")
        # Batches past the committed count were never acknowledged: the sender resends them,
        # so they go; the committed ones make a complete file.
        self._parts.resume(part=self._state["part"], committed=self._state["batches"])
        self._state["part"] = self._parts.part
        self._state["batches"] = 0
        self._save_state()

    def _save_state(self) -> None:
        write_json_atomic(self.run_path / STATE_FILE, self._state)


class SinkRunStore(_CommittedState):
    """One run written to any sink (e.g. ``sqlite:///runs.db``), its state in a JSON file.

    >>> import tempfile, pyarrow as pa
    >>> from relayrl_gym.sinks.arrow import ArrowSink
    >>> schema = pa.schema([("x", pa.int64())])
    >>> store = SinkRunStore(ArrowSink(tempfile.mkdtemp()), tempfile.mkdtemp(), "run", schema)
    >>> store.last_seq("s"), store.close()
    (-1, None)
    """

    def __init__(self, sink: Any, state_dir: str | os.PathLike[str], run_id: str,
                 schema: pa.Schema) -> None:
        """Opens ``sink`` (a spec or a fresh `Sink`) for the run.

        Args:
            sink: a sink URL, or a `Sink` not started yet.
            state_dir: where the per-run de-duplication state is kept.
            run_id: the run.
            schema: its Arrow schema.
        """
        self.run_id = run_id
        self.schema = schema
        self._state_path = Path(state_dir) / f"{run_id}.json"
        self._lock = _RunLock(Path(state_dir) / LOCK_DIR / f"{run_id}.lock", run_id)
        try:
            self._open(sink, state_dir, schema)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, sink: Any, state_dir: str | os.PathLike[str], schema: pa.Schema) -> None:
        try:
            self._state: dict[str, Any] = (json.loads(self._state_path.read_text())
                           if self._state_path.exists() else
                           {"senders": {}, "rows": 0, "restarts": -1})
        except (OSError, ValueError) as err:
            raise SinkError(f"cannot read the collector state {self._state_path}: {err}"
                            ) from err
        self._state["restarts"] += 1
        restarts = self._state["restarts"]
        self.sink: Sink = open_sink(sink)
        self.sink.start(self.run_id if not restarts else f"{self.run_id}+r{restarts}", schema)
        self.run_path = self.sink.run_path
        self._pending_rows = 0
        write_json_atomic(self._state_path, self._state)

    def write(self, batch: pa.RecordBatch) -> None:
        """Hands a batch to the sink."""
        self.sink.write(batch)
        self._pending_rows += batch.num_rows

    def commit(self, last_seqs: dict[str, int]) -> None:
        """Flushes the sink, then records ``last_seqs`` (sender -> seq)."""
        self.sink.flush()
        state = self._committing(last_seqs)
        write_json_atomic(self._state_path, state)
        self._state = state
        self._pending_rows = 0

    def close(self) -> None:
        """Closes the sink (a SQL run is marked closed)."""
        try:
            self.sink.close()
        finally:
            self._lock.release()

    def abandon(self) -> None:
        """Closes the sink after a failed `write` or `commit` (reopened, the run continues
        as ``<run_id>+r<N>``)."""
        with contextlib.suppress(Exception):
            self.sink.close()
        self._lock.release()
