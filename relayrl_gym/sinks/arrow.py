"""The default sink: a run directory of Arrow IPC files, rotated by size, readable after a crash."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from relayrl_gym.errors import ConfigError, SinkError
from relayrl_gym.schema.transitions import METADATA_KEY
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT, Sink

__all__ = ["RUN_FILE", "ArrowSink", "final_name", "in_progress_name"]

#: The run description beside the data files (same JSON as the schema metadata); the leading
#: underscore keeps `pyarrow.dataset` from taking it for data.
RUN_FILE = "_run.json"


def in_progress_name(final_name: str) -> str:
    """Name of a data file while it is written. The leading dot hides it from `pyarrow.dataset`
    until it is complete; `relayrl_gym.load` still reads it (up to its last whole batch)."""
    return "." + final_name + ".inprogress"


def final_name(in_progress: str) -> str:
    """The name an in-progress file gets once it is complete (inverse of `in_progress_name`)."""
    return in_progress[1 : -len(".inprogress")]


class ArrowSink(Sink):
    """Writes each run to ``ROOT/<run_id>/part-NNNNN.arrow`` (Arrow IPC file format).

    Each batch goes straight to the operating system, so a killed process leaves every batch
    written before it readable. A file is written under a hidden in-progress name and renamed
    to ``part-NNNNN.arrow`` when it is complete (rotation at ``max_file_bytes`` or close), so a
    finished run directory is a plain dataset for `pyarrow.dataset`, pandas or DuckDB.

    >>> import tempfile
    >>> sink = ArrowSink(tempfile.mkdtemp())
    >>> sink.compression
    'zstd'
    """

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_SINK_ROOT, *,
                 max_file_bytes: int = 256 * 1024 * 1024, compression: str | None = "zstd",
                 fsync: bool = False) -> None:
        """Creates the sink; nothing is written before `start`.

        Args:
            root: directory that holds one sub-directory per run.
            max_file_bytes: a data file is closed and a new one started past this size.
            compression: IPC buffer compression, "zstd", "lz4" or None.
            fsync: also ``fsync`` files at every flush (survives power loss, not only crashes).
        """
        if compression not in (None, "zstd", "lz4"):
            raise ConfigError(f"`compression` must be 'zstd', 'lz4' or None, got {compression!r}")
        if max_file_bytes < 1:
            raise ConfigError(f"`max_file_bytes` must be >= 1, got {max_file_bytes}")
        self.root = Path(root)
        self.max_file_bytes = int(max_file_bytes)
        self.compression = compression
        self.fsync = fsync
        self.run_path: Path | None = None
        self._schema: pa.Schema | None = None
        self._file: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._part = 0
        self._final: Path | None = None
        self._temp: Path | None = None
        self.files_written: list[Path] = []

    @classmethod
    def from_url(cls, url: str) -> ArrowSink:
        """``arrow://DIR`` or a plain directory path."""
        path = url[len("arrow://"):] if url.startswith("arrow://") else url
        if not path:
            raise ConfigError(f"the sink URL {url!r} names no directory; write arrow://DIR "
                              "(e.g. arrow://relayrl_runs), or pass a directory path")
        return cls(path)

    def __repr__(self) -> str:
        return f"ArrowSink({str(self.root)!r})"

    def start(self, run_id: str, schema: pa.Schema) -> None:
        run_path = self.root / run_id
        try:
            run_path.mkdir(parents=True, exist_ok=False)
        except FileExistsError as err:
            raise SinkError(f"run directory {str(run_path)!r} already exists; choose another "
                            "run_id or sink directory") from err
        except OSError as err:
            raise self._unwritable(err) from err
        try:
            meta: dict[str, Any] = json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
            (run_path / RUN_FILE).write_text(json.dumps(meta, indent=2))
        except OSError as err:  # a full disk: leave no half-made run to be "already there"
            shutil.rmtree(run_path, ignore_errors=True)
            raise self._unwritable(err) from err
        self.run_path = run_path
        self._schema = schema

    def _unwritable(self, err: OSError) -> SinkError:
        return SinkError(f"cannot write the sink directory {str(self.root)!r}: {err}. Pass a "
                         "writable directory (with free space) as `sink=`, or sink=None to "
                         "record nothing")

    def write(self, batch: pa.RecordBatch) -> None:
        if self._schema is None:
            raise SinkError("ArrowSink.write() called before start()")
        if self._writer is None:
            self._open_next()
        assert self._writer is not None and self._file is not None
        self._writer.write_batch(batch)
        if self._file.tell() >= self.max_file_bytes:
            self._close_current()

    def flush(self) -> None:
        if self._file is not None and self.fsync:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._close_current()

    def _open_next(self) -> None:
        assert self.run_path is not None and self._schema is not None
        name = f"part-{self._part:05d}.arrow"
        self._part += 1
        self._final = self.run_path / name
        self._temp = self.run_path / in_progress_name(name)
        self._file = pa.OSFile(str(self._temp), "wb")
        options = pa.ipc.IpcWriteOptions(compression=self.compression)
        self._writer = pa.ipc.new_file(self._file, self._schema, options=options)

    def _close_current(self) -> None:
        if self._writer is None:
            return
        assert self._file is not None and self._temp is not None and self._final is not None
        writer, file, self._writer, self._file = self._writer, self._file, None, None
        try:
            writer.close()
            if self.fsync:
                os.fsync(file.fileno())
        finally:  # a full disk fails the footer: the file is let go of all the same, so its
            file.close()  # space is freed, and its whole batches stay readable in progress
        os.replace(self._temp, self._final)
        self.files_written.append(self._final)
