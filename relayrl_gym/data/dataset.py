"""`relayrl_gym.load`: recorded runs back as one dataset, read lazily: filtered, streamed in
batches, sampled, as torch datasets, pyarrow, numpy, episodes, pandas and summaries."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from relayrl_gym.data.columns import check_columns, decode, join, length, take, writable
from relayrl_gym.data.discover import Spec, find_runs
from relayrl_gym.data.episodes import EPISODE_COLUMNS, STAT_COLUMNS, episodes_of, summarize
from relayrl_gym.data.parquet import export_parquet
from relayrl_gym.data.records import Episode, Summary, Transitions
from relayrl_gym.data.replay import Replay
from relayrl_gym.data.sources import RunSource, Where
from relayrl_gym.errors import DatasetError, missing_extra
from relayrl_gym.schema.transitions import TransitionSchema

if TYPE_CHECKING:
    import pandas as pd
    from gymnasium import spaces

__all__ = ["Dataset", "load"]

T = TypeVar("T")


@contextlib.contextmanager
def _closing(iterator: Iterator[T]) -> Iterator[Iterator[T]]:
    """``iterator``, closed when the block ends, an exception included: a read stopped part
    way joins its read-ahead threads then, not when a traceback lets go of it."""
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


class Dataset:
    """The recorded transitions of one or many runs with the same spaces, read lazily.

    Opening a dataset reads metadata only. `iter_batches` streams numpy batches with bounded
    memory, `filter` narrows rows (pushed down into the scan), `sample` and `to_torch` draw
    random rows, `episodes` and `summary` stream episodes and statistics; `table`,
    `transitions` and `to_pandas` read every row into memory. The rows, dtypes and shapes are
    the same whichever sink wrote them (schema in the README); ``run_id`` tells runs apart.

    >>> import relayrl_gym, tempfile
    >>> envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tempfile.mkdtemp())
    >>> _ = envs.reset(seed=1)
    >>> for _ in range(5):  # shorter than any CartPole episode: no autoreset pseudo-steps
    ...     _ = envs.step(envs.action_space.sample())
    >>> envs.close()
    >>> ds = relayrl_gym.load(envs.run_path)
    >>> len(ds), ds.transitions().obs.dtype
    (10, dtype('float32'))
    >>> batch = next(ds.iter_batches(batch_size=4, columns=["obs", "reward"]))
    >>> batch["obs"].shape, ds.sample(3, seed=0)["action"].shape
    ((4, 4), (3,))
    """

    def __init__(self, runs: Sequence[RunSource], where: Where | None = None, *,
                 source: str = "", cache_dir: str | os.PathLike[str] | None = None) -> None:
        """Use `relayrl_gym.load`.

        Args:
            runs: the runs (all with the same spaces).
            where: the rows kept (default: all).
            source: what was loaded, for messages.
            cache_dir: where `sample` and `to_torch` keep decoded columns (default: the
                system's temporary folder).
        """
        if not runs:
            raise DatasetError("a dataset needs at least one run")
        self._runs = list(runs)
        self._where = where if where is not None else Where()
        self.source = source
        self._cache_dir = cache_dir
        self._replays: dict[tuple[str, ...], Replay] = {}

    # -- what it holds ----------------------------------------------------------------------

    @property
    def run_ids(self) -> list[str]:
        """The runs read, in load order."""
        return [run.run_id for run in self._runs]

    @property
    def run_id(self) -> str:
        """The run's id (a dataset of several runs has `run_ids`)."""
        return self._one_run().run_id

    @property
    def metadata(self) -> dict[str, Any]:
        """The run description recorded with the data (spaces, env spec, config, versions);
        a dataset of several runs has `runs_metadata`."""
        return self._one_run().schema.metadata

    @property
    def runs_metadata(self) -> dict[str, dict[str, Any]]:
        """Each run's description, by run id."""
        return {run.run_id: run.schema.metadata for run in self._runs}

    def _one_run(self) -> RunSource:
        if len(self._runs) != 1:
            raise DatasetError(f"this dataset holds {len(self._runs)} runs; ds.run_ids lists "
                               "them and ds.runs_metadata gives each one's description")
        return self._runs[0]

    @property
    def schema(self) -> TransitionSchema:
        """The runs' `TransitionSchema` (spaces and their column codecs)."""
        return self._runs[0].schema

    @property
    def observation_space(self) -> spaces.Space:
        return self.schema.observation_space

    @property
    def action_space(self) -> spaces.Space:
        return self.schema.action_space

    def __len__(self) -> int:
        """Transitions kept by the filters; without filters, from file metadata alone."""
        return sum(run.count(self._where) for run in self._runs)

    def __repr__(self) -> str:
        runs = f"{len(self._runs)} runs" if len(self._runs) > 1 else f"run={self._runs[0].run_id!r}"
        return f"Dataset({self.source!r}, {runs})"

    # -- narrowing ---------------------------------------------------------------------------

    def filter(self, *, runs: Iterable[str] | None = None, agents: Iterable[str] | None = None,
               actors: Iterable[str] | None = None, env_indices: Iterable[int] | None = None,
               episodes: Iterable[int] | None = None,
               model_versions: Iterable[int] | None = None) -> Dataset:
        """The rows whose run, agent, actor, env copy, episode id and model version are among
        those given (None: any; one value or a list; a ``range`` of versions or indices).
        Episode ids are unique within a run: with several runs, combine ``episodes`` with
        ``runs``.

        Raises:
            DatasetError: a run id that is not in the dataset, or a value of the wrong type
                (names are strings, the rest integers).
        """
        chosen = self._runs
        if runs is not None:
            wanted = [runs] if isinstance(runs, str) else list(runs)
            known = {run.run_id: run for run in self._runs}
            unknown = [r for r in wanted if r not in known]
            if unknown:
                raise DatasetError(f"`runs` names {unknown}, which this dataset does not hold; "
                                   f"it holds {sorted(known)}")
            chosen = [known[r] for r in dict.fromkeys(wanted)]
            if not chosen:
                raise DatasetError("`runs` is empty; name at least one of ds.run_ids")
        where = self._where.and_(Where.of(agents=agents, actors=actors, env_indices=env_indices,
                                          episodes=episodes, model_versions=model_versions))
        return Dataset(chosen, where, source=self.source, cache_dir=self._cache_dir)

    # -- streaming ---------------------------------------------------------------------------

    def _batches(self, columns: Sequence[str], order: np.random.Generator | None = None
                 ) -> Iterator[tuple[RunSource, pa.RecordBatch]]:
        """Every run's rows kept, in `arrow_schema` (a run whose policy outputs or infos have
        other types is cast), without empty batches; ``order``: part files shuffled."""
        target = _select(self.arrow_schema, columns)
        units = [(run, unit, _select(run.arrow, columns) != target)
                 for run in self._runs for unit in run.units(columns, self._where)]
        if order is not None:
            units = [units[i] for i in order.permutation(len(units))]
        for run, unit, cast in units:
            with _closing(unit()) as batches:  # read-ahead ends with the read
                for batch in batches:
                    if batch.num_rows:
                        yield run, _cast(batch, target) if cast else batch

    def iter_batches(self, batch_size: int = 4096, columns: Sequence[str] | None = None, *,
                     shuffle: bool = False, seed: int | np.random.Generator | None = None,
                     shuffle_buffer: int | None = None, drop_last: bool = False
                     ) -> Iterator[dict[str, Any]]:
        """The rows as dicts of numpy arrays, ``batch_size`` rows each (the last may be
        shorter), streamed: memory holds a few batches, never the dataset.

        Args:
            batch_size: rows per batch.
            columns: the columns to read (default obs, action, reward, next_obs, terminated,
                truncated); observations and actions come with their spaces' shapes and
                dtypes, strings as object arrays.
            shuffle: read the files in a random order and mix rows through a buffer of
                ``shuffle_buffer`` rows (default max(16 batches, 65 536 rows)).
            seed: seed or generator of the shuffle.
            drop_last: leave out a last batch shorter than ``batch_size``.
        """
        if batch_size < 1:
            raise DatasetError(f"`batch_size` must be >= 1, got {batch_size}")
        names = check_columns(columns)
        rng = (seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
               ) if shuffle else None
        with _closing(self._batches(names, rng)) as batches:
            parts = (decode(batch, self.schema) for _, batch in batches)
            if rng is None:
                yield from _rebatch(parts, batch_size, drop_last)
            else:
                size = (shuffle_buffer if shuffle_buffer is not None
                        else max(16 * batch_size, 65536))
                yield from _shuffled(parts, batch_size, rng, max(size, batch_size), drop_last)

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        """The schema of `record_batches` and `to_table` (every run's rows in one schema)."""
        schemas = [run.arrow for run in self._runs]
        if len(schemas) == 1:
            return schemas[0]
        unified = pa.unify_schemas(schemas, promote_options="permissive")
        return pa.schema([unified.field(n) for n in schemas[0].names],
                         metadata=schemas[0].metadata)

    def record_batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The rows as Arrow record batches of `arrow_schema` (default: every column), run by
        run in the order written, streamed."""
        names = list(self.arrow_schema.names) if columns is None else check_columns(columns)
        with _closing(self._batches(names)) as batches:
            for _, batch in batches:
                yield batch

    def to_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row kept, in memory, as one `pyarrow.Table` (default: every column)."""
        names = list(self.arrow_schema.names) if columns is None else check_columns(columns)
        with _closing(self.record_batches(names)) as batches:
            return pa.Table.from_batches(list(batches), schema=_select(self.arrow_schema, names))

    @cached_property
    def table(self) -> pa.Table:
        """Every row and column in memory (`to_table`), read on first use."""
        return self.to_table()

    def transitions(self) -> Transitions:
        """Every row in memory as numpy: obs, action, reward, next_obs, terminated, truncated."""
        rows = decode(self.to_table(list(Transitions._fields)), self.schema)
        return Transitions(**writable(rows))

    def episodes(self) -> Iterator[Episode]:
        """Episodes, each with its observations (T+1), actions (T), rewards and flags, run by
        run in the order they end (unfinished ones, cut off by a reset or by the end of
        recording, last); memory holds the episodes in progress, not the run."""
        for run in self._runs:
            one = Dataset([run], self._where, source=self.source)
            with _closing(one._batches(EPISODE_COLUMNS)) as batches:
                yield from episodes_of((batch for _, batch in batches), run.schema)

    def summary(self) -> Summary:
        """Steps, finished and unfinished episodes, return statistics overall and per actor;
        no observation is read."""
        run_id = self._runs[0].run_id if len(self._runs) == 1 else f"{len(self._runs)} runs"
        with _closing(self._batches(STAT_COLUMNS)) as batches:
            return summarize((batch for _, batch in batches), run_id,
                             self._runs[0].schema.metadata.get("env_id"))

    def to_pandas(self) -> pd.DataFrame:
        """A DataFrame of every row; obs/next_obs/action cells hold arrays of the space's shape."""
        try:
            import pandas  # noqa: F401
        except ImportError as err:
            raise missing_extra("pandas", "pandas") from err
        table = self.table
        decoded = decode(table.select(["obs", "action", "next_obs"]), self.schema)
        frame = table.drop_columns(["obs", "action", "next_obs"]).to_pandas()
        position = list(table.column_names)
        for name in ("obs", "action", "next_obs"):
            codec = self.schema.action if name == "action" else self.schema.obs
            frame.insert(position.index(name), name, codec.rows(decoded[name]))
        return frame

    # -- random access -----------------------------------------------------------------------

    def _replay(self, columns: Sequence[str] | None) -> Replay:
        names = tuple(check_columns(columns))
        replay = self._replays.get(names)
        if replay is None:
            rows = len(self)
            with _closing(self.iter_batches(65536, names)) as batches:
                replay = Replay.build(batches, rows, self._cache_dir)
            self._replays[names] = replay
        return replay

    def sample(self, n: int, *, seed: int | np.random.Generator | None = None,
               columns: Sequence[str] | None = None) -> dict[str, Any]:
        """``n`` transitions drawn uniformly (with replacement), as a dict of numpy arrays.

        The first call decodes the columns once into memory-mapped files under the
        dataset's ``cache_dir`` (one pass, bounded memory); every draw after that indexes them.

        Args:
            n: rows to draw.
            seed: seed or generator (a seed gives the same rows each call).
            columns: as in `iter_batches`.
        """
        if n < 0:
            raise DatasetError(f"`n` must be >= 0, got {n}")
        replay = self._replay(columns)
        if not len(replay):
            raise DatasetError("the dataset holds no transitions to sample (check its filters)")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        return replay.take(rng.integers(0, len(replay), size=n))

    def to_torch(self, columns: Sequence[str] | None = None) -> Any:
        """A map-style `torch.utils.data.Dataset` of the rows: item ``i`` is a dict of tensors
        (nested dicts/tuples for Dict/Tuple spaces), ready for a `DataLoader` (workers map the
        same decoded files; see `sample`)."""
        try:
            from relayrl_gym.data.torch_dataset import TorchTransitions
        except ImportError as err:
            raise missing_extra("torch", "torch") from err
        return TorchTransitions(self._replay(columns))


    # -- out ---------------------------------------------------------------------------------

    def export_minari(self, dataset_id: str, **options: Any) -> list[str]:
        """Writes the dataset as Minari dataset(s) (see `relayrl_gym.data.minari_io`); returns
        the ids created. Needs the ``minari`` extra."""
        from relayrl_gym.data.minari_io import export_minari

        return export_minari(self, dataset_id, **options)

    def export_parquet(self, folder: str | os.PathLike[str], **options: Any) -> Path:
        """Writes the dataset as Parquet files with a dataset card (see
        `relayrl_gym.data.parquet`); returns the folder."""
        return export_parquet(self, folder, **options)

    def plot(self, path: str | os.PathLike[str] | None = None, **options: Any) -> Any:
        """Episode return against environment steps, and episode lengths (see
        `relayrl_gym.data.plots`); written to ``path`` (PNG, SVG, ...) when given. Needs the
        ``plot`` extra."""
        from relayrl_gym.data.plots import plot

        return plot(self, path, **options)


def _cast(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    return pa.Table.from_batches([batch]).cast(schema).combine_chunks().to_batches()[0]


def _select(schema: pa.Schema, names: Sequence[str]) -> pa.Schema:
    return pa.schema([schema.field(n) for n in names], metadata=schema.metadata)


def _rebatch(parts: Iterable[dict[str, Any]], size: int, drop_last: bool
             ) -> Iterator[dict[str, Any]]:
    pending: list[dict[str, Any]] = []
    have = 0
    for part in parts:
        n = length(part)
        start = 0
        if pending:
            need = size - have
            if n < need:
                pending.append(part)
                have += n
                continue
            pending.append(take(part, slice(0, need)))
            yield join(pending)
            pending, have, start = [], 0, need
        while n - start >= size:
            yield writable(take(part, slice(start, start + size)))
            start += size
        if start < n:
            pending, have = [take(part, slice(start, n))], n - start
    if pending and not drop_last:
        yield writable(join(pending))


def _shuffled(parts: Iterable[dict[str, Any]], size: int, rng: np.random.Generator,
              buffer: int, drop_last: bool) -> Iterator[dict[str, Any]]:
    pool: list[dict[str, Any]] = []
    have = 0
    for part in parts:
        pool.append(part)
        have += length(part)
        if have >= buffer:  # hand out all but half a buffer, which mixes with what follows
            rows = take(join(pool), rng.permutation(have))
            out = (have - buffer // 2) // size * size
            for start in range(0, out, size):
                yield take(rows, slice(start, start + size))
            pool, have = [take(rows, slice(out, have))], have - out
    if have:
        rows = take(join(pool), rng.permutation(have))
        end = have // size * size if drop_last else have
        for start in range(0, end, size):
            yield take(rows, slice(start, min(start + size, end)))


def load(path: Spec, *, cache_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Opens recorded runs as one `Dataset`; only metadata is read.

    ``path`` is a run directory (``envs.run_path``); a folder of runs at any depth
    (``"relayrl_runs"``, a collector's output); a glob (``"runs/CartPole-*"``); a database URL
    of a SQL sink, all its runs or the one chosen by ``?run=<run_id>``
    (``"postgresql://user@host/db?run=<run_id>"``); or a list of these. The runs must share
    their observation and action spaces (the error lists the groups otherwise). A crashed run
    is read up to its last whole batch.

    Args:
        path: what to read, as above.
        cache_dir: where `Dataset.sample` and `Dataset.to_torch` keep decoded columns.
    """
    source = str(path) if isinstance(path, (str, os.PathLike)) else f"{len(path)} paths"
    if isinstance(path, Path):
        path = str(path)
    return Dataset(find_runs(path), source=source, cache_dir=cache_dir)
