"""Where a dataset's rows come from: one recorded run, read lazily batch by batch.

A source gives a run's rows as logical record batches: ``next_obs`` filled in where the run
stored observations once, ``info`` as JSON text, only the columns asked for, only the rows a
`Where` keeps. Opening a source reads metadata only (file footers, the run description).

- `ArrowRun`: a run directory. Its complete parts are read from memory maps a record batch at
  a time, only the fields a read needs (columns asked for and those a filter reads); counting
  reads batch headers only. The part still being written, or one a crash tore, is read up to
  its last whole batch. (A `pyarrow.dataset` scan reads up to 16 batches ahead and copies
  them: 152 MiB held for a run of 12 KB images, against 7 MiB read this way.)
- `SqlRun`: one run of a SQL database, read whole on first use (the tables hold raw row bytes,
  not Arrow batches).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from relayrl_gym.data.sql_reader import read_sql_run, sql_run_schema
from relayrl_gym.errors import DatasetError
from relayrl_gym.schema.infos import text_info_schema, with_text_info
from relayrl_gym.schema.spaces import space_from_json
from relayrl_gym.schema.transitions import METADATA_KEY, TransitionSchema
from relayrl_gym.storage.obs_layout import is_once, logical_schema, restore
from relayrl_gym.storage.run_dir import (
    PART_GLOB,
    RUN_FILE,
    final_name,
    in_progress_name,
    iter_in_progress,
    read_in_progress,
)

__all__ = ["ArrowRun", "RunSource", "SqlRun", "Where"]

#: The columns `restore` reads to fill ``next_obs`` back in a batch stored once.
_RESTORE_COLUMNS = ("obs", "next_obs", "env_index", "agent_id", "episode_id", "step")


@dataclass(frozen=True)
class Where:
    """Which rows a dataset keeps: one ``pyarrow.compute`` expression and the columns it reads.

    >>> w = Where.of(agents=["player_0"], model_versions=range(3, 9))
    >>> sorted(w.columns)
    ['agent_id', 'model_version']
    """

    expression: pc.Expression | None = None
    columns: frozenset[str] = frozenset()

    @classmethod
    def of(cls, *, agents: Iterable[str] | None = None, actors: Iterable[str] | None = None,
           env_indices: Iterable[int] | None = None, episodes: Iterable[int] | None = None,
           model_versions: Iterable[int] | None = None) -> Where:
        """The rows whose columns hold one of the values given (None: any value)."""
        where = cls()
        for name, column, values in (("agents", "agent_id", agents),
                                     ("actors", "actor_id", actors),
                                     ("env_indices", "env_index", env_indices),
                                     ("episodes", "episode_id", episodes),
                                     ("model_versions", "model_version", model_versions)):
            if values is not None:
                where = where.and_(cls(_member(name, column, values), frozenset([column])))
        return where

    def and_(self, other: Where) -> Where:
        """The rows both keep."""
        if self.expression is None:
            return other
        if other.expression is None:
            return self
        return Where(self.expression & other.expression, self.columns | other.columns)


def _member(name: str, column: str, values: Any) -> pc.Expression:
    """``column`` is one of ``values`` (a range of integers: two comparisons)."""
    field = pc.field(column)
    text = column in ("agent_id", "actor_id")
    if not text and isinstance(values, range) and values.step == 1:
        return (field >= values.start) & (field < values.stop)
    if isinstance(values, str | int | np.integer):
        values = [values]
    try:
        values = list(values)
    except TypeError:
        raise DatasetError(f"`{name}` takes a list of values, got {values!r}") from None
    for value in values:
        if text and not isinstance(value, str):
            raise DatasetError(f"`{name}` takes {name[:-1]} names (str), got {value!r}")
        if not text and (isinstance(value, bool) or not isinstance(value, int | np.integer)):
            raise DatasetError(f"`{name}` takes integers, got {value!r}")
    return field.isin(pa.array(values, pa.string() if text else pa.int64()))


class RunSource(Protocol):
    """One recorded run, read lazily."""

    @property
    def run_id(self) -> str: ...

    @property
    def location(self) -> str: ...

    @property
    def schema(self) -> TransitionSchema: ...

    @property
    def arrow(self) -> pa.Schema: ...

    def count(self, where: Where) -> int: ...

    def units(self, columns: Sequence[str], where: Where
              ) -> list[Callable[[], Iterator[pa.RecordBatch]]]: ...


def _logical(batch: pa.RecordBatch, columns: Sequence[str], where: Where, *,
             filtered: bool, once: bool | None = None, text_info: bool = True
             ) -> pa.RecordBatch:
    """A stored batch as readers see it: next_obs back, infos as text, rows kept, columns
    asked for (``filtered``: the rows were already chosen when the batch was read; ``once``:
    whether next_obs must be restored, when the caller knows; ``text_info``: infos as JSON
    text, else as stored).

    Costs a few microseconds a batch when there is nothing to change (the schema, whose
    metadata holds the run description, is only looked at when needed)."""
    if once is None:
        once = "next_obs" in columns and is_once(batch.schema)
    if once:
        batch = restore(batch, logical_schema(batch.schema))
    if not filtered and where.expression is not None:
        batch = batch.filter(where.expression)
    if text_info and "info" in columns:
        batch = with_text_info(batch, text_info_schema(batch.schema))
    if batch.num_columns != len(columns) or batch.column_names != list(columns):
        batch = batch.select(list(columns))
    return batch


class ArrowRun:
    """A run directory the Arrow sink or the collector wrote.

    >>> import relayrl_gym, tempfile
    >>> envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tempfile.mkdtemp())
    >>> _ = envs.reset(seed=1); _ = envs.step(envs.action_space.sample()); envs.close()
    >>> run = ArrowRun(envs.run_path)
    >>> run.count(Where()), run.run_id == envs.run_id
    (2, True)
    """

    def __init__(self, path: Path, *, text_info: bool = True) -> None:
        """Lists the run's parts and reads their schemas; no data is read.

        Args:
            path: the run directory.
            text_info: give each row's info as JSON text (False: as stored, to send the
                batches on as they were kept).

        Raises:
            DatasetError: ``path`` is not a run directory.
        """
        self.path = path
        self._text_info = text_info
        if not (path / RUN_FILE).is_file():
            raise DatasetError(f"{str(path)!r} is not a relayrl-gym run directory (no "
                               f"{RUN_FILE}); pass the directory of one run, e.g. "
                               "relayrl_runs/<run_id>, or a folder of runs")
        # Every part in name order (the order written): a whole file read from its memory
        # map, the whole batches of one a crash cut short, or one being written (read up to
        # its size when the run was opened: a dataset is the run as it was then).
        self._parts: list[_Part] = []
        schemas: list[pa.Schema] = []
        for name, file in self._listing():
            if file.name != name:  # being written
                try:
                    size = file.stat().st_size
                except FileNotFoundError:  # completed since it was listed: a whole part
                    file = path / name
                else:
                    self._parts.append(_Part(file, final=path / name, size=size))
                    schemas.extend(_stream_schema(file))
                    continue
            try:
                part = _Part.whole_file(file)
            except (pa.ArrowInvalid, OSError) as err:
                batches = read_in_progress(file)
                warnings.warn(f"{str(file)!r} is not a complete Arrow file ({err}); read "
                              f"the {len(batches)} whole record batches in it and skipped "
                              "the rest", RuntimeWarning, stacklevel=4)
                self._parts.append(_Part(file, torn=batches))
                schemas.extend(b.schema for b in batches[:1])
            else:
                self._parts.append(part)
                schemas.append(part.schema)
        self._stored = schemas[0] if schemas else None

    def _listing(self) -> list[tuple[str, Path]]:
        # One listing: a file renamed from in-progress to final while we read is still found.
        files: list[tuple[str, Path]] = []
        for entry in os.scandir(self.path):
            if fnmatch.fnmatchcase(entry.name, PART_GLOB):
                files.append((entry.name, Path(entry.path)))
            elif fnmatch.fnmatchcase(entry.name, in_progress_name(PART_GLOB)):
                files.append((final_name(entry.name), Path(entry.path)))
        return sorted(files)

    @property
    def location(self) -> str:
        return str(self.path)

    @cached_property
    def stored(self) -> pa.Schema:
        """The schema of the run's files (the ``once`` layout and stored infos as they are)."""
        if self._stored is not None:
            return self._stored
        meta = json.loads((self.path / RUN_FILE).read_text())
        return TransitionSchema.build(space_from_json(meta["observation_space"]),
                                      space_from_json(meta["action_space"]), metadata=meta).arrow

    @cached_property
    def schema(self) -> TransitionSchema:
        stored = self.stored
        return TransitionSchema.from_arrow(logical_schema(stored) if is_once(stored) else stored)

    @cached_property
    def arrow(self) -> pa.Schema:
        """The run's rows as readers see them (next_obs whole, info as text unless asked)."""
        stored = self.stored
        logical = logical_schema(stored) if is_once(stored) else stored
        return text_info_schema(logical) if self._text_info else logical

    @property
    def run_id(self) -> str:
        return str(self.schema.metadata.get("run_id", self.path.name))

    def count(self, where: Where) -> int:
        """Rows ``where`` keeps; with no filter, from the files' batch headers alone."""
        total = 0
        for part in self._parts:
            if part.whole and where.expression is None:
                with pa.ipc.open_file(pa.memory_map(str(part.path))) as reader:
                    total += reader.count_rows()
            else:
                unit = self._unit(part, sorted(where.columns) or ["step"], where)
                total += sum(batch.num_rows for batch in unit())
        return total

    def units(self, columns: Sequence[str], where: Where
              ) -> list[Callable[[], Iterator[pa.RecordBatch]]]:
        """The run's rows as independent pieces (one per part file), in the order written."""
        return [self._unit(part, columns, where) for part in self._parts]

    def _unit(self, part: _Part, columns: Sequence[str], where: Where
              ) -> Callable[[], Iterator[pa.RecordBatch]]:
        text_info = self._text_info
        if part.whole:
            return functools.partial(_logical_file, part, columns, where, text_info)

        def read() -> Iterator[pa.RecordBatch]:
            if part.torn is not None:
                batches: Iterator[pa.RecordBatch] = iter(part.torn)
            else:
                try:
                    batches = iter_in_progress(part.path, part.size)
                except FileNotFoundError:  # completed and renamed since it was listed
                    batches = iter_in_progress(part.final or part.path, part.size)
            for batch in batches:
                yield _logical(batch, columns, where, filtered=False, text_info=text_info)
        return read


