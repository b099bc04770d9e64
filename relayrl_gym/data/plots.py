"""Plots of recorded runs: episode return against environment steps, and episode lengths.

Only scalar columns are read, in streamed batches, never an observation: memory is bounded by
the number of episodes, not by the run. Imported lazily (by `Dataset.plot`): ``import
relayrl_gym`` never imports matplotlib.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from relayrl_gym.data.episodes import STAT_COLUMNS, episode_rows
from relayrl_gym.errors import DatasetError, missing_extra

try:  # the Agg canvas and plain Figures: no pyplot state, headless, usable from any thread
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError as err:
    raise missing_extra("matplotlib", "plot") from err

if TYPE_CHECKING:
    from relayrl_gym.data.dataset import Dataset

__all__ = ["GROUPS", "episode_table", "plot"]

#: What `plot` can draw one line per (its ``by``), and the `episode_table` column it reads.
GROUPS: dict[str | None, str | None] = {"model_version": "model_version", "agent": "agent_id",
                                        "run": "run_id", None: None}

_KEYS = ["run_id", "agent_id", "episode_id"]
_SCHEMA = pa.schema([("run_id", pa.string()), ("agent_id", pa.string()),
                     ("episode_id", pa.int64()), ("return", pa.float64()),
                     ("length", pa.int64()), ("model_version", pa.int64()),
                     ("end_step", pa.int64())])


def _nanoseconds(stamps: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Times as int64 nanoseconds since the epoch."""
    return np.asarray(stamps.cast(pa.int64()).to_numpy())


def episode_table(ds: Dataset) -> pa.Table:
    """One row per finished episode of ``ds`` (its last row terminated or truncated), ordered
    by ``end_step``.

    Columns: ``run_id``, ``agent_id``, ``episode_id``, ``return`` (sum of rewards),
    ``length`` (transitions), ``model_version`` (that of the episode's last row: the model
    that chose its last action) and ``end_step``: the transitions of the whole dataset (every
    run, agent and episode, finished or not) recorded up to the episode's last row, by
    timestamp. Two streamed passes over scalar columns; memory holds one row per episode.

    >>> import relayrl_gym, tempfile
    >>> envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tempfile.mkdtemp())
    >>> _ = envs.reset(seed=0)
    >>> _ = envs.action_space.seed(0)
    >>> for _ in range(100):
    ...     _ = envs.step(envs.action_space.sample())
    >>> envs.close()
    >>> ds = relayrl_gym.load(envs.run_path)
    >>> table = episode_table(ds)
    >>> table.column_names
    ['run_id', 'agent_id', 'episode_id', 'return', 'length', 'model_version', 'end_step']
    >>> table.num_rows == ds.summary().episodes, table["end_step"][-1].as_py() <= len(ds)
    (True, True)
    """
    episodes = episode_rows(ds.record_batches(list(STAT_COLUMNS)))
    episodes = episodes.filter(episodes.column("done"))
    if not episodes.num_rows:
        return _SCHEMA.empty_table()
    ends = _nanoseconds(episodes.column("timestamp"))
    edges = np.sort(ends)
    # Rows counted between consecutive episode ends; the running sum is the rows at each end.
    counts = np.zeros(len(edges) + 1, np.int64)
    for batch in ds.record_batches(["timestamp"]):
        slot = np.searchsorted(edges, _nanoseconds(batch.column("timestamp")), side="left")
        counts += np.bincount(slot, minlength=len(edges) + 1)
    end_step = np.cumsum(counts)[np.searchsorted(edges, ends, side="left")]
    table = pa.table({"run_id": episodes.column("run_id"), "agent_id": episodes.column("agent_id"),
                      "episode_id": episodes.column("episode_id"),
                      "return": episodes.column("reward"), "length": episodes.column("length"),
                      "model_version": episodes.column("model_version"),
                      "end_step": pa.array(end_step, pa.int64())}).cast(_SCHEMA)
    return table.sort_by([("end_step", "ascending"), *((k, "ascending") for k in _KEYS)])


