"""`relayrl_gym.load`: recorded runs back as pyarrow, numpy, episodes, pandas and summaries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from relayrl_gym.data.arrow_reader import read_run_dir
from relayrl_gym.data.records import ActorSummary, Episode, Summary, Transitions
from relayrl_gym.data.sql_reader import read_sql_run
from relayrl_gym.errors import DatasetError, missing_extra
from relayrl_gym.schema.batches import concat, map_leaves
from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.sinks.base import SQL_SCHEMES, url_scheme
from relayrl_gym.storage.run_dir import RUN_FILE

if TYPE_CHECKING:
    import pandas as pd
    from gymnasium import spaces

__all__ = ["Dataset", "load"]


def _slice(batch: Any, start: int, stop: int) -> Any:
    return map_leaves(lambda leaf: leaf[start:stop], batch)


def _rows(batch: Any, n: int) -> list[Any]:
    if isinstance(batch, dict):
        cols = {k: _rows(v, n) for k, v in batch.items()}
        return [{k: cols[k][i] for k in cols} for i in range(n)]
    if isinstance(batch, tuple):
        cols_t = [_rows(v, n) for v in batch]
        return [tuple(c[i] for c in cols_t) for i in range(n)]
    return list(batch)


class Dataset:
    """The recorded transitions of one run.

    ``table`` is the raw `pyarrow.Table` (one row per transition, schema in the README);
    `transitions` decodes observations and actions to numpy with their recorded shapes and
    dtypes; `episodes` iterates episodes; `summary` gives counts and return statistics.

    >>> import relayrl_gym, tempfile
    >>> envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tempfile.mkdtemp())
    >>> _ = envs.reset(seed=1)
    >>> for _ in range(5):  # shorter than any CartPole episode: no autoreset pseudo-steps
    ...     _ = envs.step(envs.action_space.sample())
    >>> envs.close()
    >>> ds = relayrl_gym.load(envs.run_path)
    >>> len(ds), ds.transitions().obs.dtype
    (10, dtype('float32'))
    """

    def __init__(self, table: pa.Table, schema: TransitionSchema, source: str) -> None:
        """Wraps a table of recorded rows; use `relayrl_gym.load` to get one."""
        self.table = table
        self.schema = schema
        self.source = source

    @property
    def metadata(self) -> dict[str, Any]:
        """The run description recorded with the data (spaces, env spec, config, versions)."""
        return self.schema.metadata

    @property
    def observation_space(self) -> spaces.Space:
        return self.schema.observation_space

    @property
    def action_space(self) -> spaces.Space:
        return self.schema.action_space

    @property
    def run_id(self) -> str:
        return str(self.metadata.get("run_id", ""))

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"Dataset({self.source!r}, rows={len(self)})"

    def transitions(self) -> Transitions:
        """All rows as numpy: obs, action, reward, next_obs, terminated, truncated."""
        t = self.table
        return Transitions(
            obs=self.schema.obs.from_arrow(t.column("obs")),
            action=self.schema.action.from_arrow(t.column("action")),
            reward=t.column("reward").to_numpy(),
            next_obs=self.schema.obs.from_arrow(t.column("next_obs")),
            terminated=t.column("terminated").to_numpy(),
            truncated=t.column("truncated").to_numpy(),
        )

    def _sorted(self) -> pa.Table:
        return self.table.sort_by([("episode_id", "ascending"), ("step", "ascending")])

    def episodes(self) -> Iterator[Episode]:
        """Episodes in episode-id order, each with its observations (T+1), actions (T), ..."""
        t = self._sorted()
        if t.num_rows == 0:
            return
        ids = t.column("episode_id").to_numpy()
        bounds = np.flatnonzero(np.diff(ids)) + 1
        starts = np.concatenate([[0], bounds])
        stops = np.concatenate([bounds, [len(ids)]])
        obs = self.schema.obs.from_arrow(t.column("obs"))
        next_obs = self.schema.obs.from_arrow(t.column("next_obs"))
        actions = self.schema.action.from_arrow(t.column("action"))
        rewards = t.column("reward").to_numpy()
        term = t.column("terminated").to_numpy()
        trunc = t.column("truncated").to_numpy()
        versions = t.column("model_version").to_numpy()
        actor = t.column("actor_id")
        agent = t.column("agent_id")
        env_index = t.column("env_index").to_numpy()
        for start, stop in zip(starts.tolist(), stops.tolist()):
            yield Episode(
                episode_id=int(ids[start]),
                actor_id=actor[start].as_py(),
                agent_id=agent[start].as_py(),
                env_index=int(env_index[start]),
                observations=concat([_slice(obs, start, stop),
                                      _slice(next_obs, stop - 1, stop)]),
                actions=_slice(actions, start, stop),
                rewards=rewards[start:stop],
                terminations=term[start:stop],
                truncations=trunc[start:stop],
                model_versions=versions[start:stop],
            )

    def to_pandas(self) -> pd.DataFrame:
        """A DataFrame of every row; obs/next_obs/action cells hold arrays of the space's shape."""
        try:
            import pandas  # noqa: F401
        except ImportError as err:
            raise missing_extra("pandas", "pandas") from err
        decoded = self.transitions()
        frame = self.table.drop_columns(["obs", "action", "next_obs"]).to_pandas()
        n = len(frame)
        position = list(self.table.column_names)
        frame.insert(position.index("obs"), "obs", _rows(decoded.obs, n))
        frame.insert(position.index("action"), "action", _rows(decoded.action, n))
        frame.insert(position.index("next_obs"), "next_obs", _rows(decoded.next_obs, n))
        return frame

    def summary(self) -> Summary:
        """Steps, finished and unfinished episodes, return statistics overall and per actor."""
        t = self.table
        meta = self.metadata
        if t.num_rows == 0:
            nan = float("nan")
            return Summary(self.run_id, meta.get("env_id"), steps=0, episodes=0,
                           unfinished_episodes=0, mean_return=nan, std_return=nan,
                           min_return=nan, max_return=nan, mean_length=nan)
        done = pc.or_(t.column("terminated"), t.column("truncated"))
        per_episode = (
            pa.table({"episode_id": t.column("episode_id"), "actor_id": t.column("actor_id"),
                      "agent_id": t.column("agent_id"), "reward": t.column("reward"),
                      "done": done})
            .group_by(["episode_id", "actor_id", "agent_id"])
            .aggregate([("reward", "sum"), ("reward", "count"), ("done", "any")])
        )
        finished = per_episode.filter(pc.field("done_any"))
        returns = finished.column("reward_sum").to_numpy()
        lengths = finished.column("reward_count").to_numpy()
        steps_by_actor = (pa.table({"actor_id": t.column("actor_id"),
                                    "agent_id": t.column("agent_id")})
                          .group_by(["actor_id", "agent_id"]).aggregate([([], "count_all")]))
        actors = []
        for row in steps_by_actor.sort_by("actor_id").to_pylist():
            mine = finished.filter(pc.and_(pc.equal(finished.column("actor_id"), row["actor_id"]),
                                           pc.equal(finished.column("agent_id"), row["agent_id"])))
            r = mine.column("reward_sum").to_numpy()
            actors.append(ActorSummary(row["actor_id"], row["agent_id"], int(row["count_all"]),
                                       len(r), _stat(np.mean, r), _stat(np.std, r)))
        return Summary(
            run_id=self.run_id,
            env_id=meta.get("env_id"),
            steps=t.num_rows,
            episodes=len(returns),
            unfinished_episodes=per_episode.num_rows - finished.num_rows,
            mean_return=_stat(np.mean, returns),
            std_return=_stat(np.std, returns),
            min_return=_stat(np.min, returns),
            max_return=_stat(np.max, returns),
            mean_length=_stat(np.mean, lengths),
            actors=actors,
        )


