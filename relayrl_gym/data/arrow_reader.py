"""Reads a run directory written by `ArrowSink`, including files of a run that crashed."""

from __future__ import annotations

import fnmatch
import json
import os
import warnings
from pathlib import Path

import pyarrow as pa

from relayrl_gym.errors import DatasetError
from relayrl_gym.schema.infos import text_info_schema, with_text_info
from relayrl_gym.schema.spaces import space_from_json
from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.storage.obs_layout import is_once, logical_schema, restore
from relayrl_gym.storage.run_dir import (
    PART_GLOB,
    RUN_FILE,
    final_name,
    in_progress_name,
    read_in_progress,
)

__all__ = ["read_run_dir"]


def _read_complete(path: Path) -> list[pa.RecordBatch]:
    with pa.ipc.open_file(pa.memory_map(str(path))) as reader:
        return [reader.get_batch(i) for i in range(reader.num_record_batches)]


def _read_part(file: Path, final: Path) -> list[pa.RecordBatch]:
    if file == final:
        return _read_torn_or_complete(file)
    try:
        return read_in_progress(file)
    except FileNotFoundError:  # completed and renamed since the directory was listed
        return _read_torn_or_complete(final)


def _read_torn_or_complete(path: Path) -> list[pa.RecordBatch]:
    """A completed part; one that is empty or torn (a full disk, a copy cut short) gives the
    whole batches it holds, with a warning, instead of failing the whole run."""
    try:
        return _read_complete(path)
    except (pa.ArrowInvalid, OSError) as err:
        batches = read_in_progress(path)
        warnings.warn(f"{str(path)!r} is not a complete Arrow file ({err}); read the "
                      f"{len(batches)} whole record batches in it and skipped the rest",
                      RuntimeWarning, stacklevel=4)
        return batches


def read_run_dir(path: Path, *, text_info: bool = True) -> tuple[pa.Table, TransitionSchema]:
    """All rows of one run directory, in the order they were written; ``text_info``: each
    row's info as its JSON text (False: as stored, to send the batches on)."""
    run_file = path / RUN_FILE
    if not run_file.is_file():
        raise DatasetError(f"{str(path)!r} is not a relayrl-gym run directory (no {RUN_FILE}); "
                           "pass the directory of one run, e.g. relayrl_runs/<run_id>")
    # One listing: a file renamed from in-progress to final while we read is still found.
    files: list[tuple[str, Path]] = []
    for entry in os.scandir(path):
        if fnmatch.fnmatchcase(entry.name, PART_GLOB):
            files.append((entry.name, Path(entry.path)))
        elif fnmatch.fnmatchcase(entry.name, in_progress_name(PART_GLOB)):
            files.append((final_name(entry.name), Path(entry.path)))
    batches: list[pa.RecordBatch] = []
    for name, file in sorted(files):
        batches.extend(_read_part(file, path / name))
    if batches:
        stored = batches[0].schema
        if is_once(stored):  # observations stored once: whole transitions back, batch by batch
            stored = logical_schema(stored)
            batches = [restore(batch, stored) if is_once(batch.schema) else batch
                       for batch in batches]
        schema = TransitionSchema.from_arrow(stored)
        if not text_info:
            return pa.Table.from_batches(batches, schema=stored), schema
        readable = text_info_schema(stored)  # infos stored as numbers: their JSON text back
        batches = [with_text_info(batch, readable) for batch in batches]
        return pa.Table.from_batches(batches, schema=readable), schema
    meta = json.loads(run_file.read_text())

    schema = TransitionSchema.build(space_from_json(meta["observation_space"]),
                                    space_from_json(meta["action_space"]), metadata=meta)
    empty = text_info_schema(schema.arrow) if text_info else schema.arrow
    return empty.empty_table(), schema
