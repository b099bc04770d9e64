"""Recorded runs as Minari datasets and back: `export_minari` writes a dataset's episodes as
local Minari datasets, `MinariRun` reads one as a run (``relayrl_gym.load("minari:<id>")``).

Imported lazily (by `Dataset.export_minari` and ``load("minari:...")``): ``import relayrl_gym``
never imports Minari; without it this module raises `MissingDependencyError`. Exports use
Minari's ``arrow`` storage (no HDF5 library needed, and the Arrow types our columns already
have) with JPEG encoding off, so images are stored bit for bit.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
from gymnasium.envs.registration import EnvSpec
from tqdm import tqdm

from relayrl_gym.data.sources import Where
from relayrl_gym.errors import DatasetError, missing_extra
from relayrl_gym.schema.batches import map_leaves
from relayrl_gym.schema.infos import text_info_schema
from relayrl_gym.schema.transitions import TransitionSchema

try:
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_dataset import gen_dataset_id, parse_dataset_id
    from minari.dataset.minari_storage import MinariStorage
    from minari.namespace import create_namespace, list_local_namespaces
    from minari.serialization import serialize_space
    from minari.storage.datasets_root_dir import get_dataset_path
except ImportError as err:
    raise missing_extra("minari", "minari") from err

if TYPE_CHECKING:
    from relayrl_gym.data.dataset import Dataset
    from relayrl_gym.data.records import Episode

__all__ = ["MinariRun", "export_minari"]

#: Episodes handed to Minari's storage at a time: memory holds this many per agent, not the run.
_CHUNK = 256


def export_minari(ds: Dataset, dataset_id: str, *, author: str | Iterable[str] | None = None,
                  author_email: str | Iterable[str] | None = None,
                  description: str | None = None, algorithm_name: str | None = None,
                  code_permalink: str | None = None, include_unfinished: bool = False,
                  progress: bool = False) -> list[str]:
    """Writes the dataset's episodes as local Minari datasets (under ``MINARI_DATASETS_PATH``,
    default ``~/.minari/datasets``), streamed: memory holds a few hundred episodes.

    One Minari episode per recorded episode, in the order `Dataset.episodes` gives them, with
    its observations (T+1), actions, rewards and flags as recorded; its Minari metadata names
    its run, episode, actor, agent and env copy. The env spec is carried over (as recorded,
    kwargs included) when every run recorded the same env and Gymnasium knows its id;
    otherwise Minari gets the spaces only, and ``recover_environment()`` is not available.

    Single-agent rows become the Minari dataset ``dataset_id``; PettingZoo rows one dataset per
    agent, named after it: ``"relayrl/tictactoe-v0"`` with agents player_1 and player_2 gives
    ``"relayrl/tictactoe-player_1-v0"`` and ``"relayrl/tictactoe-player_2-v0"``.

    Args:
        ds: the dataset (its filters apply).
        dataset_id: Minari id, ``(namespace/)name-v(version)``.
        author, author_email, description, algorithm_name, code_permalink: Minari's dataset
            metadata of the same names (left out when None).
        include_unfinished: also export the episodes cut off by a reset or by the end of
            recording; they end with both flags False, as recorded (default: left out).
        progress: show a progress bar (episodes written).

    Returns:
        The ids created, one per agent in the order of their names.

    Raises:
        DatasetError: an invalid id, an id Minari already has locally (checked for every id
            before anything is written), no episode to export (no finished one, unless
            ``include_unfinished``), or a space Minari cannot store. A failure while writing
            removes the datasets this call created.
    """
    namespace, name, version = _parse(dataset_id, "`dataset_id`")
    agents = _agents(ds, include_unfinished)
    ids = {a: gen_dataset_id(namespace, f"{name}-{a}", version) if a else dataset_id
           for a in agents}
    for agent, agent_id in ids.items():
        _parse(agent_id, f"the id of agent {agent!r}")
    taken = [i for i in ids.values() if get_dataset_path(i).exists()]
    if taken:
        newer = gen_dataset_id(namespace, name, version + 1)
        raise DatasetError(f"Minari already has a local dataset {', '.join(taken)}; nothing "
                           f"was written. Choose another name or version (e.g. {newer!r}), or "
                           f"delete it first with `minari delete {taken[0]}`")
    _check_spaces(ds)
    meta: dict[str, Any] = {"minari_version": minari.__version__}
    for key, text in (("description", description), ("algorithm_name", algorithm_name),
                      ("code_permalink", code_permalink)):
        if text is not None:
            meta[key] = text
    for key, names in (("author", author), ("author_email", author_email)):
        if names is not None:  # Minari keeps sets of them
            meta[key] = {names} if isinstance(names, str) else set(names)
    spec = _env_spec(ds)
    created: list[Path] = []
    try:
        storages = {a: _create(i, ds, spec, {**meta, "dataset_id": i}, created)
                    for a, i in ids.items()}
        pending: dict[str, list[tuple[str, Episode]]] = {a: [] for a in ids}
        bar = tqdm(unit="episodes", desc="export", disable=not progress)
        for run_id in ds.run_ids:
            for episode in ds.filter(runs=[run_id]).episodes():
                if include_unfinished or episode.terminations[-1] or episode.truncations[-1]:
                    bar.update()
                    mine = pending[episode.agent_id]
                    mine.append((run_id, episode))
                    if len(mine) >= _CHUNK:
                        _write(storages[episode.agent_id], mine)
                        mine.clear()
        for agent, mine in pending.items():
            if mine:
                _write(storages[agent], mine)
        bar.close()
        for storage in storages.values():
            del storage.get_size  # measured once, now (see _create)
            storage.update_metadata({"dataset_size": storage.get_size()})
    except BaseException:
        for path in created:  # folders this call made: no half-written dataset stays
            shutil.rmtree(path, ignore_errors=True)
        raise
    return list(ids.values())


def _parse(dataset_id: str, what: str) -> tuple[str | None, str, int]:
    """Minari's reading of an id: (namespace, name, version)."""
    try:
        namespace, name, version = parse_dataset_id(dataset_id)
    except (ValueError, TypeError) as err:  # TypeError: no version (Minari needs one)
        raise DatasetError(f"{what} {dataset_id!r} is not a valid Minari dataset id; use "
                           "(namespace/)name-v(version) of letters, digits, '_' and '-', "
                           "e.g. 'relayrl/cartpole-random-v0'") from err
    return namespace, name, int(version)


