"""The ZMQ sink's close-time spill: batches the collector never acknowledged, kept in a local
Arrow run with their sequence numbers; how to tell which of them the collector has, and how to
send them to it later.

A collector takes a sender's batches in sequence order only and records, per run and sender,
the last one it committed (``_collector.json`` in the run directory of a directory sink,
``STATE_DIR/<run_id>.json`` for a database sink). A spilled batch whose acknowledgement was lost
is in the collector's dataset already; the sender cannot know it, but the spill's index
(``_zmq_spill.json``: run, sender, and each batch's ``seq`` and row count, in order) and the
collector's state together can: the collector holds exactly the batches with ``seq`` up to its
last seq of that sender. `uncollected` applies that rule to the collector's files; `resend`
(``relayrl-gym resend SPILL``) lets the collector apply it, sending the spilled batches as
their original sender with their original sequence numbers.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import json
import math
import os
import shlex
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pyarrow as pa

from relayrl_gym.data.arrow_reader import read_run_dir
from relayrl_gym.errors import ConfigError, DatasetError, SinkError
from relayrl_gym.schema.infos import text_info_schema, with_text_info
from relayrl_gym.storage.run_dir import PART_GLOB, RUN_FILE, STATE_FILE, write_json_atomic
from relayrl_gym.transport.protocol import Header, Kind, ProtocolViolation
from relayrl_gym.transport.sender.sink import ZMQSink
from relayrl_gym.transport.sender.spill_files import (
    SPILL_INDEX,
    SpillIndex,
    spill_pending,
    write_spill,
)

if TYPE_CHECKING:
    from relayrl_gym.transport.sender.outbox import Pending

__all__ = ["SPILL_INDEX", "ResendResult", "SpillIndex", "read_spill", "remove_spill", "resend",
           "resending", "spill_pending", "spilled_batches", "uncollected", "write_spill"]

def read_spill(path: str | os.PathLike[str]) -> SpillIndex:
    """The index of a spilled run directory (``SPILL_DIR/<run_id>``)."""
    if not Path(path).exists():
        raise DatasetError(f"the spill {str(path)!r} does not exist; pass the spilled run "
                           "directory the sink's error named (a resend removes it once the "
                           "collector has every batch)")
    file = Path(path) / SPILL_INDEX
    try:
        raw = json.loads(file.read_text())
        batches = raw["batches"]
        token = raw.get("token")
        return SpillIndex(str(raw["run_id"]), str(raw["sender_id"]), str(raw["endpoint"]),
                          tuple(int(b["seq"]) for b in batches),
                          tuple(int(b["rows"]) for b in batches),
                          None if token is None else str(token))
    except (OSError, ValueError, KeyError, TypeError) as err:
        inside = sorted(f.parent.name for f in Path(path).glob(f"*/{SPILL_INDEX}"))
        hint = f" (here: one of {inside[:5]} in it)" if inside else ""
        raise DatasetError(f"{str(path)!r} is not a ZMQ sink's spill (cannot read {SPILL_INDEX}:"
                           f" {type(err).__name__}: {err}); pass the spilled run directory the "
                           f"sink's error named, SPILL_DIR/<run_id>{hint}") from err


def spilled_batches(path: Path) -> tuple[SpillIndex, pa.Schema, list[pa.RecordBatch]]:
    """A spill's index, schema and batches: one record batch per ``seq``, as it was sent."""
    index = read_spill(path)
    seqs = index.seqs
    try:
        names = Header(Kind.START, {"run": index.run_id, "sender": index.sender_id})
        names.name("run"), names.name("sender")
        if any(b - a != 1 for a, b in itertools.pairwise(seqs)) or min(index.rows,
                                                                       default=0) < 0:
            raise ProtocolViolation(f"its batches must have consecutive seqs and row counts "
                                    f">= 0, got seqs {list(seqs)[:20]} rows "
                                    f"{list(index.rows)[:20]}")
    except ProtocolViolation as err:
        raise DatasetError(f"the spill index {str(path / SPILL_INDEX)!r} is damaged ({err}); "
                           "it was changed after the sink wrote it") from err
    try:
        table, _ = read_run_dir(path, text_info=False)  # the batches as they were sent
    except (OSError, pa.ArrowException) as err:
        raise DatasetError(f"cannot read the spilled rows in {str(path)!r}: {err}") from err
    if table.num_rows != sum(index.rows):
        raise DatasetError(f"the spill {str(path)!r} holds {table.num_rows} rows but its "
                           f"{SPILL_INDEX} lists {sum(index.rows)}; it was changed after the "
                           "sink wrote it")
    batches, offset = [], 0
    for rows in index.rows:
        part = table.slice(offset, rows).combine_chunks().to_batches()
        batches.append(part[0] if part else pa.RecordBatch.from_pylist([], schema=table.schema))
        offset += rows
    return index, table.schema, batches


