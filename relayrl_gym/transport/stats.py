"""The collector's counters: what arrived, what was a duplicate, what was refused, per sender."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CollectorStats", "SenderStats"]


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

    senders: dict[str, SenderStats] = field(default_factory=dict)
    sink_errors: int = 0
    learner_dropped: int = 0
    runs_idle_closed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, sender: str, **increments: int) -> None:
        """Adds ``increments`` to ``sender``'s counters."""
        with self._lock:
            stats = self.senders.setdefault(sender, SenderStats())
            for key, value in increments.items():
                setattr(stats, key, getattr(stats, key) + value)

    def set_last_seq(self, sender: str, seq: int) -> None:
        with self._lock:
            self.senders.setdefault(sender, SenderStats()).last_seq = seq

    def snapshot(self) -> dict[str, Any]:
        """Totals (``received`` batches, ``rows``, ``duplicates``, ``rejected``,
        ``out_of_order``, ``sink_errors``, ``learner_dropped``, ``runs_idle_closed``) and
        ``per_sender``."""
        with self._lock:
            per = {name: asdict(s) for name, s in self.senders.items()}
            totals = {key: sum(s[key] for s in per.values())
                      for key in ("rows", "duplicates", "rejected", "out_of_order")}
            return {"received": sum(s["batches"] for s in per.values()), **totals,
                    "sink_errors": self.sink_errors, "learner_dropped": self.learner_dropped,
                    "runs_idle_closed": self.runs_idle_closed,
                    "senders": len([n for n in per if n != "?"]), "per_sender": per}
