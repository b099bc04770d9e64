"""Sending a sink's spill (the batches it refused while it was down, kept as a local Arrow run)
to that sink, or to any other, once it takes them again: ``relayrl-gym resend SPILL --to URL``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

from relayrl_gym.data.arrow_reader import read_run_dir
from relayrl_gym.errors import DatasetError, SinkError
from relayrl_gym.sinks.base import open_sink, redact_url, url_scheme
from relayrl_gym.storage.run_dir import RUN_FILE

__all__ = ["SpillResent", "resend_sink_spill"]


class SpillResent(NamedTuple):
    """What `resend_sink_spill` delivered."""

    run_id: str
    rows: int
    to: str
    removed: bool

    def __str__(self) -> str:
        kept = "removed" if self.removed else "kept"
        return f"run {self.run_id}: {self.rows} rows written to {self.to}; the spill is {kept}"


def resend_sink_spill(path: str | Path, to: str, *, remove: bool = True) -> SpillResent:
    """Writes every row of the spilled run ``path`` (``SPILL_DIR/sink<i>-<Sink>/<run_id>``) to
    the sink ``to`` (a URL or directory, as ``wrap(sink=...)`` takes) as run ``<run_id>``, then
    removes the spill (``remove=False`` keeps it).

    A collector (``zmq+tcp://``) or a NATS stream takes them into the run itself, from a sender of
    their own; a database or Arrow sink, which holds the run's rows up to the outage already, gets
    them as a run of their own, ``<run_id>-spill``.

    Raises:
        DatasetError: ``path`` is not a spilled run.
        SinkError: the sink refused the rows (the spill is kept as it was).
    """
    path = Path(path)
    if not (path / RUN_FILE).is_file():
        raise DatasetError(f"{str(path)!r} is not a spilled run (no {RUN_FILE}); pass the "
                           "directory the sink's error named, SPILL_DIR/<sink>/<run_id>")
    table, schema = read_run_dir(path, text_info=False)  # the batches as they were kept
    sink = open_sink(to)
    # A collector or stream consumer takes them into the run itself, from a sender of their own.
    run_id = path.name if url_scheme(str(to)) in ("zmq", "nats") else f"{path.name}-spill"
    try:
        sink.start(run_id, schema.arrow)
        for batch in table.to_batches():
            sink.write(batch)
        sink.flush()
    except Exception as err:
        raise SinkError(f"resending {table.num_rows} spilled rows to {redact_url(str(to))} "
                        f"failed ({err}); the spill {str(path)!r} is kept as it was") from err
    finally:
        sink.close()
    if remove:
        shutil.rmtree(path)
    return SpillResent(run_id, table.num_rows, redact_url(str(to)), remove)