def _collected_last_seq(state: Any, sender_id: str) -> int:
    """The last seq of ``sender_id`` in a collector's state: a run directory (its
    ``_collector.json``), a state JSON file, or the seq itself."""
    if isinstance(state, int) and not isinstance(state, bool):
        return state
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
    index, schema, batches = spilled_batches(Path(spill))
    last = _collected_last_seq(collector_state, index.sender_id)
    readable = text_info_schema(schema)  # rows as `relayrl_gym.load` gives them
    return pa.Table.from_batches([with_text_info(b, readable)
                                  for seq, b in zip(index.seqs, batches) if seq > last],
                                 schema=readable)


@dataclass(frozen=True)
class ResendResult:
    """What `resend` delivered: the batches (and rows) it sent and the collector committed,
    and those the collector had already (committed before, their acknowledgements lost).

    >>> print(ResendResult("r1", "s1", "tcp://127.0.0.1:7776", 3, 120, 5, 200,
    ...                    Path("spill/r1"), removed=True))  # doctest: +NORMALIZE_WHITESPACE
    run r1, sender s1: 3 batches (120 rows) sent to tcp://127.0.0.1:7776 and committed,
    5 batches (200 rows) the collector had already; spill removed
    """

    run_id: str
    sender_id: str
    endpoint: str
    sent_batches: int
    sent_rows: int
    had_batches: int
    had_rows: int
    spill: Path
    removed: bool

    def __str__(self) -> str:
        fate = "removed" if self.removed else f"kept in {str(self.spill)!r}"
        return (f"run {self.run_id}, sender {self.sender_id}: {self.sent_batches} batches "
                f"({self.sent_rows} rows) sent to {self.endpoint} and committed, "
                f"{self.had_batches} batches ({self.had_rows} rows) the collector had already; "
                f"spill {fate}")


def resend(spill: str | os.PathLike[str], address: str | None = None, *,
           timeout: float = 60.0, curve_keys: str | Path | None = None,
           remove: bool = True) -> ResendResult:
    """Sends a ZMQ sink's spill to the collector, which keeps each batch exactly once.

    The spilled batches go as their original sender with their original sequence numbers
    (a `ZMQSink` resumed as that sender, models off), so the collector skips the ones it
    committed already (acknowledgements lost before the spill) and commits the rest. The
    spill is only read: a resend that fails leaves it as it was, and resending it again is
    always safe.

    Args:
        spill: the spilled run directory (``SPILL_DIR/<run_id>``) the sink's error named.
        address: the collector (``tcp://HOST:PORT``); default: the one the sink sent to.
        timeout: seconds to wait for the collector to acknowledge every batch.
        curve_keys: a client key folder, when the collector requires CurveZMQ.
        remove: remove the spill once the collector has every batch.

    Returns:
        What was sent and what the collector had already.

    Raises:
        DatasetError: ``spill`` is not a ZMQ sink's spill, or was changed since it was written.
        SinkError: the collector did not acknowledge every batch within ``timeout`` (the spill
            is kept; resend it again).
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"`timeout` must be a number of seconds > 0, got {timeout!r}")
    path = Path(spill)
    with resending(path):
        return _resend(path, address, timeout, curve_keys, remove)


@contextlib.contextmanager
def resending(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on the spill's index while it is resent: two resends of one
    spill at once would take the sender's place from each other at the collector. A spill
    the other one removed meanwhile fails where the resend reads it, with `read_spill`'s error."""
    try:
        handle = (path / SPILL_INDEX).open("rb")
    except OSError:
        read_spill(path)  # raises the error that says what the path is instead
        raise
    with handle:
        try:
            import fcntl
        except ImportError:  # no POSIX locks here: resends are not guarded against each other
            yield
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SinkError(f"another resend of the spill {str(path)!r} is running; wait for it "
                            "(it removes the spill once the collector has every batch)") from None
        yield