def _stat(fn: Any, values: np.ndarray) -> float:
    return float(fn(values)) if len(values) else float("nan")


def load(path: str | os.PathLike[str]) -> Dataset:
    """Loads a recorded run: the run directory an Arrow sink wrote (``envs.run_path``), or a
    database URL of a SQL sink with the run chosen by ``?run=<run_id>`` (e.g.
    ``"postgresql://user@host/db?run=<run_id>"``; optional when it holds one run).

    The rows, dtypes and shapes are the same whichever sink wrote them. A crashed run is read
    up to its last flushed batch.
    """
    if isinstance(path, str) and url_scheme(path) in SQL_SCHEMES:
        table, schema, _ = read_sql_run(path)
        return Dataset(table, schema, path)
    if isinstance(path, str) and path.startswith("arrow://"):
        path = path[len("arrow://"):]
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"no recorded run at {str(p)!r}; pass a run directory such as "
                           "envs.run_path or relayrl_runs/<run_id>")
    if p.is_dir() and not (p / RUN_FILE).exists():
        runs = sorted(d.name for d in p.iterdir() if (d / RUN_FILE).is_file())
        if runs:
            raise DatasetError(f"{str(p)!r} holds {len(runs)} runs; load one of them, e.g. "
                               f"relayrl_gym.load({str(p / runs[-1])!r})")
    table, schema = read_run_dir(p)
    return Dataset(table, schema, str(p))
