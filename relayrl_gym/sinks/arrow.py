"""The default sink: a run directory of Arrow IPC files, rotated by size, readable after a crash."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from relayrl_gym.errors import ConfigError, SinkError
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT, Sink
from relayrl_gym.storage.obs_layout import (
    check_layout,
    compact,
    is_once,
    obs_row_bytes,
    resolve,
    stored_schema,
)
from relayrl_gym.storage.run_dir import RunDirWriter

__all__ = ["ArrowSink", "auto_compression"]

#: Under ``compression="auto"``, runs whose observations take this many bytes a row or more
#: (images, or any of unknown size) are compressed with zstd, the others with lz4.
ZSTD_FROM_BYTES = 4096


def auto_compression(schema: pa.Schema) -> str:
    """What ``compression="auto"`` means for runs of ``schema``: zstd for observations of
    `ZSTD_FROM_BYTES` or more a row, whose blocks the writer thread compresses beside the
    stepping thread and which zstd makes far smaller (an Atari frame: ~80 bytes, lz4 ~220);
    lz4 for smaller ones, whose blocks the stepping thread writes itself, and which compress
    little either way (a MuJoCo block: zstd 8% smaller, ~2.5 times the time).

    >>> auto_compression(pa.schema([("obs", pa.list_(pa.uint8(), 84 * 84 * 4))]))
    'zstd'
    >>> auto_compression(pa.schema([("obs", pa.list_(pa.float64(), 17))]))
    'lz4'
    """
    size = obs_row_bytes(schema)
    return "lz4" if size is not None and size < ZSTD_FROM_BYTES else "zstd"


class ArrowSink(Sink):
    """Writes each run to ``ROOT/<run_id>/part-NNNNN.arrow`` (Arrow IPC file format).

    Each batch goes straight to the operating system, so a killed process leaves every batch
    written before it readable. A file is written under a hidden in-progress name and renamed
    to ``part-NNNNN.arrow`` when it is complete (rotation at ``max_file_bytes`` or close), so a
    finished run directory is a plain dataset for `pyarrow.dataset`, pandas or DuckDB.

    >>> import tempfile
    >>> sink = ArrowSink(tempfile.mkdtemp())
    >>> sink.compression
    'auto'
    """

    writes_inline = True  # local files: a block is written by the thread that recorded it

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_SINK_ROOT, *,
                 max_file_bytes: int = 256 * 1024 * 1024, compression: str | None = "auto",
                 fsync: bool = False, obs_layout: str = "auto") -> None:
        """Creates the sink; nothing is written before `start`.

        Args:
            root: directory that holds one sub-directory per run.
            max_file_bytes: a data file is closed and a new one started past this size.
            compression: IPC buffer compression, "zstd", "lz4" or None; "auto" (default):
                zstd for observations of 4 KiB a row or more (images), lz4 for smaller ones
                (see `auto_compression`).
            fsync: also ``fsync`` files at every flush (survives power loss, not only crashes).
            obs_layout: ``"pairs"`` stores obs and next_obs in every row; ``"once"`` stores
                each observation once, ``next_obs`` only where it is not the obs of the
                agent's next row (about half the bytes for images; `relayrl_gym.load` returns
                whole transitions either way, other readers see nulls there; see
                `relayrl_gym.storage.obs_layout`); ``"auto"`` (default): ``"once"`` for array
                observations of 4 KiB or more.
        """
        if compression not in (None, "auto", "zstd", "lz4"):
            raise ConfigError(f"`compression` must be 'auto', 'zstd', 'lz4' or None, got "
                              f"{compression!r}")
        if max_file_bytes < 1:
            raise ConfigError(f"`max_file_bytes` must be >= 1, got {max_file_bytes}")
        self.root = Path(root)
        self.max_file_bytes = int(max_file_bytes)
        self.compression = compression
        self.fsync = fsync
        check_layout(obs_layout)
        self.obs_layout = obs_layout
        self.run_path: Path | None = None
        self._parts: RunDirWriter | None = None
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
        compression = (auto_compression(schema) if self.compression == "auto"
                       else self.compression)
        if resolve(self.obs_layout, schema) == "once":
            schema = stored_schema(schema)
            self.stores_obs_once = True
        try:
            self._parts = RunDirWriter.create(run_path, schema, compression=compression,
                                              max_file_bytes=self.max_file_bytes,
                                              fsync=self.fsync)
        except FileExistsError as err:
            raise SinkError(f"run directory {str(run_path)!r} already exists; choose another "
                            "run_id or sink directory") from err
        except OSError as err:  # a full disk: `create` leaves no half-made run behind
            raise self._unwritable(err) from err
        self.run_path = run_path

    def _unwritable(self, err: OSError) -> SinkError:
        return SinkError(f"cannot write the sink directory {str(self.root)!r}: {err}. Pass a "
                         "writable directory (with free space) as `sink=`, or sink=None to "
                         "record nothing")

    def write(self, batch: pa.RecordBatch) -> None:
        if self._parts is None:
            raise SinkError("ArrowSink.write() called before start()")
        if self.stores_obs_once and not is_once(batch.schema):
            batch = compact(batch, self._parts.schema)  # a run with other sinks besides
        self._parts.write(batch)
        if self._parts.full:
            self._complete()

    def flush(self) -> None:
        if self._parts is not None:
            self._parts.flush()

    def close(self) -> None:
        self._complete()

    def _complete(self) -> None:
        completed = self._parts.complete() if self._parts is not None else None
        if completed is not None:
            self.files_written.append(completed)