def _resend(path: Path, address: str | None, timeout: float, curve_keys: str | Path | None,
            remove: bool) -> ResendResult:
    index, schema, batches = spilled_batches(path)
    total_rows = sum(index.rows)
    sink = ZMQSink(address or index.endpoint, models="off", curve_keys=curve_keys,
                   close_timeout=timeout)
    sink.resume(index.sender_id, zip(index.seqs, batches), token=index.token)
    del batches
    started = time.monotonic()
    sink.start(index.run_id, schema)
    sink.close(spill=False)  # waits for the acknowledgements, asking what is committed
    if sink.token is not None and sink.token != index.token:
        _remember_token(path, sink.token)  # the sender name is now bound to it: resend again
    left = sink.outbox.pending()
    if left:
        _unacknowledged(sink, path, left, len(index.seqs), time.monotonic() - started)
    had_batches, had_rows = sink.outbox.known_batches, sink.outbox.known_rows
    return ResendResult(index.run_id, index.sender_id, sink.endpoint,
                        len(index.seqs) - had_batches, total_rows - had_rows, had_batches,
                        had_rows, path, remove and remove_spill(path))


def _remember_token(path: Path, token: str) -> None:
    """Saves the token the collector gave a spill's sender into its index."""
    file = path / SPILL_INDEX
    write_json_atomic(file, {**json.loads(file.read_text()), "token": token})


def _unacknowledged(sink: Any, path: Path, left: list[Pending], batches: int,
                    waited: float) -> NoReturn:
    rows = sum(item.rows for item in left)
    kept = (f"The spill {str(path)!r} is kept as it was; resend it later (`relayrl-gym resend "
            f"{shlex.quote(str(path))}`): the collector keeps each batch once")
    rejected = f". The collector rejected: {'; '.join(sink.rejected[-3:])}" if sink.rejected \
        else ""
    if not sink.started.is_set() and len(left) == batches:
        raise SinkError(f"the collector at {sink.endpoint} did not answer within {waited:.1f} s"
                        f"{rejected}; none of the spill's {batches} batches ({rows} rows) was "
                        "delivered. Check that `relayrl-gym serve` runs there (another address:"
                        " --to / address=; a CurveZMQ collector: --curve-keys / curve_keys=). "
                        f"{kept}")
    raise SinkError(f"the collector at {sink.endpoint} did not acknowledge {len(left)} of the "
                    f"spill's {batches} batches ({rows} rows, seqs {left[0].seq}..{left[-1].seq}"
                    f") within {waited:.1f} s{rejected}. {kept}")


def remove_spill(path: Path) -> bool:
    """Removes a delivered spill: its index first (what is left is no spill any more), then
    the files the sink wrote. Other files stay, with a warning."""
    try:
        (path / SPILL_INDEX).unlink()
        for file in path.iterdir():
            if file.name == RUN_FILE or fnmatch.fnmatchcase(file.name, PART_GLOB):
                file.unlink()
        path.rmdir()
    except OSError as err:
        warnings.warn(f"the spill {str(path)!r} was delivered but not removed ({err}); its "
                      "rows are all in the collector's run: remove it by hand", stacklevel=3)
        return False
    return True
