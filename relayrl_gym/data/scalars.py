"""Episode statistics while collecting, as TensorBoard scalars: what `collect` and `serve`
write with ``--tensorboard DIR``, the way CleanRL and SB3 runs are watched live.

Tags: ``episode/return`` and ``episode/length`` at the environment step where the episode
ended (``episode/return/<agent>`` for PettingZoo agents), ``episode/model_version`` when a
policy acted, and ``throughput/steps_per_second``. `EpisodeStream` finds finished episodes in
record batches as a collector commits them: actors interleaved in any way, each actor's
batches in the order written. A batch that never reaches it (a learner queue that was full:
the server's ``learner_dropped``) leaves its episodes out or short.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from relayrl_gym.data.episodes import STAT_COLUMNS, episode_rows
from relayrl_gym.errors import missing_extra

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError as err:  # torch or tensorboard missing
    raise missing_extra("tensorboard", "tensorboard") from err

__all__ = ["EpisodeStream", "FinishedEpisode", "TensorBoardScalars"]


@dataclass(frozen=True)
class FinishedEpisode:
    """One episode that ended: its return, length and the model version of its last step."""

    run_id: str
    actor_id: str
    agent_id: str
    episode_id: int
    episode_return: float
    length: int
    model_version: int


class EpisodeStream:
    """Finished episodes from record batches of transitions, each actor's in the order
    written.

    Memory holds one partial sum per episode in progress, at most ``max_open`` of them (an
    episode whose last batch never came is let go of, oldest first).

    >>> import pyarrow as pa
    >>> stream = EpisodeStream()
    >>> stamps = pa.array([0, 0], pa.timestamp("ns", tz="UTC"))
    >>> rows = lambda steps, r, done: pa.record_batch({"run_id": ["a"] * 2,
    ...     "episode_id": [0, 0], "actor_id": ["x"] * 2, "agent_id": [""] * 2, "step": steps,
    ...     "reward": r, "terminated": [False, done], "truncated": [False, False],
    ...     "model_version": [3, 3], "timestamp": stamps})
    >>> stream.feed(rows([0, 1], [1.0, 1.0], False))
    []
    >>> stream.feed(rows([2, 3], [1.0, 2.0], True))[0].length
    4
    """

    COLUMNS = STAT_COLUMNS

    def __init__(self, max_open: int = 65536) -> None:
        """Starts with no episode in progress; ``max_open``: episodes in progress kept."""
        self._open: dict[tuple[str, str, str, int], tuple[float, int]] = {}
        self._max_open = max_open

    @property
    def in_progress(self) -> int:
        """Episodes seen whose last row has not come yet."""
        return len(self._open)

    def feed(self, batch: pa.RecordBatch) -> list[FinishedEpisode]:
        """The episodes whose last row is in ``batch``."""
        groups = episode_rows([batch]).to_pydict()
        finished = []
        for i in range(len(groups["episode_id"])):
            key = (groups["run_id"][i], groups["actor_id"][i], groups["agent_id"][i],
                   int(groups["episode_id"][i]))
            total, length = self._open.pop(key, (0.0, 0))
            total += float(groups["reward"][i])
            length += int(groups["length"][i])
            if groups["done"][i]:
                finished.append(FinishedEpisode(*key, total, length,
                                                int(groups["model_version"][i])))
            else:
                self._open[key] = (total, length)  # re-inserted: the oldest stay first
        while len(self._open) > self._max_open:
            del self._open[next(iter(self._open))]
        return finished


class TensorBoardScalars:
    """Writes episode returns and lengths and the collection rate as TensorBoard scalars.

    >>> import tempfile
    >>> board = TensorBoardScalars(tempfile.mkdtemp())
    >>> board.episode(21.0, 21, step=84)
    >>> board.close()
    """

    def __init__(self, logdir: str | os.PathLike[str], rate_every: float = 1.0) -> None:
        """Args:
            logdir: the TensorBoard log folder (``tensorboard --logdir`` it).
            rate_every: seconds between two ``throughput/steps_per_second`` points.
        """
        self._writer: Any = SummaryWriter(log_dir=str(logdir))
        self._every = rate_every
        self._since = time.perf_counter()
        self._since_steps = 0

    def episode(self, episode_return: float, length: int, step: int, *,
                model_version: int = -1, agent: str = "") -> None:
        """One finished episode, at environment step ``step``."""
        suffix = f"/{agent}" if agent else ""
        self._writer.add_scalar(f"episode/return{suffix}", episode_return, step)
        self._writer.add_scalar(f"episode/length{suffix}", length, step)
        if model_version >= 0:
            self._writer.add_scalar(f"episode/model_version{suffix}", model_version, step)

    def steps(self, step: int) -> None:
        """The total of environment steps so far; a rate point once every ``rate_every``."""
        now = time.perf_counter()
        if now - self._since >= self._every:
            rate = (step - self._since_steps) / (now - self._since)
            self._writer.add_scalar("throughput/steps_per_second", rate, step)
            self._since, self._since_steps = now, step

    def finished(self, episodes: list[FinishedEpisode], step: int) -> None:
        """Episodes an `EpisodeStream` found, all at environment step ``step``."""
        for e in episodes:
            self.episode(e.episode_return, e.length, step, model_version=e.model_version,
                         agent=e.agent_id)

    def close(self) -> None:
        """Flushes the event file and closes it."""
        self._writer.close()