@dataclass(frozen=True)
class _Part:
    """One part file of a run: whole (its schema and number of batches, from its footer),
    torn (its whole batches, read when the run was opened) or being written (``final``: its
    name once complete; ``size``: bytes when opened)."""

    path: Path
    torn: list[pa.RecordBatch] | None = None
    final: Path | None = None
    size: int | None = None
    schema: pa.Schema | None = None
    batches: int = 0

    @classmethod
    def whole_file(cls, path: Path) -> _Part:
        """A complete part, its footer read (`pa.ArrowInvalid` or `OSError` if torn)."""
        with pa.ipc.open_file(pa.memory_map(str(path))) as reader:
            return cls(path, size=path.stat().st_size, schema=reader.schema,
                       batches=reader.num_record_batches)

    @property
    def whole(self) -> bool:
        return self.torn is None and self.final is None


#: Parts whose record batches are smaller than this (as stored) are decompressed a few
#: batches ahead on two threads: many small batches, where the caller's per-batch work and the
#: decompression overlap best. Larger batches are read one at a time, their buffers
#: decompressed in parallel by Arrow, so memory holds one batch.
_READ_AHEAD_BELOW = 1024 * 1024
_READ_AHEAD = 4


def _read_file(part: _Part, read: Sequence[str], where: Where) -> Iterator[pa.RecordBatch]:
    """The columns ``read`` of a whole part, a batch at a time from its memory map (only the
    fields asked for are read and decompressed), rows chosen by ``where``."""
    assert part.schema is not None and part.size is not None  # a whole part's
    names, count = part.schema.names, part.batches
    fields = sorted({names.index(n) for n in read} | {names.index(n) for n in where.columns})
    ahead = part.size // max(count, 1) < _READ_AHEAD_BELOW
    options = pa.ipc.IpcReadOptions(included_fields=fields, use_threads=not ahead)
    with pa.ipc.open_file(pa.memory_map(str(part.path)), options=options) as reader:
        batches = _ahead(reader, count) if ahead else (reader.get_batch(i) for i in range(count))
        for batch in batches:
            if where.expression is not None:
                batch = batch.filter(where.expression)
            if batch.num_rows:
                yield batch


