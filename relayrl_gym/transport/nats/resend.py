"""Publishing a NATS sink's close-time spill: its batches under their original sender and
sequence numbers, so that the stream (within its duplicate window) and every consumer (always)
keep each batch once."""

from __future__ import annotations

import time
from pathlib import Path

from relayrl_gym.errors import SinkError
from relayrl_gym.transport.nats.sink import NatsSink
from relayrl_gym.transport.sender.spill import ResendResult, remove_spill, spilled_batches

__all__ = ["resend_nats_spill"]


def resend_nats_spill(path: Path, url: str | None, *, timeout: float,
                      remove: bool) -> ResendResult:
    """Publishes the spill ``path`` to ``url`` (default: the stream it was kept for; give the
    URL when the stream needs credentials, which a spill never holds); removes the spill once
    JetStream acknowledged every batch (``remove``).

    Raises:
        SinkError: some batch was not acknowledged within ``timeout`` (the spill is kept).
    """
    index, schema, batches = spilled_batches(path)
    sink = NatsSink(url or index.endpoint, close_timeout=timeout)
    sink.resume(index.sender_id, zip(index.seqs, batches))
    del batches
    started = time.monotonic()
    sink.start(index.run_id, schema)
    sink.close(spill=False)
    left = sink.outbox.pending()
    if left:
        raise SinkError(
            f"NATS at {sink.target.display} did not acknowledge {len(left)} of the spill's "
            f"{len(index.seqs)} batches within {time.monotonic() - started:.1f} s "
            f"({sink.link.problem if sink.link is not None else 'not started'}). The spill "
            f"{str(path)!r} is kept as it was; resend it later: each batch is kept once")
    rows = sum(index.rows)
    had = dict(zip(index.seqs, index.rows))
    had_rows = sum(had[seq] for seq in sink.duplicate_seqs if seq in had)
    return ResendResult(index.run_id, index.sender_id, sink.target.address,
                        len(index.seqs) - len(sink.duplicate_seqs), rows - had_rows,
                        len(sink.duplicate_seqs), had_rows, path, remove and remove_spill(path))
