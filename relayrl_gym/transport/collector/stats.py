"""The collector's counters: what arrived, what was a duplicate, what was refused, per sender."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EARLIER_SENDERS", "MAX_SENDERS", "CollectorStats", "SenderStats"]

#: Senders with counters of their own; past that, the least recently heard is folded into
#: `EARLIER_SENDERS`, so a long-lived collector (or a peer inventing sender names) cannot grow
#: the counters without bound, and the totals stay exact.
MAX_SENDERS = 1024
#: The ``per_sender`` entry holding the folded senders' counters (not a valid sender name).
EARLIER_SENDERS = "(earlier senders)"


@dataclass
class SenderStats:
    """Counters of one sender (``"?"`` gathers messages whose sender could not be read)."""

    batches: int = 0
    rows: int = 0
    duplicates: int = 0
    rejected: int = 0
    out_of_order: int = 0
    last_seq: int = -1


@dataclass
class CollectorStats:
    """Counters of a collector; `snapshot` gives a consistent copy as plain dicts.

    >>> stats = CollectorStats()
    >>> stats.count("s1", rejected=1); stats.snapshot()["rejected"]
    1
    """

    senders: OrderedDict[str, SenderStats] = field(default_factory=OrderedDict)
    sink_errors: int = 0
    learner_dropped: int = 0
    runs_idle_closed: int = 0
    #: Runs closed to make room under `Limits.open_runs`.
    runs_evicted: int = 0
    #: Starts refused: a sender name claimed by another token or CURVE key.
    refused_auth: int = 0
    #: Starts refused: a peer (or the collector) at its limit of runs or senders.
    refused_limits: int = 0
    #: Connections whose handshake failed (a CURVE key not authorized, no CURVE).
    refused_handshakes: int = 0
    max_senders: int = MAX_SENDERS
    _earlier: SenderStats | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, sender: str, **increments: int) -> None:
        """Adds ``increments`` to ``sender``'s counters."""
        with self._lock:
            stats = self._of(sender)
            for key, value in increments.items():
                setattr(stats, key, getattr(stats, key) + value)

    def set_last_seq(self, sender: str, seq: int) -> None:
        with self._lock:
            self._of(sender).last_seq = seq

    def _of(self, sender: str) -> SenderStats:
        stats = self.senders.get(sender)
        if stats is not None:
            self.senders.move_to_end(sender)  # most recently heard last
            return stats
        while len(self.senders) >= self.max_senders:
            _, oldest = self.senders.popitem(last=False)
            earlier = self._earlier = self._earlier or SenderStats()
            for key in ("batches", "rows", "duplicates", "rejected", "out_of_order"):
                setattr(earlier, key, getattr(earlier, key) + getattr(oldest, key))
        stats = self.senders[sender] = SenderStats()
        return stats

    def snapshot(self) -> dict[str, Any]:
        """Totals (``received`` batches, ``rows``, ``duplicates``, ``rejected``,
        ``out_of_order``, ``sink_errors``, ``learner_dropped``, ``runs_idle_closed``),
        ``senders`` (named senders with counters of their own) and ``per_sender`` (the
        `max_senders` most recently heard; the others' counters summed under
        `EARLIER_SENDERS`, whose ``last_seq`` is -1)."""
        with self._lock:
            per = {name: asdict(s) for name, s in self.senders.items()}
            if self._earlier is not None:
                per[EARLIER_SENDERS] = asdict(self._earlier)
            totals = {key: sum(s[key] for s in per.values())
                      for key in ("rows", "duplicates", "rejected", "out_of_order")}
            return {"received": sum(s["batches"] for s in per.values()), **totals,
                    "sink_errors": self.sink_errors, "learner_dropped": self.learner_dropped,
                    "runs_idle_closed": self.runs_idle_closed,
                    "runs_evicted": self.runs_evicted, "refused_auth": self.refused_auth,
                    "refused_limits": self.refused_limits,
                    "refused_handshakes": self.refused_handshakes,
                    "senders": len([n for n in per if n not in ("?", EARLIER_SENDERS)]),
                    "per_sender": per}