def _agents(ds: Dataset, include_unfinished: bool) -> list[str]:
    """The agents to export ([""] single-agent), each with at least one episode to write."""
    counts: dict[str, int] = {}
    for actor in ds.summary().actors:  # reads no observation
        found = actor.steps if include_unfinished else actor.episodes
        counts[actor.agent_id] = counts.get(actor.agent_id, 0) + found
    if not counts:
        raise DatasetError("the dataset holds no transitions to export (check its filters)")
    if "" in counts and len(counts) > 1:
        raise DatasetError("the dataset mixes single-agent rows with rows of agents "
                           f"{sorted(a for a in counts if a)}; export each part on its own, "
                           "e.g. ds.filter(agents=['']).export_minari(...)")
    empty = sorted(a for a, n in counts.items() if not n)
    if empty:
        whose = f" of agent(s) {empty}" if empty != [""] else ""
        raise DatasetError(f"the dataset holds no finished episode{whose} (one that ends by "
                           "termination or truncation); record until episodes end, or pass "
                           "include_unfinished=True to export the cut-off ones as recorded")
    return sorted(counts)


def _check_spaces(ds: Dataset) -> None:
    for what, space in (("observation", ds.observation_space), ("action", ds.action_space)):
        try:
            serialize_space(space)
        except NotImplementedError as err:
            raise DatasetError(f"Minari cannot store the {what} space {space}: it stores Box, "
                               "Discrete, MultiDiscrete, MultiBinary and Text spaces, in Dicts "
                               "and Tuples; use Dataset.export_parquet instead") from err


