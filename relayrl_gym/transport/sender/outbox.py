"""The sender's window: batches sent and not yet acknowledged, resent until they are."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, NamedTuple

__all__ = ["Outbox", "Pending"]


class Pending(NamedTuple):
    """One batch in the window: its sequence number, IPC bytes and row count."""

    seq: int
    payload: Any
    rows: int


class Outbox:
    """Numbered batches waiting for the collector's acknowledgement (go-back-N).

    ``put`` numbers a batch; `due` hands out the batches to (re)send: each once at first, then
    again after ``resend_after`` seconds doubling up to ``resend_max`` while unacknowledged.
    ``ack(seq)`` is cumulative; ``rewind(expected)`` (a gap or a restarted collector) drops
    what the collector has and makes the rest due at once. Thread-safe: the writer thread puts,
    the sender's I/O thread sends and acknowledges.

    >>> box = Outbox(max_bytes=1 << 20)
    >>> box.put(b"a", 1), box.put(b"b", 1)
    (0, 1)
    >>> [p.seq for p in box.due()]
    [0, 1]
    >>> box.ack(0); box.rows, box.due()
    (1, [])
    >>> slow = Outbox(max_bytes=1 << 20, resend_after=2.0)  # sent at 0, 2 and 6 s: next at 14
    >>> slow.put(b"e", 1), [len(slow.due(now=t)) for t in (0.0, 2.0, 6.0, 9.0)]
    (0, [1, 1, 1, 0])
    >>> slow.hurry(0, now=9.0); len(slow.due(now=11.0))  # the collector answered: due at 11
    1
    >>> slow.hurry(0, now=12.0); [len(slow.due(now=t)) for t in (13.0, 16.0, 17.0)]  # once
    [1, 0, 1]
    >>> resumed = Outbox(max_bytes=1 << 20)  # a resent spill keeps its sequence numbers
    >>> resumed.put(b"c", 1, seq=7), resumed.put(b"d", 1, seq=8)
    (7, 8)
    """

    def __init__(self, max_bytes: int, resend_after: float = 2.0, resend_max: float = 30.0
                 ) -> None:
        """Creates an empty window.

        Args:
            max_bytes: the most payload bytes the window holds (`full` past it).
            resend_after: seconds before an unacknowledged batch is sent again.
            resend_max: the longest wait between two sends of one batch.
        """
        self.max_bytes = int(max_bytes)
        self.resend_after = float(resend_after)
        self.resend_max = float(resend_max)
        self.next_seq = 0
        self.bytes = 0
        self.rows = 0
        self.acked_rows = 0
        self.resent = 0
        #: Batches (and their rows) acknowledged before they were ever handed to the socket:
        #: the collector had them already (a resent spill whose acknowledgements were lost).
        self.known_batches = 0
        self.known_rows = 0
        self._sent: set[int] = set()
        self._items: collections.OrderedDict[int, Pending] = collections.OrderedDict()
        self._next_send: dict[int, float] = {}
        self._delay: dict[int, float] = {}
        self._hurried: int | None = None  # the last batch `hurry` made due
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def first_seq(self) -> int:
        """The oldest unacknowledged sequence number (``next_seq`` when none is pending)."""
        with self._lock:
            return next(iter(self._items), self.next_seq)

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    def put(self, payload: Any, rows: int, *, seq: int | None = None) -> int:
        """Adds a batch (bytes-like); returns its sequence number: the next one, or ``seq``
        (a resent spill keeps its numbers): never a number used before, and the next one
        while the box holds batches."""
        size = memoryview(payload).nbytes
        with self._lock:
            if seq is not None:
                if seq < self.next_seq or (self._items and seq != self.next_seq):
                    raise ValueError(f"batch {seq} cannot follow batch {self.next_seq - 1}: "
                                     "sequence numbers go up, without gaps in the window")
                self.next_seq = seq
            seq = self.next_seq
            self.next_seq += 1
            self._items[seq] = Pending(seq, payload, rows)
            self._next_send[seq] = 0.0
            self._delay[seq] = self.resend_after
            self.bytes += size
            self.rows += rows
            return seq

    def due(self, now: float | None = None) -> list[Pending]:
        """Batches to send now, oldest first; each is rescheduled with backoff."""
        now = time.monotonic() if now is None else now
        out = []
        with self._lock:
            for seq, item in self._items.items():
                if self._next_send[seq] <= now:
                    if self._next_send[seq] > 0.0:
                        self.resent += 1
                    self._next_send[seq] = now + self._delay[seq]
                    self._delay[seq] = min(self._delay[seq] * 2, self.resend_max)
                    self._sent.add(seq)
                    out.append(item)
        return out

    def unsent(self, seq: int) -> None:
        """``seq`` could not be handed to the socket: due again at once."""
        with self._lock:
            if seq in self._next_send:
                self._next_send[seq] = 0.0

    def ack(self, seq: int) -> None:
        """The collector has every batch up to ``seq``."""
        with self._lock:
            while self._items:
                first = next(iter(self._items))
                if first > seq:
                    break
                self._drop(first)
            self.changed.notify_all()

    def hurry(self, expected: int, now: float | None = None) -> None:
        """The collector answers and has everything before ``expected``: acknowledges that,
        and makes batch ``expected`` due within ``resend_after`` with its backoff restarted
        (failures on the collector's side may have pushed it out to ``resend_max``)."""
        self.ack(expected - 1)
        now = time.monotonic() if now is None else now
        with self._lock:
            # Once per batch: a collector that keeps failing to commit it gets the backoff.
            if expected in self._items and expected != self._hurried:
                self._hurried = expected
                self._next_send[expected] = min(self._next_send[expected],
                                                now + self.resend_after)
                self._delay[expected] = self.resend_after

    def resend_from(self, expected: int) -> None:
        """The collector wants batch ``expected`` next (a gap): it and the later ones are due
        at once. Not an acknowledgement: the earlier ones may be written and not yet committed,
        and stay until the collector acknowledges them."""
        with self._lock:
            for seq in self._next_send:
                if seq >= expected:
                    self._next_send[seq] = 0.0
                    self._delay[seq] = self.resend_after

    def rewind(self, expected: int) -> None:
        """The collector has everything before ``expected`` and wants the rest again now."""
        self.ack(expected - 1)
        self.resend_from(expected)

    def pending(self) -> list[Pending]:
        """What is still unacknowledged, oldest first."""
        with self._lock:
            return list(self._items.values())

    def _drop(self, seq: int) -> None:
        item = self._items.pop(seq)
        del self._next_send[seq], self._delay[seq]
        if seq in self._sent:
            self._sent.discard(seq)
        else:
            self.known_batches += 1
            self.known_rows += item.rows
        self.bytes -= memoryview(item.payload).nbytes
        self.rows -= item.rows
        self.acked_rows += item.rows
