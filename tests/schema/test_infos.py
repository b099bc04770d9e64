"""Infos stored as numbers where they are numbers: the same JSON text back from every reader,
whatever the values, with keys appearing mid-run; and numbers in the Arrow files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pytest
from gymnasium import spaces

import relayrl_gym
from relayrl_gym.schema.infos import (
    INFO_TYPE,
    RowInfos,
    _as_records,
    _records_column,
    info_to_json,
    infos_column,
    infos_record,
    infos_to_arrow,
    infos_to_text,
    recorded_info,
)

INFOS: list[dict[Any, Any]] = [
    {},
    {"x_position": np.float64(0.25), "reward_ctrl": np.float32(-0.28), "y": 1.5},
    {"lives": 3, "episode_frame_number": np.int64(8), "frame": np.uint8(7)},
    {"x": 1.0, "n": 2},  # floats and ints together: as text
    {"ok": True, "flag": np.bool_(False)},
    {"nested": {"r": 1.0, "l": 10}, "t": 0.5},
    {"vec": np.arange(3), "mat": np.ones((2, 2), np.float32)},
    {"name": "lava", "none": None},
    {"nan": float("nan"), "inf": np.float64(np.inf), "ninf": -np.inf},
    {3: 1.0, "k": 2.0},  # a key JSON makes a string
    {"big": 2**70},  # past int64: as text
    {"big": 2**70, "small": 1},
    {"obj": object},
]


def test_every_kind_of_info_reads_back_as_the_json_text_it_had() -> None:
    kept = [recorded_info(info) for info in INFOS]
    assert [type(k) for k in kept[1:3]] == [tuple, tuple]  # numbers: no encoding when stepping
    column = infos_to_arrow(kept)
    assert column.type == INFO_TYPE
    assert infos_to_text(column).to_pylist() == [info_to_json(info) for info in INFOS]


def test_numbers_are_stored_as_numbers_in_their_key_order() -> None:
    column = infos_to_arrow([recorded_info(info) for info in INFOS[:3]])
    assert column.field("floats").to_pylist()[1] == [("x_position", 0.25),
                                                      ("reward_ctrl", float(np.float32(-0.28))),
                                                      ("y", 1.5)]
    assert column.field("ints").to_pylist()[2] == [("lives", 3), ("episode_frame_number", 8),
                                                    ("frame", 7)]
    assert column.is_null().to_pylist() == [True, False, False]


def test_a_block_of_infos_with_the_same_keys_and_gaps_reads_back_row_by_row() -> None:
    # The usual block: every row's info has the same keys (values of several float types),
    # some rows have none, one is text, one has ints.
    infos = [{"x": np.float64(i / 4), "r": np.float32(-i), "v": float(i)} for i in range(6)]
    infos[2] = {}
    infos[4] = {"x": "far"}
    infos.append({"lives": 2})
    kept = [recorded_info(info) for info in infos]
    column = infos_to_arrow(kept)
    assert infos_to_text(column).to_pylist() == [
        None if not info else info_to_json(info) for info in infos]
    assert column.field("floats").to_pylist()[5] == [("x", 1.25), ("r", -5.0), ("v", 5.0)]


def _same_keys(count: int, kind: type = float) -> list[dict[str, Any]]:
    return [{"x": kind(i), "y": kind(2 * i)} for i in range(count)]


@pytest.mark.parametrize(("infos", "fast"), [
    (_same_keys(5), True),  # the usual block, every row: built without a Python object a row
    (_same_keys(4, int), True),
    ([*_same_keys(2), {}, {}, *_same_keys(2)], True),  # rows without an info between
    ([*_same_keys(3), {"x": 1.0}], False),  # another key set
    ([*_same_keys(2), {"x": 1, "y": 2}], False),  # another kind
    ([*_same_keys(2), {"x": "far", "y": 1.0}], False),  # text
    ([{"big": 2**70}, {"big": 1}], False),  # past int64: the block as text
    ([{3: 1.0}, {3: 2.0}], False),  # a key JSON makes a string
    ([{}, {}], False),
], ids=["floats", "ints", "gaps", "keys", "kinds", "text", "overflow", "int-key", "none"])
def test_infos_gathered_by_row_are_the_column_of_the_whole_list(infos: list[dict[str, Any]],
                                                                fast: bool) -> None:
    # What a block gathers from its batches equals the column built of every row's info.
    kept = [recorded_info(info) for info in infos]
    given = {i: k for i, k in enumerate(kept) if k is not None}  # one batch's row -> info
    n = len(kept) + 1
    gathered = infos_column([given], [0], [n], n)
    records = _as_records([(0, n, given)])
    assert (records is not None and _records_column(*records, n) is not None) == fast  # path
    expected = infos_to_arrow([*kept, None])
    assert gathered.equals(expected)
    assert infos_to_text(gathered).to_pylist() == [
        None if not info else info_to_json(info) for info in [*infos, {}]]


def _expanded(record: Any, rows: int) -> list[Any]:
    """Each row's own recorded info, from a batch's `RowInfos` record."""
    kind, keys, values = record
    return [(kind, keys, values[i * len(keys) : (i + 1) * len(keys)]) for i in range(rows)]


def _record_of(rows: RowInfos, infos: list[dict[str, Any]]) -> Any:
    """The batch's infos as the vector env records them when they are alike (else None)."""
    alike = rows.alike(infos)
    return None if alike is None else infos_record(alike)


