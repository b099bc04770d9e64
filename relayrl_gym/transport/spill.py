"""The ZMQ sink's close-time spill: batches the collector never acknowledged, kept in a local
Arrow run with their sequence numbers, and how to tell which of them the collector has.

A collector takes a sender's batches in sequence order only and records, per run and sender,
the last one it committed (``_collector.json`` in the run directory of a directory sink,
``STATE_DIR/<run_id>.json`` for a database sink). A spilled batch whose acknowledgement was lost
is in the collector's dataset already; the sender cannot know it, but the spill's index
(``_zmq_spill.json``: run, sender, and each batch's ``seq`` and row count, in order) and the
collector's state together can: the collector holds exactly the batches with ``seq`` up to its
last seq of that sender. `uncollected` applies that rule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from relayrl_gym.errors import DatasetError, SinkError

if TYPE_CHECKING:
    from relayrl_gym.transport.outbox import Pending

__all__ = ["SPILL_INDEX", "SpillIndex", "read_spill", "uncollected", "write_spill"]

#: The index beside a spilled run's data (the underscore keeps it out of pyarrow.dataset).
SPILL_INDEX = "_zmq_spill.json"


class SpillIndex(NamedTuple):
    """What a ZMQ sink spilled: its run, sender, collector, and each batch's ``seq`` and
    ``rows`` in the order the rows are stored."""

    run_id: str
    sender_id: str
    endpoint: str
    seqs: tuple[int, ...]
    rows: tuple[int, ...]


def write_spill(spill_dir: Path, run_id: str, sender_id: str, endpoint: str,
                schema: pa.Schema, pending: list[Pending]) -> Path:
    """Writes ``pending`` (oldest first) as the Arrow run ``spill_dir/run_id`` with its index;
    returns the run directory. Raises `SinkError` or `OSError` when it cannot."""
    from relayrl_gym.sinks.arrow import ArrowSink
    from relayrl_gym.transport.run_store import write_json_atomic

    spill = ArrowSink(spill_dir, compression="lz4")
    spill.start(run_id, schema)
    assert spill.run_path is not None
    # The index first: a spill whose data is there but whose index is not could not be told
    # apart from the collector's copy.
    index = {"run_id": run_id, "sender_id": sender_id, "endpoint": endpoint,
             "batches": [{"seq": item.seq, "rows": item.rows} for item in pending]}
    write_json_atomic(spill.run_path / SPILL_INDEX, index)
    for item in pending:
        spill.write(pa.ipc.read_record_batch(item.payload, schema))
    spill.close()
    return spill.run_path


def read_spill(path: str | os.PathLike[str]) -> SpillIndex:
    """The index of a spilled run directory (``SPILL_DIR/<run_id>``)."""
    file = Path(path) / SPILL_INDEX
    try:
        raw = json.loads(file.read_text())
        batches = raw["batches"]
        return SpillIndex(str(raw["run_id"]), str(raw["sender_id"]), str(raw["endpoint"]),
                          tuple(int(b["seq"]) for b in batches),
                          tuple(int(b["rows"]) for b in batches))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{str(path)!r} is not a ZMQ sink's spill (cannot read {SPILL_INDEX}:"
                           f" {type(err).__name__}: {err}); pass the spilled run directory the "
                           "sink's error named") from err


def _collected_last_seq(state: Any, sender_id: str) -> int:
    """The last seq of ``sender_id`` in a collector's state: a run directory (its
    ``_collector.json``), a state JSON file, or the seq itself."""
    if isinstance(state, int) and not isinstance(state, bool):
        return state
    from relayrl_gym.transport.run_store import STATE_FILE

    file = Path(state)
    if file.is_dir():
        file = file / STATE_FILE
    try:
        return int(json.loads(file.read_text())["senders"].get(sender_id, -1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SinkError(f"cannot read the collector state {str(file)!r} ({err}); pass the "
                        "collector's run directory, its <state_dir>/<run_id>.json, or the "
                        "sender's last committed seq") from err


def uncollected(spill: str | os.PathLike[str], collector_state: Any) -> pa.Table:
    """The spilled rows the collector does not hold, in order.

    Args:
        spill: the spilled run directory (``SPILL_DIR/<run_id>``).
        collector_state: the collector's copy of the run: its run directory, its state file
            (``STATE_DIR/<run_id>.json`` of a database sink), or the sender's last committed
            seq as an int.

    Returns:
        The rows of the spilled batches whose ``seq`` is past the last one the collector
        committed for this sender; the others are in the collector's dataset already.
    """
    from relayrl_gym.data.arrow_reader import read_run_dir

    index = read_spill(spill)
    last = _collected_last_seq(collector_state, index.sender_id)
    table, _ = read_run_dir(Path(spill))
    if table.num_rows != sum(index.rows):
        raise DatasetError(f"the spill {str(spill)!r} holds {table.num_rows} rows but its "
                           f"{SPILL_INDEX} lists {sum(index.rows)}; it was changed after the "
                           "sink wrote it")
    keep, offset = [], 0
    for seq, rows in zip(index.seqs, index.rows):
        if seq > last:
            keep.append(table.slice(offset, rows))
        offset += rows
    return pa.concat_tables(keep) if keep else table.slice(0, 0)
