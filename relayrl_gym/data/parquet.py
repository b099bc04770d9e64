"""A dataset as Parquet files laid out the way the Hugging Face Hub, ``datasets``, DuckDB,
Polars and Spark read them, with a dataset card.

``folder/data/train-00000-of-00003.parquet``, ... hold every row with the columns of the data
schema (``next_obs`` whole, ``info`` as JSON text), files of about ``file_bytes`` each, row
groups of about 64 MiB; ``folder/README.md`` is the dataset card: a YAML header the Hub reads
(the ``train`` split's files), then the spaces, the runs, the columns and how to read them.
Observations keep their shapes and dtypes in the Arrow schema stored in each file, so pyarrow
reads them back as they were recorded; other readers see flat lists (the card gives the
shapes).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from relayrl_gym._version import __version__
from relayrl_gym.data.columns import COLUMNS
from relayrl_gym.errors import DatasetError

if TYPE_CHECKING:
    from relayrl_gym.data.dataset import Dataset

__all__ = ["export_parquet"]

_ROW_GROUP_BYTES = 64 * 1024 * 1024
_CODECS = frozenset({"none", "snappy", "gzip", "brotli", "lz4", "zstd"})


def export_parquet(ds: Dataset, folder: str | os.PathLike[str], *,
                   file_bytes: int = 256 * 1024 * 1024, compression: str = "zstd",
                   name: str | None = None, progress: bool = False) -> Path:
    """Writes every row of ``ds`` under ``folder`` (which must be new or empty); returns it.

    Args:
        ds: the dataset (its filters apply).
        folder: where to write; created if missing.
        file_bytes: about how many bytes of rows (before compression) go in one file.
        compression: Parquet compression codec (zstd, snappy, gzip, none).
        name: the dataset's name in the card (default: the folder's name).
        progress: show a progress bar (rows written).

    Raises:
        DatasetError: ``folder`` exists and is not empty (nothing is overwritten), the
            dataset holds no rows, or ``file_bytes`` / ``compression`` are not valid.
    """
    if not isinstance(file_bytes, int) or file_bytes < 1:
        raise DatasetError(f"`file_bytes` must be an int >= 1, got {file_bytes!r}")
    if not isinstance(compression, str) or compression.lower() not in _CODECS:
        raise DatasetError(f"`compression` must be one of {', '.join(sorted(_CODECS))}, got "
                           f"{compression!r}")
    root = Path(folder)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"{str(root)!r} already exists and is not an empty folder; export "
                           "to a new folder (nothing was written)")
    rows = len(ds)
    if rows == 0:
        raise DatasetError("the dataset holds no rows to export (check its filters)")
    schema = ds.arrow_schema
    # The first folder this call makes (root or one of its parents): removed if it fails.
    made = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    data = root / "data"
    data.mkdir(parents=True)
    try:
        batches = ds.record_batches()
        first = next(batches)
        row_bytes = max(1, first.nbytes // max(first.num_rows, 1))
        per_file = max(1, file_bytes // row_bytes)
        per_group = max(1, min(per_file, _ROW_GROUP_BYTES // row_bytes))
        files = -(-rows // per_file)
        stream = _chain(first, batches)
        if progress:
            stream = _counted(stream, rows)
        _write(data, schema, stream, per_file, per_group, files, compression)
        _card(root, ds, schema, rows, files, name or root.resolve().name)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        else:
            shutil.rmtree(data, ignore_errors=True)
            (root / "README.md").unlink(missing_ok=True)
        raise
    return root


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]
           ) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest


def _counted(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    with tqdm(total=rows, unit="rows", desc="export") as bar:
        for batch in batches:
            yield batch
            bar.update(batch.num_rows)


def _write(data: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch], per_file: int,
           per_group: int, files: int, compression: str) -> None:
    writer: pq.ParquetWriter | None = None
    number, in_file = 0, 0
    try:
        for batch in batches:
            start = 0
            while start < batch.num_rows:
                if writer is None:
                    path = data / f"train-{number:05d}-of-{files:05d}.parquet"
                    writer = pq.ParquetWriter(path, schema, compression=compression)
                take = min(batch.num_rows - start, per_file - in_file)
                writer.write_batch(batch.slice(start, take), row_group_size=per_group)
                start += take
                in_file += take
                if in_file == per_file:
                    writer.close()
                    writer, number, in_file = None, number + 1, 0
    finally:
        if writer is not None:
            writer.close()


def _card(root: Path, ds: Dataset, schema: pa.Schema, rows: int, files: int, name: str) -> None:
    meta = ds.runs_metadata
    first = next(iter(meta.values()))
    env_id = first.get("env_id") or "unknown"
    columns = "\n".join(f"| `{f.name}` | `{f.type}` |" for f in schema if f.name in COLUMNS)
    shapes = {k.decode(): v.decode() for k, v in (schema.field("obs").metadata or {}).items()}
    runs = "\n".join(f"- `{run_id}`" for run_id in list(meta)[:50])
    more = f"\n- ... and {len(meta) - 50} more" if len(meta) > 50 else ""
    card = f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
tags:
- reinforcement-learning
- relayrl-gym
---
# {name}

Transitions recorded with relayrl-gym {__version__}: {rows} rows in {files} Parquet file(s),
from {len(meta)} run(s) of `{env_id}`.

- Observation space: `{ds.observation_space}`
- Action space: `{ds.action_space}`
- Observation column metadata: `{json.dumps(shapes)}`

One row per transition of one actor: `obs`, `action`, `reward`, `next_obs`, `terminated`,
`truncated`, with the run, actor, agent, episode and step that identify it. Array observations
are stored flat (row-major); reshape them to the observation space's shape. Readers:

```python
import datasets; datasets.load_dataset("parquet", data_dir="data")
import duckdb; duckdb.sql("SELECT * FROM 'data/*.parquet'")
import polars; polars.read_parquet("data/*.parquet")
import relayrl_gym  # the original runs: relayrl_gym.load(<run directory>)
```

## Columns

| column | type |
|---|---|
{columns}

## Runs

{runs}{more}
"""
    (root / "README.md").write_text(card)
