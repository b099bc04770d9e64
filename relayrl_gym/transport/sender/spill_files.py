"""Writing a ZMQ sink's close-time spill: the batches the collector never acknowledged, as a
local Arrow run, and the index of their run, sender, token and sequence numbers
(`relayrl_gym.transport.sender.spill` reads, checks and resends it)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, NoReturn

import pyarrow as pa

from relayrl_gym.errors import SinkError
from relayrl_gym.sinks.arrow import ArrowSink
from relayrl_gym.storage.run_dir import write_json_atomic

if TYPE_CHECKING:
    from relayrl_gym.transport.sender.outbox import Pending

__all__ = ["SPILL_INDEX", "SpillIndex", "spill_pending", "write_spill"]

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
    #: The sender's token from the collector (None: it never got one); a resend presents it.
    token: str | None = None


def write_spill(spill_dir: Path, run_id: str, sender_id: str, endpoint: str,
                schema: pa.Schema, pending: list[Pending], token: str | None = None) -> Path:
    """Writes ``pending`` (oldest first) as the Arrow run ``spill_dir/run_id`` with its index;
    returns the run directory. Raises `SinkError` or `OSError` when it cannot."""
    spill = ArrowSink(spill_dir, compression="lz4", obs_layout="pairs")  # batches as sent
    spill.start(run_id, schema)
    assert spill.run_path is not None
    # The index first: a spill whose data is there but whose index is not could not be told
    # apart from the collector's copy.
    index = {"run_id": run_id, "sender_id": sender_id, "endpoint": endpoint, "token": token,
             "batches": [{"seq": item.seq, "rows": item.rows} for item in pending]}
    write_json_atomic(spill.run_path / SPILL_INDEX, index)
    for item in pending:
        spill.write(pa.ipc.read_record_batch(item.payload, schema))
    spill.close()
    return spill.run_path


def spill_pending(spill_dir: Path, run_id: str, sender_id: str, endpoint: str,
                  schema: pa.Schema, pending: list[Pending], waited: float,
                  token: str | None = None, refused: str | None = None) -> NoReturn:
    """Spills what a closing sink could not deliver (`write_spill`) and raises the `SinkError`
    that says where it is and how to deliver it (and ``refused``: the collector's last
    refusal, e.g. of this client's key)."""
    rows = sum(item.rows for item in pending)
    try:
        path = write_spill(spill_dir, run_id, sender_id, endpoint, schema, pending, token)
    except (SinkError, OSError) as err:
        raise SinkError(f"{rows} rows were never acknowledged by the collector at {endpoint} "
                        f"and could not be spilled to {str(spill_dir)!r} ({err}); they may be "
                        "lost") from err
    why = f" The collector refused: {refused}." if refused else ""
    raise SinkError(
        f"{rows} rows (batches {pending[0].seq}..{pending[-1].seq} of sender {sender_id}) were "
        f"not acknowledged by the collector at {endpoint} within {waited} s.{why} They are kept in "
        f"{str(path)!r} with their sequence numbers in {SPILL_INDEX}; the collector may have "
        "committed some of them. Once it is reachable, send them with `relayrl-gym resend "
        f"{shlex.quote(str(path))}` (or relayrl_gym.transport.spill.resend(path)): it keeps "
        "each batch once and the spill is removed. Or take only the rows it lacks with "
        "relayrl_gym.transport.spill.uncollected(spill, collector_run_dir)")