@pytest.mark.parametrize(("infos", "alike"), [
    ([{"x": np.float64(0.5), "r": np.float32(-1)}, {"x": 1.5, "r": np.float32(2)}], True),
    ([{"lives": 3, "frame": np.int64(8)}, {"lives": np.uint8(2), "frame": 9}], True),
    ([{"x": 1.0}], True),
    ([{"x": 1.0, "y": 2.0}, {"y": 2.0, "x": 1.0}], False),  # the same keys, another order
    ([{"x": 1.0, "y": 2.0}, {"x": 1.0}], False),
    ([{"x": 1.0}, {"x": 1.0, "y": 2.0}], False),
    ([{"x": 1.0}, {}], False),
    ([{}, {}], False),
    ([{"x": 1.0}, {"x": 2}], False),  # floats and ints
    ([{"ok": True}, {"ok": False}], False),  # bools: text, as `recorded_info` keeps them
    ([{"v": np.arange(2)}, {"v": np.arange(2)}], False),
    ([{"n": {"r": 1.0}}, {"n": {"r": 2.0}}], False),
    ([{1: 0.5}, {True: 0.5}, {1.0: 0.5}], False),  # equal keys that JSON writes apart
    ([{"x": 0.5}, {np.str_("x"): 0.5}], False),
], ids=["floats", "ints", "one", "order", "fewer", "more", "empty", "none", "kinds", "bools",
        "arrays", "nested", "equal-keys", "str-subclass"])
def test_a_batch_of_alike_infos_is_one_record_of_what_each_row_would_keep(
        infos: list[dict[str, Any]], alike: bool) -> None:
    rows = RowInfos()
    for _ in range(2):  # the first batch, then the same keys again (remembered)
        record = _record_of(rows, infos)
        assert (record is not None) == alike
        if record is not None:
            assert _expanded(record, len(infos)) == [recorded_info(i) for i in infos]
    assert _record_of(rows, [{"z": 1.0}] * 3) == ("floats", ("z",), (1.0, 1.0, 1.0))  # new keys
    assert rows.alike([{np.str_("z"): 1.0}] * 3) is None  # equal to the keys before, not str


_ROWS = RowInfos()
_FLOATS = [{"x": float(i), "r": np.float32(-i)} for i in range(3)]


