"""`TransitionBatch`: the columns of one step of several slots, from the front ends to the sinks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

__all__ = ["TransitionBatch", "batch_of"]


class TransitionBatch(NamedTuple):
    """Transitions of ``len(env_index)`` slots (env copies, agents or client actors), as columns.

    Every front end hands its finished transitions to the recorder in this one form; the
    recorder keeps the values it is given (no copy), so they must not be modified afterwards.
    A tuple: cheap to make on the stepping thread, and a block of them is transposed into
    columns in one C-level pass on the writer thread.
    Batch columns have one row per transition; ``obs``, ``action`` and ``next_obs`` are batches
    of their space (nested dicts and tuples of arrays for composite spaces).

    The per-row scalar columns may also be tuples of Python values (cheaper to keep on the
    stepping thread than arrays; read in one C loop on the writer thread), and ``reward`` one
    Python ``float`` for every row. ``model_version`` is one int for every row or an array.

    Optional columns come in two forms: sparse (``infos``, ``masks``, ``outputs``: a dict
    from a row of this batch to its value, for rows that have one) or dense (``output_batch``:
    policy outputs by name, one row per transition; ``mask_batch``: a ``(rows, n)`` bool
    array).

    >>> batch = TransitionBatch(np.arange(2, dtype=np.int32), np.zeros(2, np.int64),
    ...                         np.zeros(2, np.int64), np.zeros((2, 3)), np.array([0, 1]),
    ...                         1.0, np.ones((2, 3)), (False, True), (False, False))
    >>> len(batch.env_index), batch.model_version
    (2, -1)
    """

    env_index: np.ndarray
    episode_id: np.ndarray
    step: np.ndarray
    obs: Any
    action: Any
    reward: np.ndarray | tuple[Any, ...] | float
    next_obs: Any
    terminated: np.ndarray | tuple[Any, ...]
    truncated: np.ndarray | tuple[Any, ...]
    model_version: np.ndarray | int = -1
    #: Row -> the step's info dict as the recorder keeps it (its numbers, or JSON text: see
    #: `relayrl_gym.schema.infos.recorded_info`).
    infos: dict[int, Any] | None = None
    #: Row -> its action mask (a list of bools).
    masks: dict[int, Any] | None = None
    #: Row -> the policy's extra outputs for it (name -> value).
    outputs: dict[int, dict[str, Any]] | None = None
    #: False marks a row to drop instead of recording it (e.g. a NEXT_STEP reset pseudo-step).
    valid: np.ndarray | None = None
    #: The policy's extra outputs of every row, by name (the agent API's whole-batch form).
    output_batch: dict[str, np.ndarray] | None = None
    #: The action masks of every row, ``(rows, n)`` bools.
    mask_batch: np.ndarray | None = None
    #: Row -> the row of this batch whose ``obs`` is this row's next observation (-1: none):
    #: ``next_obs`` rows with one are not filled in (the recorder takes them from ``obs``, and
    #: stores them once where the layout allows). Flat (Box-like) observations only.
    next_from: np.ndarray | None = None


#: ``batch_of((env_index, episode_id, ..., next_from))``: a `TransitionBatch` from all of its
#: columns in field order, made without the Python-level ``__new__`` (half the cost, for the
#: stepping thread's hot path).
batch_of: Callable[[tuple[Any, ...]], TransitionBatch] = functools.partial(
    tuple.__new__, TransitionBatch)