def _env_spec(ds: Dataset) -> EnvSpec | None:
    """The runs' env spec when they all recorded one env that Gymnasium knows here."""
    recorded = {json.dumps([m.get("env_id"), m.get("env_spec")], sort_keys=True)
                for m in ds.runs_metadata.values()}
    if len(recorded) != 1:
        return None
    env_id, spec = json.loads(recorded.pop())
    try:
        known = gym.spec(env_id) if isinstance(env_id, str) else None
    except gym.error.Error:  # a PettingZoo game, an env object made by the caller
        return None
    if spec is None:
        return known
    try:
        return EnvSpec.from_json(json.dumps(spec))
    except (gym.error.Error, TypeError, ValueError, KeyError):
        return known


def _create(dataset_id: str, ds: Dataset, spec: EnvSpec | None, meta: dict[str, Any],
            created: list[Path]) -> Any:
    """An empty Minari storage for ``dataset_id``; its folder is added to ``created``."""
    namespace = _parse(dataset_id, "`dataset_id`")[0]
    path = get_dataset_path(dataset_id)
    if namespace is not None and namespace not in list_local_namespaces():
        create_namespace(namespace)
        created.append(path.parent)  # made here: removed with the dataset if the export fails
    try:
        path.mkdir(parents=True)
    except FileExistsError as err:
        raise DatasetError(f"the Minari dataset {dataset_id!r} appeared while this export "
                           "ran (another process?); nothing of it was overwritten") from err
    created.append(path)
    storage = MinariStorage.new(path / "data", observation_space=ds.observation_space,
                                action_space=ds.action_space, env_spec=spec,
                                data_format="arrow", jpeg_encoding=False)
    storage.update_metadata({**meta, "relayrl_gym": {"run_ids": ds.run_ids}})
    # Minari's arrow storage measures the whole dataset folder after every episode it writes,
    # which makes an export quadratic in its episodes; export_minari measures once at the end.
    storage.get_size = lambda: 0.0
    return storage


def _write(storage: Any, episodes: list[tuple[str, Episode]]) -> None:
    """Appends episodes to a storage, each with its origin in its Minari metadata."""
    first = storage.total_episodes
    storage.update_episodes([EpisodeBuffer(
        observations=e.observations, actions=e.actions, rewards=e.rewards,
        terminations=e.terminations, truncations=e.truncations) for _, e in episodes])
    storage.update_episode_metadata(
        [{"relayrl_run_id": run, "relayrl_episode_id": e.episode_id, "actor_id": e.actor_id,
          "agent_id": e.agent_id, "env_index": e.env_index} for run, e in episodes],
        range(first, first + len(episodes)))


