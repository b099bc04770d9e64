"""A run directory: its file names, and the writer of its data files with commit semantics.

A run directory ``ROOT/<run_id>/`` holds ``_run.json`` (the run's description) and the data
files ``part-00000.arrow``, ``part-00001.arrow``, ... (Arrow IPC file format). A part is written
under a hidden in-progress name and renamed once it is complete, so a final name only ever holds
a whole file; an in-progress file is still readable up to its last whole batch
(`read_in_progress`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from relayrl_gym.schema.transitions import METADATA_KEY

__all__ = ["PART_GLOB", "RUN_FILE", "STATE_FILE", "RunDirWriter", "final_name",
           "in_progress_name", "iter_in_progress", "part_name", "read_in_progress",
           "write_json_atomic", "write_run_file"]

log = logging.getLogger(__name__)

#: The run description beside the data files (same JSON as the schema metadata); the leading
#: underscore keeps `pyarrow.dataset` from taking it for data.
RUN_FILE = "_run.json"

#: A collector's state beside a run's data (per sender, the last batch it holds); the
#: underscore keeps it out of `pyarrow.dataset`. A sender's spill is compared against it.
STATE_FILE = "_collector.json"

#: The final names of a run's data files, as a glob pattern (`fnmatch`, `Path.glob`).
PART_GLOB = "part-*.arrow"

_FILE_MAGIC = b"ARROW1\x00\x00"


def part_name(part: int) -> str:
    """The final name of data file number ``part``: ``part-NNNNN.arrow``."""
    return f"part-{part:05d}.arrow"


def in_progress_name(final_name: str) -> str:
    """Name of a data file while it is written. The leading dot hides it from `pyarrow.dataset`
    until it is complete; `relayrl_gym.load` still reads it (up to its last whole batch)."""
    return "." + final_name + ".inprogress"


def final_name(in_progress: str) -> str:
    """The name an in-progress file gets once it is complete (inverse of `in_progress_name`)."""
    return in_progress[1 : -len(".inprogress")]


def write_json_atomic(path: Path, value: Any) -> None:
    """Writes ``value`` as JSON to ``path`` through a temporary file: readers see the old file
    or the new one, never half of one."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(value))
    os.replace(temp, path)


def write_run_file(run_path: Path, schema: pa.Schema) -> None:
    """Writes the run description `RUN_FILE` of ``schema`` (its relayrl-gym metadata)."""
    meta: dict[str, Any] = json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
    (run_path / RUN_FILE).write_text(json.dumps(meta, indent=2))


def read_in_progress(path: Path) -> list[pa.RecordBatch]:
    """An unfinished IPC file is the stream format after an 8-byte magic: read whole batches
    until the data ends (a batch cut off by a crash is dropped)."""
    return list(iter_in_progress(path))


def iter_in_progress(path: Path, limit: int | None = None) -> Iterator[pa.RecordBatch]:
    """`read_in_progress` one batch at a time (memory-mapped: a batch is read when reached);
    ``limit``: only the batches whole within the file's first ``limit`` bytes (what it held
    when its size was taken; a completed part starts with the same bytes). The file is opened
    now: a missing one raises `FileNotFoundError` here, not at the first batch."""
    data = pa.memory_map(str(path)).read_buffer()
    if limit is not None and limit < data.size:
        data = data.slice(0, limit)
    return _whole_batches(data, path)


def _whole_batches(data: pa.Buffer, path: Path) -> Iterator[pa.RecordBatch]:
    if data.size < len(_FILE_MAGIC) or data[: len(_FILE_MAGIC)].to_pybytes() != _FILE_MAGIC:
        return
    whole = 0
    try:
        reader = pa.ipc.open_stream(data.slice(len(_FILE_MAGIC)))
        while True:
            batch = reader.read_next_batch()
            whole += 1
            yield batch
    except StopIteration:
        pass
    except (pa.ArrowInvalid, OSError, EOFError) as err:
        log.info("stopped reading %s at a cut-off batch (%s); %d whole batches recovered", path,
                 err, whole)


