"""Decoded columns on disk, memory-mapped: what random access (`Dataset.sample`, `to_torch`)
indexes.

Arrow files are compressed in record batches, so reading one random row means decoding its
whole batch. For random access a dataset decodes the columns asked for once, streaming, into
one ``.npy`` file per array leaf (`numpy.lib.format.open_memmap`); drawing rows is then numpy
fancy indexing on memory maps, as fast as an in-memory replay buffer once the pages are cached,
while the process holds only the pages it touched. Leaves that are not fixed-size arrays (Text,
Sequence, Graph, OneOf values, masks, infos) are kept in memory as object arrays.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from relayrl_gym.data.columns import length
from relayrl_gym.errors import DatasetError
from relayrl_gym.schema.batches import map_leaves

__all__ = ["Replay"]


class Replay:
    """The columns of a dataset's rows, decoded, in files under a folder of its own.

    >>> parts = iter([{"x": np.arange(3.0)}, {"x": np.arange(3.0, 5.0)}])
    >>> replay = Replay.build(parts, rows=5)
    >>> replay.take(np.array([4, 0]))["x"].tolist()
    [4.0, 0.0]
    """

    def __init__(self, folder: Path, columns: dict[str, Any], rows: int, *, owner: bool) -> None:
        """Use `build`. ``owner``: this object removes ``folder`` when it is collected."""
        self.folder = folder
        self.columns = columns
        self.rows = rows
        if owner:
            weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)

    @classmethod
    def build(cls, batches: Iterator[dict[str, Any]], rows: int,
              cache_dir: str | os.PathLike[str] | None = None) -> Replay:
        """Decoded batches (``rows`` in all) written to a new folder under ``cache_dir``
        (default: the system's temporary folder), removed when the replay is collected."""
        folder = Path(tempfile.mkdtemp(prefix="relayrl-replay-", dir=cache_dir))
        try:
            columns: dict[str, Any] | None = None
            start = 0
            counter = itertools.count()
            for batch in batches:
                if columns is None:
                    columns = {name: map_leaves(
                        lambda leaf: _allocate(folder, next(counter), leaf, rows), value)
                        for name, value in batch.items()}
                stop = start + length(batch)
                if stop > rows:
                    raise DatasetError(f"the dataset gave more than the {rows} rows it counted "
                                       "while its columns were decoded (its files changed); "
                                       "load it again")
                rows_here = slice(start, stop)
                for name, value in batch.items():
                    map_leaves(functools.partial(_write_rows, rows_here), columns[name], value)
                start = stop
            if columns is None:
                columns = {}
            for leaf in _leaves(columns):
                if isinstance(leaf, np.memmap):
                    leaf.flush()
            return cls(folder, columns, start, owner=True)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def take(self, rows: np.ndarray) -> dict[str, Any]:
        """The rows ``rows`` of every column, as in-memory arrays."""
        return {name: map_leaves(lambda leaf: np.asarray(leaf[rows]), value)
                for name, value in self.columns.items()}

    def __len__(self) -> int:
        return self.rows

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes (a torch DataLoader's) map the same files instead of copying them.
        columns = {name: map_leaves(_describe, value) for name, value in self.columns.items()}
        return {"folder": self.folder, "columns": columns, "rows": self.rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder, self.rows = state["folder"], state["rows"]
        self.columns = {name: map_leaves(_reopen, value)
                        for name, value in state["columns"].items()}


def _write_rows(rows: slice, target: np.ndarray, leaf: np.ndarray) -> None:
    target[rows] = leaf


def _allocate(folder: Path, number: int, leaf: np.ndarray, rows: int) -> np.ndarray:
    if leaf.dtype == object:
        return np.empty(rows, object)
    return np.lib.format.open_memmap(folder / f"{number}.npy", mode="w+", dtype=leaf.dtype,
                                     shape=(rows, *leaf.shape[1:]))


def _leaves(columns: dict[str, Any]) -> Iterable[Any]:
    found: list[Any] = []
    for value in columns.values():
        map_leaves(found.append, value)
    return found


class _Mapped:
    """A memory-mapped leaf as its file name, for pickling."""

    def __init__(self, path: str) -> None:
        self.path = path


def _describe(leaf: Any) -> Any:
    if isinstance(leaf, np.memmap) and leaf.filename is not None:
        return _Mapped(leaf.filename)
    return leaf


def _reopen(leaf: Any) -> Any:
    if isinstance(leaf, _Mapped):
        return np.load(leaf.path, mmap_mode="r")
    return leaf
