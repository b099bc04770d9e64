"""Episodes and return statistics of recorded runs, streamed: memory bounded by the episodes
in flight, never by the run."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from relayrl_gym.data.columns import decode, join, take
from relayrl_gym.data.records import ActorSummary, Episode, Summary
from relayrl_gym.schema.batches import concat, map_leaves
from relayrl_gym.schema.transitions import TransitionSchema

__all__ = ["EPISODE_COLUMNS", "STAT_COLUMNS", "episode_rows", "episodes_of", "summarize"]

#: What an `Episode` is made of.
EPISODE_COLUMNS = ("episode_id", "step", "actor_id", "agent_id", "env_index", "obs", "action",
                   "reward", "next_obs", "terminated", "truncated", "model_version")
#: What episode statistics read: no observation is decoded.
STAT_COLUMNS = ("run_id", "episode_id", "actor_id", "agent_id", "step", "reward", "terminated",
                "truncated", "model_version", "timestamp")


def episodes_of(batches: Iterable[pa.RecordBatch], schema: TransitionSchema
                ) -> Iterator[Episode]:
    """The episodes of one run's batches (`EPISODE_COLUMNS`), each when its last row is read;
    the unfinished ones (cut off by a reset or by the end of recording) last, by episode id."""
    pending: dict[int, list[dict[str, Any]]] = {}
    for batch in batches:
        if not batch.num_rows:
            continue
        rows = decode(batch, schema)
        ids = rows["episode_id"]
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        stops = np.r_[starts[1:], len(ids)]
        done = rows["terminated"] | rows["truncated"]
        for start, stop in zip(starts.tolist(), stops.tolist()):
            mine = order[start:stop]
            episode = int(sorted_ids[start])
            pending.setdefault(episode, []).append(take(rows, mine))
            if done[mine].any():
                yield _episode(pending.pop(episode))
    for episode in sorted(pending):
        yield _episode(pending[episode])


def _episode(parts: list[dict[str, Any]]) -> Episode:
    rows = join(parts)
    steps = rows["step"]
    if (np.diff(steps) < 0).any():  # rows of several senders can interleave
        rows = take(rows, np.argsort(steps, kind="stable"))
    last = map_leaves(lambda leaf: leaf[-1:], rows["next_obs"])
    return Episode(
        episode_id=int(rows["episode_id"][0]),
        actor_id=str(rows["actor_id"][0]),
        agent_id=str(rows["agent_id"][0]),
        env_index=int(rows["env_index"][0]),
        observations=concat([rows["obs"], last]),
        actions=rows["action"],
        rewards=rows["reward"],
        terminations=rows["terminated"],
        truncations=rows["truncated"],
        model_versions=rows["model_version"],
    )


_KEYS = ["run_id", "episode_id", "actor_id", "agent_id"]
_PARTIALS = 64  # partial aggregates folded together this often
_ROWS = pa.schema([("run_id", pa.string()), ("episode_id", pa.int64()),
                   ("actor_id", pa.string()), ("agent_id", pa.string()),
                   ("reward", pa.float64()), ("length", pa.int64()), ("step", pa.int64()),
                   ("timestamp", pa.timestamp("ns", tz="UTC")), ("model_version", pa.int64()),
                   ("done", pa.bool_())])


def _fold(table: pa.Table) -> pa.Table:
    """One row per episode of ``table``, whose rows are transitions or earlier folds in the
    order written: the same columns come out, so partial results fold into one."""
    # "last" follows input order without threads: each actor's rows are written in step order.
    out = table.group_by(_KEYS, use_threads=False).aggregate([
        ("reward", "sum"), ("length", "sum"), ("step", "max"), ("timestamp", "max"),
        ("model_version", "last"), ("done", "last")])
    return pa.table({**{k: out.column(k) for k in _KEYS}, "reward": out.column("reward_sum"),
                     "length": out.column("length_sum"), "step": out.column("step_max"),
                     "timestamp": out.column("timestamp_max"),
                     "model_version": out.column("model_version_last"),
                     "done": out.column("done_last")}, schema=_ROWS)


def episode_rows(batches: Iterable[pa.RecordBatch]) -> pa.Table:
    """One row per episode of batches of `STAT_COLUMNS` in the order written (each actor's
    rows in step order, as readers and a collector give them): its run, id, actor and agent,
    its return (``reward``) and ``length``, and of its last row so far the ``step``,
    ``timestamp``, ``model_version`` and ``done`` (the episode ended). Streamed: memory holds
    one row per episode."""
    partials: list[pa.Table] = []
    for batch in batches:
        if not batch.num_rows:
            continue
        done = pc.or_(batch.column("terminated"), batch.column("truncated"))
        partials.append(_fold(pa.table({
            **{k: batch.column(k) for k in [*_KEYS, "reward", "step", "timestamp",
                                            "model_version"]},
            "length": pa.array(np.ones(batch.num_rows, np.int64)), "done": done})))
        if len(partials) >= _PARTIALS:
            partials = [_fold(pa.concat_tables(partials))]
    if not partials:
        return _ROWS.empty_table()
    return partials[0] if len(partials) == 1 else _fold(pa.concat_tables(partials))


def summarize(batches: Iterable[pa.RecordBatch], run_id: str, env_id: str | None) -> Summary:
    """Steps, finished and unfinished episodes, return statistics overall and per actor, from
    batches of `STAT_COLUMNS`."""
    table = episode_rows(batches)
    if table.num_rows == 0:
        nan = float("nan")
        return Summary(run_id, env_id, steps=0, episodes=0, unfinished_episodes=0,
                       mean_return=nan, std_return=nan, min_return=nan, max_return=nan,
                       mean_length=nan)
    finished = table.filter(pc.field("done"))
    returns = finished.column("reward").to_numpy()
    lengths = finished.column("length").to_numpy()
    actors = []
    by_actor = table.group_by(["actor_id", "agent_id"], use_threads=False).aggregate(
        [("length", "sum")]).sort_by([("actor_id", "ascending"), ("agent_id", "ascending")])
    for row in by_actor.to_pylist():
        mine = finished.filter((pc.field("actor_id") == row["actor_id"])
                               & (pc.field("agent_id") == row["agent_id"]))
        r = mine.column("reward").to_numpy()
        actors.append(ActorSummary(row["actor_id"], row["agent_id"], int(row["length_sum"]),
                                   len(r), _stat(np.mean, r), _stat(np.std, r)))
    return Summary(
        run_id=run_id,
        env_id=env_id,
        steps=int(pc.sum(table.column("length")).as_py()),
        episodes=len(returns),
        unfinished_episodes=table.num_rows - finished.num_rows,
        mean_return=_stat(np.mean, returns),
        std_return=_stat(np.std, returns),
        min_return=_stat(np.min, returns),
        max_return=_stat(np.max, returns),
        mean_length=_stat(np.mean, lengths),
        actors=actors,
    )


def _stat(fn: Any, values: np.ndarray) -> float:
    return float(fn(values)) if len(values) else float("nan")
