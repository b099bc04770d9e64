"""Observation copies laid out so that a recorded block's observations are already one array."""

from __future__ import annotations

import collections
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from relayrl_gym.schema.arrow_arrays import pooled_array

__all__ = ["ObsSlab", "ZeroRows", "joined", "split_point"]


class _Mark:
    """Marks one slab array as recent (alive while its `ObsSlab` keeps it in ``_recent``)."""

    __slots__ = ("__weakref__",)


#: Recent slab arrays, by the id of what their views name as ``base`` (an entry lives as long
#: as its `ObsSlab` keeps the mark, and the views keep that array alive).
_RECENT: weakref.WeakValueDictionary[int, _Mark] = weakref.WeakValueDictionary()


class ObsSlab:
    """Hands out consecutive rows of one preallocated array to copy observations into.

    The stepping thread must copy each step's observations anyway (the caller may modify the
    arrays it was given). Copied into consecutive rows of one array, the observations of a
    recorded block need no second copy to be joined: `joined` sees that its parts are one
    span and returns a view of it (a block of Atari frames is 8 MiB that is then not copied
    again, nor allocated, on the stepping thread).

    A new array begins where the recorder's block will next be handed over (``rows_left``
    tells how many rows the block still takes), so that a block's observations lie in one
    array. After a block handed over early (by age, or asked for by the writer), the next one
    begins in the middle of an array and ends in the next: it is built as two batches, one
    for each (`split_point`; for local Arrow directories; for other sinks it is joined by a
    copy), and the next full block lines up again. Rows are never written twice: a view
    handed out stays valid and unchanged for as long as anyone holds it, and an array is
    reused once nothing refers to it. One thread uses a slab.

    >>> slab = ObsSlab((2,), np.float32, rows=4, rows_left=lambda: 8)
    >>> a = slab.copy(np.ones((2, 2))); b = slab.copy(np.zeros((2, 2)))
    >>> both = joined([a, b]); both.shape, np.shares_memory(both, a)
    ((4, 2), True)
    """

    #: Arrays whose views `joined` still recognizes: the current one and the two before it
    #: (a block is built when the record after the cut hands it over; one handed over early
    #: leaves the next block to begin in one array and end in the next, and that block's
    #: end begins a third: see `split_point`).
    RECENT = 3
    #: Arrays kept for reuse: the recent ones, and those of blocks on their way to the sinks
    #: (more at once, behind a slow sink, are made anew and let go of).
    KEEP = 5

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, rows: int,
                 rows_left: Callable[[], int]) -> None:
        """Args:
            shape: one observation's shape.
            dtype: the observations' dtype.
            rows: rows of one array (a block's worth; a larger copy gets an array of its own).
            rows_left: rows the recorder's current block still takes before it is handed over.
        """
        self.shape, self.dtype, self.rows = tuple(shape), np.dtype(dtype), int(rows)
        self._rows_left = rows_left
        self._array = np.empty((0, *self.shape), self.dtype)
        self._used = 0
        self._recent: collections.deque[_Mark] = collections.deque(maxlen=self.RECENT)
        #: Arrays made, each with what its views name as ``base``, reused once nothing else
        #: refers to that (their blocks written and let go of).
        self._made: list[tuple[np.ndarray, Any]] = []
        self._free_refs = 0

    def copy(self, obs: np.ndarray) -> np.ndarray:
        """A copy of ``obs`` (a batch of observations) in the slab's next rows."""
        k = len(obs)
        left = self._rows_left()
        # This copy is the obs of the block that begins with the record after next (whose
        # own record fits, and the next does not): it begins a new array, and that block's
        # observations are one span of it.
        starts_block = k <= left < 2 * k
        if starts_block or self._used + k > len(self._array):
            self._array, owner = self._next_array(max(self.rows, k) + k)
            self._used = 0
            mark = _Mark()
            if owner is not None:
                _RECENT[id(owner)] = mark
            self._recent.append(mark)
        rows = self._array[self._used : self._used + k]
        rows[...] = obs
        self._used += k
        return rows

    def _next_array(self, rows: int) -> tuple[np.ndarray, Any]:
        """An array of at least ``rows`` rows that nothing refers to, and what its views name
        as ``base``: one made before when one is free (its pages warm: memory handed back
        to the allocator is returned to the system while a slow env fills a block, and the
        next array's first touch then faults page by page, ~50 µs a step for Pong's frames),
        else a new one."""
        for array, owner in self._made:
            # Only this list, the array (its base) and this loop refer to it: no view is left.
            if sys.getrefcount(owner) == self._free_refs and len(array) >= rows:
                return array, owner
        array = pooled_array((rows, *self.shape), self.dtype)
        owner = array[:0].base  # what the views handed out name as their base
        if owner is not None and len(self._made) < self.KEEP:
            self._made.append((array, owner))
            self._free_refs = sys.getrefcount(owner)  # as counted in the loop above
        return array, owner