@pytest.mark.parametrize("batches", [
    [_FLOATS, _FLOATS[:2], _FLOATS],  # every batch one record: the fast path
    [_FLOATS, None, _FLOATS],  # a batch without infos between
    [_FLOATS, {1: recorded_info(_FLOATS[0])}, _FLOATS],  # one with some rows' infos
    [_FLOATS, {1: recorded_info(_FLOATS[1]), 0: recorded_info(_FLOATS[0])}],  # rows unordered
    [_FLOATS, {0: recorded_info({"x": 1.0})}, _FLOATS],  # a row of other keys
    [_FLOATS, {0: recorded_info({"x": 1, "r": 2})}],  # of another kind
    [_FLOATS, [{"x": 1.0}] * 2],  # records of other keys
    [[{"n": 1}] * 2, _FLOATS],  # of another kind
    [_FLOATS, {0: recorded_info({"vec": np.arange(2)})}],  # with text
    [[{"big": 2**70}, {"big": 1}], [{"big": 2}]],  # past int64: as text
    [[{3: 1.0}] * 2],  # a key that JSON makes a string
], ids=["records", "gap", "sparse", "sparse-unordered", "sparse-keys", "sparse-kind", "keys",
        "kinds", "text", "overflow", "int-key"])
def test_a_column_of_records_and_sparse_infos_is_the_column_of_every_row(
        batches: list[Any]) -> None:
    # Each batch: a list of info dicts (kept as one record, or each row's when not alike), a
    # row -> recorded info dict (rows of the batch without one: none), or None (no infos).
    parts: list[Any] = []
    counts: list[int] = []
    each_row: list[Any] = []
    for batch in batches:
        if isinstance(batch, list):
            record = _record_of(_ROWS, batch)
            parts.append(record if record is not None else
                         {i: recorded_info(info) for i, info in enumerate(batch)})
            counts.append(len(batch))
            each_row += [recorded_info(info) for info in batch]
        else:
            parts.append(batch)
            counts.append(2)
            each_row += [None if batch is None else batch.get(i) for i in range(2)]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    column = infos_column(parts, starts, counts, len(each_row))
    assert column.equals(infos_to_arrow(each_row))


class GivenInfosEnv(gym.Env):
    """An env that keeps every info it returns (``given``), for the tests to compare."""

    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, index: int = 0) -> None:
        self.index, self.t = index, 0
        self.given: list[dict[str, Any]] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}


class InfosPerEnv(GivenInfosEnv):
    """Each env copy's infos differ from the others' at some steps: another key order, a key
    missing, ints, an array; and none at all now and then."""

    def step(self, action: Any):
        self.t += 1
        t, i = self.t, self.index
        info: dict[str, Any] = {"x": t + i / 10, "r": np.float32(-t)}
        if t % 5 == i:
            info = {"r": np.float32(-t), "x": float(t)}  # another order
        elif t % 7 == i:
            info = {"x": float(t)}
        elif t % 11 == i:
            info = {"x": t, "r": i}
        elif t % 13 == i:
            info["v"] = np.arange(2) + i
        elif t % 17 == i:
            info = {}
        self.given.append(info)
        return np.full(2, t % 2, np.float32), 1.0, t % (6 + i) == 0, False, info