def _ahead(reader: pa.ipc.RecordBatchFileReader, count: int) -> Iterator[pa.RecordBatch]:
    """The reader's batches in order, the next `_READ_AHEAD` decompressed meanwhile on a pool
    whose threads belong to this read (joined when it ends, is closed or collected)."""
    with ThreadPoolExecutor(2, thread_name_prefix="relayrl-read-ahead") as pool:
        pending = deque(pool.submit(reader.get_batch, i) for i in range(min(_READ_AHEAD, count)))
        following = len(pending)
        try:
            while pending:
                batch = pending.popleft().result()
                if following < count:
                    pending.append(pool.submit(reader.get_batch, following))
                    following += 1
                yield batch
        finally:
            for future in pending:
                future.cancel()


def _logical_file(part: _Part, columns: Sequence[str], where: Where, text_info: bool
                  ) -> Iterator[pa.RecordBatch]:
    """A whole part's rows as readers see them (`_logical`)."""
    if "next_obs" not in columns or not is_once(part.schema):
        for batch in _read_file(part, columns, where):
            yield _logical(batch, columns, where, filtered=True, once=False,
                           text_info=text_info)
        return
    # Rows are chosen after next_obs is restored: a dropped row may hold a kept row's next
    # observation.
    read = set(columns) | set(_RESTORE_COLUMNS) | where.columns
    for batch in _read_file(part, sorted(read), Where()):
        yield _logical(batch, columns, where, filtered=False, once=True, text_info=text_info)