def joined(parts: Sequence[Any]) -> np.ndarray | None:
    """The parts as one array without copying, when they are views an `ObsSlab` handed out
    one after the other, in that order (each one begins where the one before it ends, in a
    recent slab array, whose rows are never written twice); else None."""
    first = parts[0]
    if type(first) is not np.ndarray or first.base is None or id(first.base) not in _RECENT:
        return None
    owner, strides, shape = first.base, first.strides, first.shape[1:]
    at = first.__array_interface__["data"][0]
    rows = 0
    for part in parts:
        if (type(part) is not np.ndarray or part.base is not owner or part.strides != strides
                or part.shape[1:] != shape or part.__array_interface__["data"][0] != at):
            return None
        at += len(part) * strides[0]
        rows += len(part)
    # Consecutive views of one array, handed out row after row: one span of it.
    return np.lib.stride_tricks.as_strided(first, (rows, *shape), strides, writeable=False)


def split_point(parts: Sequence[Any]) -> int | None:
    """Where parts that do not join pass from one slab array to the next: the index of the
    first part in another array, when the parts before it join and it is a slab view too
    (a block that began in the middle of an array, after the block before it was handed over
    early, and ended in the next one); else None.

    >>> slab = ObsSlab((2,), np.float32, rows=2, rows_left=lambda: 8)
    >>> parts = [slab.copy(np.ones((2, 2))) for _ in range(3)]  # an array holds 2 copies
    >>> joined(parts) is None, split_point(parts)
    (True, 2)
    """
    first = parts[0]
    if type(first) is not np.ndarray or first.base is None or id(first.base) not in _RECENT:
        return None
    owner = first.base
    at = next((i for i, part in enumerate(parts)
               if type(part) is not np.ndarray or part.base is not owner), None)
    if at is None or joined(parts[:at]) is None:
        return None
    after = parts[at]
    if type(after) is not np.ndarray or after.base is None or id(after.base) not in _RECENT:
        return None
    return at


class ZeroRows:
    """Zeroed arrays of observation rows for the ``once`` layout's ``next_obs`` column, whose
    rows are mostly left zero: an array is reused once nothing refers to it any more (its
    Arrow batch written and let go of), and only the rows written into it are zeroed again,
    instead of zeroing a block's worth of memory for every block. Thread-safe.

    >>> zeros = ZeroRows((2,), np.uint8, rows=4)
    >>> a = zeros.take(3); a[1] = 7; zeros.written(a, np.array([False, True, False]))
    >>> del a
    >>> zeros.take(4).tolist()
    [[0, 0], [0, 0], [0, 0], [0, 0]]
    """

    #: Arrays kept for reuse; more at once in use (a slow sink's queue) are not kept.
    KEEP = 4

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, rows: int) -> None:
        self.shape, self.dtype, self.rows = tuple(shape), np.dtype(dtype), int(rows)
        #: [array, rows that may be nonzero (None: any)] pairs.
        self._arrays: list[list[Any]] = []
        self._free_refs = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> np.ndarray:
        """``n`` rows of zeros, writable."""
        if n > self.rows:
            return pooled_array((n, *self.shape), self.dtype, zero=True)
        with self._lock:
            for entry in self._arrays:
                array = entry[0]
                if sys.getrefcount(array) == self._free_refs:  # only this list holds it
                    dirty, entry[1] = entry[1], None
                    if dirty is None:
                        array.fill(0)
                    elif len(dirty):
                        array[dirty] = 0
                    return array[:n]
            if len(self._arrays) >= self.KEEP:
                return pooled_array((n, *self.shape), self.dtype, zero=True)
            array = np.zeros((self.rows, *self.shape), self.dtype)
            self._arrays.append([array, None])
            self._free_refs = sys.getrefcount(array)  # as counted in the loop above
            return array[:n]

    def written(self, rows: np.ndarray, nonzero: np.ndarray) -> None:
        """Says which of the ``rows`` that `take` gave may now be nonzero (a bool mask)."""
        with self._lock:
            for entry in self._arrays:
                if rows.base is entry[0]:
                    entry[1] = np.flatnonzero(nonzero)
                    return