class MinariRun:
    """A local Minari dataset read as one run, episode by episode (`RunSource`).

    Each Minari episode gives its steps as rows: ``obs`` and ``next_obs`` its observations
    without the last and the first, its actions, rewards and flags, ``episode_id`` its Minari
    id, ``run_id`` ``"minari:<id>"``. Minari keeps no actors, times, masks or policy outputs:
    ``actor_id`` and ``agent_id`` are empty, ``env_index`` 0, ``model_version`` -1,
    ``timestamp`` episode id * 2**32 + step nanoseconds after the epoch (Minari keeps no
    times; this keeps time order the episodes' order), ``mask``, ``data`` and ``info`` null.

    >>> import pytest, tempfile, relayrl_gym
    >>> envs = relayrl_gym.wrap("CartPole-v1", sink=tempfile.mkdtemp())
    >>> _ = envs.reset(seed=0)
    >>> for _ in range(100):
    ...     _ = envs.step(envs.action_space.sample())
    >>> envs.close()
    >>> with pytest.MonkeyPatch.context() as env:
    ...     env.setenv("MINARI_DATASETS_PATH", tempfile.mkdtemp())
    ...     relayrl_gym.load(envs.run_path).export_minari("relayrl/cartpole-random-v0")
    ...     back = relayrl_gym.load("minari:relayrl/cartpole-random-v0")
    ...     back.run_id, back.summary().episodes > 1
    ['relayrl/cartpole-random-v0']
    ('minari:relayrl/cartpole-random-v0', True)
    """

    def __init__(self, dataset_id: str) -> None:
        """Opens the dataset's metadata; no episode is read.

        Raises:
            DatasetError: Minari has no local dataset ``dataset_id``, or cannot read it.
        """
        self.dataset_id = dataset_id
        try:
            self._minari = minari.load_dataset(dataset_id)
        except FileNotFoundError as err:
            raise DatasetError(f"Minari has no local dataset {dataset_id!r}; `minari list "
                               "local` lists those it has (`minari download <id>` fetches a "
                               "remote one)") from err
        except (ValueError, KeyError, AssertionError, NotImplementedError) as err:
            raise DatasetError(f"Minari cannot read its dataset {dataset_id!r}: {err}") from err

    @property
    def run_id(self) -> str:
        return f"minari:{self.dataset_id}"

    @property
    def location(self) -> str:
        return str(self._minari.storage.data_path)

    @cached_property
    def schema(self) -> TransitionSchema:
        spec = self._minari.env_spec  # Minari keeps a spec only when it is JSON
        meta = {"run_id": self.run_id, "source": "minari", "minari_dataset_id": self.dataset_id,
                "minari_version": self._minari.minari_version, "num_envs": 1,
                "env_id": spec.id if spec is not None else None,
                "env_spec": json.loads(spec.to_json()) if spec is not None else None}
        return TransitionSchema.build(self._minari.observation_space,
                                      self._minari.action_space, metadata=meta)

    @cached_property
    def arrow(self) -> pa.Schema:
        return text_info_schema(self.schema.arrow)

    def count(self, where: Where) -> int:
        if where.expression is None:
            return int(self._minari.total_steps)
        return sum(batch.num_rows for unit in self.units(sorted(where.columns), where)
                   for batch in unit())

    def units(self, columns: Sequence[str], where: Where
              ) -> list[Callable[[], Iterator[pa.RecordBatch]]]:
        """The episodes in pieces of a few hundred, one record batch per episode."""
        def unit(indices: np.ndarray) -> Callable[[], Iterator[pa.RecordBatch]]:
            def read() -> Iterator[pa.RecordBatch]:
                for episode in self._minari.iterate_episodes(indices):
                    batch = self._rows(episode)
                    if where.expression is not None:
                        batch = batch.filter(where.expression)
                    yield batch.select(list(columns))
            return read

        indices = self._minari.episode_indices
        return [unit(indices[i:i + _CHUNK]) for i in range(0, len(indices), _CHUNK)]

    def _rows(self, episode: Any) -> pa.RecordBatch:
        n = len(episode.rewards)
        schema = self.schema
        computed = {
            "step": pa.array(np.arange(n, dtype=np.int64)),
            "obs": schema.obs.to_arrow(map_leaves(lambda v: v[:-1], episode.observations), n),
            "action": schema.action.to_arrow(episode.actions, n),
            "reward": pa.array(np.asarray(episode.rewards, np.float64)),
            "next_obs": schema.obs.to_arrow(map_leaves(lambda v: v[1:], episode.observations),
                                            n),
            "terminated": pa.array(np.asarray(episode.terminations, np.bool_)),
            "truncated": pa.array(np.asarray(episode.truncations, np.bool_)),
        }
        # Minari keeps no times: episode id * 2**32 + step nanoseconds after the epoch keeps
        # time order the episodes' order (what plots and end steps go by).
        computed["timestamp"] = pa.array(np.arange(n, dtype=np.int64) + (int(episode.id) << 32),
                                         pa.timestamp("ns", tz="UTC"))
        constant = {"run_id": self.run_id, "actor_id": "", "agent_id": "", "env_index": 0,
                    "episode_id": int(episode.id), "model_version": -1}
        arrays = [computed[f.name] if f.name in computed
                  else pa.repeat(pa.scalar(constant[f.name], f.type), n)
                  if f.name in constant else pa.nulls(n, f.type) for f in self.arrow]
        return pa.RecordBatch.from_arrays(arrays, schema=self.arrow)