class RunDirWriter:
    """Writes the data files of one run directory, one part after another.

    Batches go to the part being written, under its in-progress name; `complete` writes its
    footer and renames it to ``part-NNNNN.arrow``, so a final name only ever holds a whole
    file. A part that cannot be completed (a full disk fails the footer) is let go of all the
    same, its whole batches readable under the in-progress name, and the next part gets the
    next number. `resume` picks up a directory whose writer stopped, keeping the batches it
    had committed.

    >>> import tempfile, pyarrow as pa
    >>> schema = pa.schema([("x", pa.int64())])
    >>> run = Path(tempfile.mkdtemp()) / "run"
    >>> parts = RunDirWriter.create(run, schema)
    >>> parts.write(pa.record_batch([pa.array([1, 2])], schema=schema))
    >>> parts.batches, sorted(p.name for p in run.iterdir())
    (1, ['.part-00000.arrow.inprogress', '_run.json'])
    >>> parts.complete().name, parts.batches
    ('part-00000.arrow', 0)
    """

    def __init__(self, run_path: Path, schema: pa.Schema, *, compression: str | None = "zstd",
                 max_file_bytes: int = 256 * 1024 * 1024, fsync: bool = False,
                 buffer_size: int = 0, part: int = 0) -> None:
        """Writes parts into the existing directory ``run_path``; nothing is written before
        the first batch.

        Args:
            run_path: the run directory.
            schema: the schema of every batch.
            compression: IPC buffer compression, "zstd", "lz4" or None.
            max_file_bytes: the part being written is `full` at this size.
            fsync: `flush` and `complete` also ``fsync`` the file (survives power loss).
            buffer_size: bytes gathered before they go to the operating system (fewer, larger
                writes; `flush` sends them); 0: each batch goes to it at once.
            part: the number of the first part to write.
        """
        self.run_path = run_path
        self.schema = schema
        self.compression = compression
        self.max_file_bytes = int(max_file_bytes)
        self.fsync = fsync
        self.buffer_size = buffer_size
        #: The number the next part opened gets.
        self.part = part
        #: Batches written to the part being written (0: none is open).
        self.batches = 0
        self._file: pa.NativeFile | None = None
        self._stream: pa.NativeFile | None = None  # the buffer over _file, when there is one
        self._ipc: pa.ipc.RecordBatchFileWriter | None = None
        self._name = ""

    @classmethod
    def create(cls, run_path: Path, schema: pa.Schema, **options: Any) -> RunDirWriter:
        """Makes the new run directory ``run_path`` with its `RUN_FILE` and returns its writer
        (``options``: those of the constructor). Raises `FileExistsError` when it exists, and
        `OSError` when it cannot be written: then it removes what it made, so that a full disk
        leaves no half-made run that a retry would find already there."""
        run_path.mkdir(parents=True, exist_ok=False)
        try:
            write_run_file(run_path, schema)
        except OSError:
            shutil.rmtree(run_path, ignore_errors=True)
            raise
        return cls(run_path, schema, **options)

    def resume(self, *, part: int, committed: int) -> None:
        """Picks up a run directory whose writer stopped (a crash, a failed write) while part
        ``part`` held ``committed`` committed batches: that part keeps those batches and is
        completed (the batches after them were never committed, and go), and writing goes on
        with the next part. For a writer that has not written yet.

        The committed batches are written aside and renamed: the final name only ever holds a
        whole file, and a full disk leaves the in-progress file to be cut at the next resume.
        """
        self.part = part
        final = self.run_path / part_name(part)
        temp = self.run_path / in_progress_name(final.name)
        if temp.exists():
            keep = read_in_progress(temp)[:committed]
            if keep:
                repair = final.with_name(final.name + ".repair")
                try:
                    with pa.OSFile(str(repair), "wb") as out, self._new_ipc(out) as ipc:
                        for batch in keep:
                            ipc.write_batch(batch)
                except BaseException:
                    repair.unlink(missing_ok=True)
                    raise
                os.replace(repair, final)
                self.part += 1
            temp.unlink()
        elif final.exists():  # completed, but the writer stopped before it was committed
            self.part += 1

    @property
    def full(self) -> bool:
        """Whether the part being written has reached ``max_file_bytes``."""
        out = self._file if self._stream is None else self._stream
        return out is not None and out.tell() >= self.max_file_bytes

    def write(self, batch: pa.RecordBatch) -> None:
        """Appends ``batch`` to the part being written, opening the next part if none is."""
        ipc = self._ipc if self._ipc is not None else self._open_next()
        ipc.write_batch(batch)
        self.batches += 1

    def flush(self) -> None:
        """Sends the batches written to the operating system (and to the disk, with
        ``fsync``)."""
        if self._file is None:
            return
        if self._stream is not None:
            self._stream.flush()
        if self.fsync:
            self._file.flush()
            os.fsync(self._file.fileno())

    def complete(self) -> Path | None:
        """Writes the footer of the part being written and gives it its final name; returns
        that path (None: no part was open)."""
        ipc, stream, file = self._ipc, self._stream, self._file
        if ipc is None or file is None:
            return None
        self._ipc = self._stream = self._file = None
        self.batches = 0
        try:
            ipc.close()
            if stream is not None:
                stream.flush()
            if self.fsync:
                os.fsync(file.fileno())
            if stream is not None:
                stream.close()
        finally:  # a full disk fails the footer: the file is let go of all the same, so its
            file.close()  # space is freed, and its whole batches stay readable in progress
        final = self.run_path / self._name
        os.replace(self.run_path / in_progress_name(self._name), final)
        return final

    def abandon(self) -> None:
        """Lets go of the part being written without completing it (after a failed write, its
        state unknown); `resume` cuts it back to its committed batches."""
        file, self._ipc, self._stream, self._file = self._file, None, None, None
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()

    def _open_next(self) -> pa.ipc.RecordBatchFileWriter:
        self._name = part_name(self.part)
        self.part += 1
        file = pa.OSFile(str(self.run_path / in_progress_name(self._name)), "wb")
        try:
            stream = (pa.BufferedOutputStream(file, buffer_size=self.buffer_size)
                      if self.buffer_size else None)
            self._ipc = self._new_ipc(file if stream is None else stream)
        except BaseException:  # a full disk fails the header: let go of the file
            with contextlib.suppress(Exception):
                file.close()
            raise
        self._file, self._stream = file, stream
        return self._ipc

    def _new_ipc(self, out: pa.NativeFile) -> pa.ipc.RecordBatchFileWriter:
        # One thread compresses: Arrow's pool would spread a batch's buffers over every core,
        # taking the one the stepping thread runs on (a cheap image env ran at 0.57x of the
        # unrecorded one with the pool, 0.62x without, on 2 cores; a write done on the
        # stepping thread itself was no slower).
        options = pa.ipc.IpcWriteOptions(compression=self.compression, use_threads=False)
        return pa.ipc.new_file(out, self.schema, options=options)
