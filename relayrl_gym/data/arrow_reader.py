"""Reads a run directory written by `ArrowSink`, whole, including files of a run that crashed:
what the spill and resend paths send on (`relayrl_gym.load` reads runs lazily instead)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from relayrl_gym.data.sources import ArrowRun, Where
from relayrl_gym.schema.transitions import TransitionSchema

__all__ = ["read_run_dir"]


def read_run_dir(path: Path, *, text_info: bool = True) -> tuple[pa.Table, TransitionSchema]:
    """All rows of one run directory, in the order they were written; ``text_info``: each
    row's info as its JSON text (False: as stored, to send the batches on).

    Raises:
        DatasetError: ``path`` is not a run directory.
    """
    run = ArrowRun(path, text_info=text_info)
    names = run.arrow.names
    batches = [batch for unit in run.units(names, Where()) for batch in unit()]
    return pa.Table.from_batches(batches, schema=run.arrow), run.schema