class EqualKeysEnv(InfosPerEnv):
    """Keys that compare equal but JSON writes apart (1, True, 1.0), and a str subclass."""

    def step(self, action: Any):
        obs, reward, terminated, truncated, _ = super().step(action)
        key = [1, True, 1.0, np.str_("1")][(self.index + self.t // 3) % 4]
        self.given[-1] = {key: 0.5, "x": float(self.t)}
        return obs, reward, terminated, truncated, self.given[-1]


@pytest.mark.parametrize("env_type", [InfosPerEnv, EqualKeysEnv], ids=["alike", "equal-keys"])
@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_a_vector_run_records_each_envs_own_infos(tmp_path: Path, mode: str,
                                                  env_type: type) -> None:
    made: list[InfosPerEnv] = []

    def make() -> InfosPerEnv:
        made.append(env_type(len(made)))
        return made[-1]

    envs = relayrl_gym.wrap(make, actors=4, sink=tmp_path, autoreset_mode=mode, batch_rows=64)
    envs.reset(seed=0)
    for _ in range(150):
        envs.step(np.zeros(4, np.int64))
    envs.close()
    table = relayrl_gym.load(envs.run_path).table
    recorded = {i: [] for i in range(4)}  # type: dict[int, list[Any]]
    for env, info in zip(table.column("env_index").to_pylist(),
                         table.column("info").to_pylist()):
        recorded[env].append(info)
    for env in made:  # (a NEXT_STEP reset is no step of the env's, and is not recorded)
        assert len(env.given) > 100
        assert recorded[env.index] == [info_to_json(info) for info in env.given]


class KeysAppearEnv(GivenInfosEnv):
    """Infos whose keys change over a run: numbers first, then new keys, then nested values
    and text at episode ends (as RecordEpisodeStatistics adds)."""

    def step(self, action: Any):
        self.t += 1
        info: dict[str, Any] = {"x": self.t / 3}
        if self.t > 10:
            info["speed"] = np.float32(self.t)  # a new key mid-run
        if self.t > 20:
            info = {"lives": 3 - self.t % 3, "frame": np.int64(self.t)}  # another kind
        done = self.t % 9 == 0
        if done:
            info["episode"] = {"r": float(self.t), "l": 9, "tag": "end"}
        if self.t % 7 == 0:
            info["vec"] = np.arange(self.t % 4)
        self.given.append(info)
        return np.full(2, self.t % 2, np.float32), 1.0, done, False, info


def test_a_run_whose_info_keys_change_reads_back_the_same_from_arrow_and_sql(
        tmp_path: Path) -> None:
    envs_made: list[KeysAppearEnv] = []

    def make() -> KeysAppearEnv:
        envs_made.append(KeysAppearEnv())
        return envs_made[-1]

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    envs = relayrl_gym.wrap(make, actors=1, sink=[tmp_path / "arrow", db],
                            autoreset_mode="same_step", batch_rows=8, run_id="keys")
    envs.reset(seed=0)
    for _ in range(40):
        envs.step(np.array([0]))
    envs.close()
    expected = [info_to_json(info) for info in envs_made[0].given]
    arrow = relayrl_gym.load(envs.run_path).table.column("info").to_pylist()
    sql = relayrl_gym.load(db).table.column("info").to_pylist()
    assert arrow == sql == expected
    # In the files the numbers are numbers (queryable without parsing JSON).
    stored = pa.concat_tables(pa.ipc.open_file(p).read_all()
                              for p in sorted(envs.run_path.glob("part-*.arrow")))
    assert stored.schema.field("info").type == INFO_TYPE
    floats = stored.column("info").combine_chunks().field("floats").to_pylist()
    assert floats[0] == [("x", 1 / 3)]
    assert floats[10] == [("x", 11 / 3), ("speed", 11.0)]


def test_a_run_of_schema_version_1_with_text_infos_still_reads(tmp_path: Path) -> None:
    from relayrl_gym.schema.transitions import TransitionSchema
    from relayrl_gym.storage.run_dir import RunDirWriter

    schema = TransitionSchema.build(spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(2),
                                    metadata={"schema_version": 1}).arrow
    schema = schema.set(schema.get_field_index("info"), pa.field("info", pa.string()))
    row = {"run_id": "old", "actor_id": "a", "agent_id": "", "env_index": 0, "episode_id": 0,
           "step": 0, "obs": [0.0, 0.5], "action": 1, "reward": 1.0, "next_obs": [0.5, 0.0],
           "terminated": False, "truncated": False, "model_version": -1, "timestamp": 0,
           "mask": None, "data": None, "info": '{"x": 0.5}'}
    parts = RunDirWriter.create(tmp_path / "old", schema)
    parts.write(pa.RecordBatch.from_pylist([row], schema=schema))
    parts.complete()
    assert relayrl_gym.load(tmp_path / "old").table.column("info").to_pylist() == ['{"x": 0.5}']


def test_a_newer_schema_version_or_a_foreign_info_column_is_refused() -> None:
    import json

    from relayrl_gym.errors import DatasetError
    from relayrl_gym.schema.transitions import METADATA_KEY, TransitionSchema

    schema = TransitionSchema.build(spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(2)).arrow
    meta = json.loads(schema.metadata[METADATA_KEY])
    newer = schema.with_metadata({METADATA_KEY: json.dumps({**meta, "schema_version": 99})})
    with pytest.raises(DatasetError, match="newer relayrl-gym"):
        TransitionSchema.from_arrow(newer)
    foreign = schema.set(schema.get_field_index("info"), pa.field("info", pa.int64()))
    with pytest.raises(DatasetError, match="info column"):
        TransitionSchema.from_arrow(foreign)
