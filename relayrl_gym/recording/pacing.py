"""Back-pressure by time: how far behind the background writer is, in seconds of its own work."""

from __future__ import annotations

__all__ = ["WritePace"]

#: Weight of the newest measurement in the moving averages of the writer's costs.
_NEW = 0.3


class WritePace:
    """Keeps every recorded row's way to the sinks within ``flush_interval`` seconds.

    The writer reports what each block of rows cost it (building the Arrow batch and handing it
    to every sink, plus whatever a recovering sink's catch-up took). From that, ``must_wait``
    tells the stepping thread, when it hands over a full block, whether the rows it records next
    could still reach the sinks within the budget behind the work already queued; if not, it
    waits (back-pressure). So a slow sink slows stepping instead of letting rows pile up in
    memory, where a crash would lose them. ``tick`` is how often the writer takes the partly
    filled blocks, so that rows recorded slowly get there in time as well.

    Not thread-safe: the writer calls every method under its queue's lock.

    >>> pace = WritePace(flush_interval=1.0)
    >>> pace.finished(rows=1000, seconds=0.2)   # the sinks take 0.2 ms a row
    >>> pace.must_wait(queued_rows=2000, next_rows=1000, now=0.0)  # 0.4 s + 0.2 s <= 0.7 s
    False
    >>> pace.must_wait(queued_rows=3000, next_rows=1000, now=0.0)  # 0.6 s + 0.2 s > 0.7 s
    True
    """

    def __init__(self, flush_interval: float) -> None:
        """Args:
            flush_interval: the most a row may wait, in seconds, between being recorded and
                being written to every sink (or to a failing sink's spill file).
        """
        self.flush_interval = float(flush_interval)
        #: Time the writer may spend uninterrupted on a failing sink's backlog while idle.
        self.slice = self.flush_interval / 10
        #: What the queued work plus one more block may cost: the interval, less room for a
        #: catch-up slice under way when a block arrives and for the estimates' errors.
        self.budget = self.flush_interval * 0.7
        self.seconds_per_row = 0.0
        self.partial_cost = 0.0  # seconds a time-based flush of the partial blocks takes
        self._measured = False
        self._busy_since = 0.0
        self._busy_rows = 0
        self._busy_expected = 0.0

    def began(self, rows: int, now: float, expected: float | None = None) -> None:
        """The writer started on ``rows`` rows (``expected``: seconds, for work not sized in
        rows, such as a catch-up slice)."""
        self._busy_since = now
        self._busy_rows = rows
        self._busy_expected = rows * self.seconds_per_row if expected is None else expected

    def finished(self, rows: int, seconds: float) -> None:
        """The writer is done with the work it began; ``rows`` of it cost ``seconds``."""
        self._busy_rows = 0
        self._busy_expected = 0.0
        if rows > 0:
            weight = _NEW if self._measured else 1.0  # the first measurement, as it is
            self.seconds_per_row += weight * (seconds / rows - self.seconds_per_row)
            self._measured = True

    def finished_partial(self, seconds: float) -> None:
        """A time-based flush of the partial blocks (and the sinks' flush) took ``seconds``."""
        self.partial_cost += _NEW * (seconds - self.partial_cost)

    def must_wait(self, queued_rows: int, next_rows: int, now: float) -> bool:
        """Whether the stepping thread should wait before recording ``next_rows`` more rows
        behind ``queued_rows`` (the work in progress counts too)."""
        if not self._measured:  # nothing known yet: one block in the queue, no more
            return queued_rows > next_rows
        per_row = self.seconds_per_row
        left = 0.0
        if self._busy_expected or self._busy_rows:
            elapsed = now - self._busy_since
            left = max(self._busy_expected - elapsed, 0.0)
            if self._busy_rows and elapsed > self._busy_expected:
                per_row = max(per_row, elapsed / self._busy_rows)  # slower than it used to be
        return left + (queued_rows + next_rows) * per_row > self.budget

    def tick(self) -> float:
        """Seconds between time-based flushes: rows in a partial block wait at most that long
        before the writer takes them, so it leaves room for writing them within the budget."""
        return max(self.flush_interval / 4, self.budget - self.partial_cost)