def _stream_schema(path: Path) -> list[pa.Schema]:
    """The schema of an in-progress part ([] when it holds none yet or is gone)."""
    try:
        for batch in iter_in_progress(path):
            return [batch.schema]
    except FileNotFoundError:
        pass
    return []


class SqlRun:
    """One run of a database a SQL sink wrote; its rows are read whole on first use."""

    def __init__(self, url: str, run_id: str) -> None:
        """Reads the run's schema; ``url``: the database URL without ``?run=``."""
        self._url, self._run_id = url, run_id
        self.arrow_stored = sql_run_schema(url, run_id)

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def location(self) -> str:
        return f"{self._url}?run={self._run_id}"

    @cached_property
    def schema(self) -> TransitionSchema:
        return TransitionSchema.from_arrow(self.arrow_stored)

    @cached_property
    def arrow(self) -> pa.Schema:
        return text_info_schema(self.arrow_stored)

    @cached_property
    def _table(self) -> pa.Table:
        return read_sql_run(self._url, self._run_id, self.arrow_stored)

    def count(self, where: Where) -> int:
        if where.expression is None:
            return self._table.num_rows
        return self._table.filter(where.expression).num_rows

    def units(self, columns: Sequence[str], where: Where
              ) -> list[Callable[[], Iterator[pa.RecordBatch]]]:
        def scan() -> Iterator[pa.RecordBatch]:
            table = self._table
            if where.expression is not None:
                table = table.filter(where.expression)
            yield from table.select(list(columns)).to_batches(max_chunksize=65536)
        return [scan]


def spaces_key(schema: pa.Schema) -> tuple[str, str]:
    """What runs must share to be read as one dataset: their observation and action spaces."""
    meta = json.loads((schema.metadata or {})[METADATA_KEY])
    return (json.dumps(meta["observation_space"], sort_keys=True),
            json.dumps(meta["action_space"], sort_keys=True))
