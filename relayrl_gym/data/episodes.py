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

__all__ = ["EPISODE_COLUMNS", "STAT_COLUMNS", "episodes_of", "summarize"]

#: What an `Episode` is made of.
EPISODE_COLUMNS = ("episode_id", "step", "actor_id", "agent_id", "env_index", "obs", "action",
                   "reward", "next_obs", "terminated", "truncated", "model_version")
#: What the statistics read: no observation is decoded.
STAT_COLUMNS = ("run_id", "episode_id", "actor_id", "agent_id", "reward", "terminated",
                "truncated")


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


def _named(table: pa.Table, length: str) -> pa.Table:
    """An aggregate's columns under their plain names (whatever order pyarrow gives them)."""
    return pa.table({**{k: table.column(k) for k in _KEYS}, "reward": table.column("reward_sum"),
                     "length": table.column(length), "done": table.column("done_any")})


def _fold(partials: list[pa.Table]) -> pa.Table:
    table = pa.concat_tables(partials).group_by(_KEYS, use_threads=False).aggregate(
        [("reward", "sum"), ("length", "sum"), ("done", "any")])
    return _named(table, "length_sum")


def _per_episode(batches: Iterable[pa.RecordBatch]) -> pa.Table:
    """One row per episode: run, episode, actor, agent, return, length, finished."""
    partials: list[pa.Table] = []
    for batch in batches:
        done = pc.or_(batch.column("terminated"), batch.column("truncated"))
        table = pa.table({**{k: batch.column(k) for k in _KEYS},
                          "reward": batch.column("reward"), "done": done})
        partials.append(_named(table.group_by(_KEYS, use_threads=False).aggregate(
            [("reward", "sum"), ("reward", "count"), ("done", "any")]), "reward_count"))
        if len(partials) >= _PARTIALS:
            partials = [_fold(partials)]
    if not partials:
        return pa.table({k: pa.array([], pa.string()) for k in _KEYS})
    return _fold(partials)


def summarize(batches: Iterable[pa.RecordBatch], run_id: str, env_id: str | None) -> Summary:
    """Steps, finished and unfinished episodes, return statistics overall and per actor, from
    batches of `STAT_COLUMNS`."""
    table = _per_episode(batches)
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