def _rolling(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the last ``window`` values at each point (fewer at the start)."""
    centred = values - values.mean()  # keeps the running sums of squares accurate
    sums = np.concatenate([[0.0], np.cumsum(centred)])
    squares = np.concatenate([[0.0], np.cumsum(centred ** 2)])
    stop = np.arange(1, len(values) + 1)
    start = np.maximum(stop - window, 0)
    count = stop - start
    mean = (sums[stop] - sums[start]) / count
    var = np.maximum((squares[stop] - squares[start]) / count - mean ** 2, 0.0)
    return mean + values.mean(), np.sqrt(var)


def _label(value: Any) -> str:
    return str(value) if str(value) else "-"  # Gymnasium envs record agent_id ""


def plot(ds: Dataset, path: str | os.PathLike[str] | None = None, *,
         by: str | None = "model_version", window: int = 20, title: str | None = None
         ) -> Figure:
    """Draws episode return against environment steps and the episode lengths of ``ds``.

    The left panel has one line per group: the rolling mean of the return over ``window``
    episodes, with a band of one rolling std, against `episode_table`'s ``end_step``. The
    right panel is a histogram of episode lengths per group (the legend is left out past 12
    groups; the lines keep their labels). Only finished episodes count; an episode belongs to
    the model version of its last row. The figure is a plain `matplotlib.figure.Figure` on
    the Agg canvas: no pyplot state, so it works headless and from any thread.

    Args:
        ds: the dataset (its filters apply).
        path: where to write the figure; the suffix gives the format (``.png``, ``.svg``,
            ``.pdf``, ...). None: not written.
        by: one line per ``"model_version"``, ``"agent"`` or ``"run"``; None: one line.
        window: episodes in each rolling mean.
        title: the figure's title (default: the run id, or the number of runs).

    Returns:
        The figure, written or not.

    Raises:
        DatasetError: a bad ``by``, ``window`` or ``path`` suffix, or no finished episode.
    """
    if by not in GROUPS:
        raise DatasetError(f"`by` must be one of 'model_version', 'agent', 'run' or None, "
                           f"got {by!r}")
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise DatasetError(f"`window` must be an int >= 1, got {window!r}")
    formats = FigureCanvasAgg.get_supported_filetypes()
    if path is not None and Path(path).suffix[1:].lower() not in formats:
        raise DatasetError(f"`path` must end in a format matplotlib writes "
                           f"({', '.join('.' + f for f in sorted(formats))}), got {str(path)!r}")
    table = episode_table(ds)
    if table.num_rows == 0:
        raise DatasetError(f"{ds!r} holds no finished episode (none ended by termination or "
                           "truncation) to plot; record longer or widen its filters")
    column = GROUPS[by]
    keys = (table.column(column).to_numpy(zero_copy_only=False) if column is not None
            else np.zeros(table.num_rows, np.int64))
    returns = table.column("return").to_numpy()
    lengths = table.column("length").to_numpy()
    x = table.column("end_step").to_numpy()
    lo, hi = int(lengths.min()), int(lengths.max())
    width = max(1, -(-(hi - lo + 1) // 50))  # whole-step bins, 50 at most
    bins = np.arange(lo, hi + width + 1, width) - 0.5

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    curve, spread = fig.subplots(1, 2, width_ratios=[2, 1])
    groups = sorted(set(keys.tolist()))
    for i, key in enumerate(groups):
        mine = keys == key
        label = _label(key) if column is not None else "all episodes"
        mean, std = _rolling(returns[mine], window)
        curve.plot(x[mine], mean, color=f"C{i % 10}", label=label)
        curve.fill_between(x[mine], mean - std, mean + std, color=f"C{i % 10}", alpha=0.2,
                           linewidth=0)
        spread.hist(lengths[mine], bins=bins, color=f"C{i % 10}", alpha=0.5, label=label,
                    histtype="stepfilled")
    curve.set(xlabel="environment steps (transitions recorded)",
              ylabel=f"episode return (rolling mean of {window})", title="Return")
    spread.set(xlabel="episode length (transitions)", ylabel="episodes", title="Length")
    spread.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(groups) <= 12:
        curve.legend(title=by, fontsize="small")
    fig.suptitle(title if title is not None else
                 ds.run_ids[0] if len(ds.run_ids) == 1 else f"{len(ds.run_ids)} runs")
    if path is not None:
        fig.savefig(path)
    return fig
