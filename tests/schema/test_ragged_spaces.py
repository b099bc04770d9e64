"""Text, Sequence, Graph and OneOf spaces (values of varying size) are recorded and read back
exactly; custom spaces are refused with an error that lists what can be recorded."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest
from gymnasium import spaces
from gymnasium.spaces import GraphInstance
from gymnasium.vector.utils import iterate
from testing_env import TestingEnv

import relayrl_gym
from relayrl_gym.errors import UnsupportedSpaceError
from relayrl_gym.schema.codecs import codec_for
from relayrl_gym.schema.row_bytes import encode_rows
from relayrl_gym.schema.spaces import space_from_json, space_to_json

RAGGED: dict[str, spaces.Space] = {
    "text": spaces.Text(6, min_length=0, charset="ab\u00e9\u20ac "),
    "sequence": spaces.Sequence(spaces.Box(-1.0, 1.0, (2,), np.float32)),
    "sequence-stacked": spaces.Sequence(spaces.Discrete(4), stack=True),
    "sequence-stacked-box": spaces.Sequence(spaces.Box(0, 255, (2, 2), np.uint8), stack=True),
    "sequence-of-dicts": spaces.Sequence(spaces.Dict({"pos": spaces.Box(-1, 1, (2,), np.float64),
                                                      "name": spaces.Text(3)})),
    "graph": spaces.Graph(spaces.Box(0.0, 1.0, (3,), np.float32), spaces.Discrete(4)),
    "graph-nodes-only": spaces.Graph(spaces.Discrete(5), None),
    "oneof": spaces.OneOf([spaces.Discrete(3), spaces.Box(0.0, 1.0, (2,), np.float32),
                           spaces.Text(4)]),
    "dict-of-ragged": spaces.Dict({
        "words": spaces.Sequence(spaces.Text(2)),
        "pick": spaces.OneOf([spaces.MultiBinary(3), spaces.Sequence(spaces.Discrete(2))]),
        "pos": spaces.Box(-1.0, 1.0, (2,), np.float32)}),
    "tuple-of-ragged": spaces.Tuple((spaces.Graph(spaces.Box(0, 1, (1,), np.float32),
                                                  spaces.Box(0, 1, (2,), np.float32)),
                                     spaces.Text(3), spaces.Discrete(2))),
}

ACTIONS: dict[str, spaces.Space] = {
    "discrete": spaces.Discrete(2),
    "text": spaces.Text(3),
    "oneof": spaces.OneOf([spaces.Discrete(2), spaces.Box(-1.0, 1.0, (2,), np.float32)]),
}


class Ring(spaces.Space):
    """A custom space: integers modulo 7."""

    def sample(self, mask=None, probability=None):
        return int(self.np_random.integers(7))

    def contains(self, x):
        return isinstance(x, int) and 0 <= x < 7


def _same(got, want) -> bool:
    """Same value, same types, same dtypes and shapes, all the way down."""
    if isinstance(want, GraphInstance):
        return isinstance(got, GraphInstance) and all(_same(g, w) for g, w in zip(got, want))
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(
            _same(got[k], want[k]) for k in want)
    if isinstance(want, tuple):
        return (type(got) is tuple and len(got) == len(want)
                and all(_same(g, w) for g, w in zip(got, want)))
    if isinstance(want, np.ndarray):
        return (isinstance(got, np.ndarray) and got.dtype == want.dtype
                and got.shape == want.shape and np.array_equal(got, want))
    if want is None:
        return got is None
    return type(got) is type(want) and got == want


def _split(space: spaces.Space, batch, n: int) -> list:
    """A read-back batch as one value per row, without the codecs under test."""
    if isinstance(space, spaces.Dict):
        columns = {k: _split(s, batch[k], n) for k, s in space.spaces.items()}
        return [{k: columns[k][i] for k in columns} for i in range(n)]
    if isinstance(space, spaces.Tuple):
        columns_t = [_split(s, part, n) for s, part in zip(space.spaces, batch)]
        return [tuple(c[i] for c in columns_t) for i in range(n)]
    assert len(batch) == n
    return list(batch)


@pytest.mark.parametrize("name", list(RAGGED), ids=list(RAGGED))
def test_space_json_roundtrip(name):
    space = RAGGED[name]
    again = space_from_json(space_to_json(space))
    assert again == space
    if isinstance(space, spaces.Text):  # the charset keeps its order: sampling is the same
        assert again.characters == space.characters


@pytest.mark.parametrize("name", list(RAGGED), ids=list(RAGGED))
def test_codec_roundtrip_through_slices_takes_filters_and_chunks(name):
    space = RAGGED[name]
    space.seed(3)
    values = [space.sample() for _ in range(9)]
    codec = codec_for(space)
    column = codec.to_arrow(codec.concat([codec.stack(values[:4]), codec.stack(values[4:])]), 9)
    column.validate(full=True)
    assert column.type == codec.arrow_type
    picks = [8, 0, 3, 3]
    keep = [True, False] * 4 + [True]
    cases = [
        (column, values),
        (column.slice(2, 5), values[2:7]),
        (column.take(pa.array(picks)), [values[i] for i in picks]),
        (column.filter(pa.array(keep)), values[::2]),
        (pa.chunked_array([column.slice(0, 4), column.slice(4)]), values),
        (column.slice(0, 0), []),
    ]
    for array, want in cases:
        got = _split(space, codec.from_arrow(array), len(want))
        for g, w in zip(got, want, strict=True):
            assert space.contains(g), g
            assert _same(g, w), (g, w)


def test_graph_edges_none_and_empty_stay_apart():
    space = RAGGED["graph"]
    codec = codec_for(space)
    nodes = np.zeros((2, 3), np.float32)
    values = [GraphInstance(nodes, None, None),
              GraphInstance(nodes, np.zeros(0, np.int64), np.zeros((0, 2), np.int32)),
              GraphInstance(nodes[:1], np.array([3]), np.array([[0, 0]], np.int32))]
    got = codec.from_arrow(codec.to_arrow(values, 3))
    assert all(_same(g, w) for g, w in zip(got, values, strict=True))


def test_columns_are_plain_arrow_types():
    assert codec_for(RAGGED["text"]).arrow_type == pa.string()
    assert codec_for(RAGGED["sequence-stacked"]).arrow_type == pa.list_(
        pa.field("item", pa.int64(), nullable=False))
    graph = codec_for(RAGGED["graph"]).arrow_type
    assert [f.name for f in graph] == ["nodes", "edges", "edge_links"]
    assert graph.field("edge_links").type.value_type == pa.list_(pa.int32(), 2)
    oneof = codec_for(RAGGED["oneof"])
    rows = oneof.to_arrow([(np.int64(2), "ab"), (np.int64(0), np.int64(1))], 2).to_pylist()
    assert rows == [{"index": 2, "0": None, "1": None, "2": "ab"},
                    {"index": 0, "0": 1, "1": None, "2": None}]


def test_replace_row_sets_one_value_of_any_space():
    space = RAGGED["dict-of-ragged"]
    space.seed(0)
    values = [space.sample() for _ in range(3)]
    codec = codec_for(space)
    batch = codec.stack(values)
    final = space.sample()
    batch = codec.replace_row(batch, 1, final)
    got = _split(space, codec.from_arrow(codec.to_arrow(batch, 3)), 3)
    assert _same(got[1], final) and _same(got[0], values[0]) and _same(got[2], values[2])


def _run(obs_space, act_space, sink, **kwargs):
    """Steps 2 envs with random actions; returns the env and the (obs, action, next_obs)
    transitions the envs went through, in the order they were recorded (NEXT_STEP autoreset:
    the reset steps are no transitions)."""
    envs = relayrl_gym.wrap(lambda: TestingEnv(obs_space, act_space, length=3), actors=2,
                            sink=sink, **kwargs)
    envs.action_space.seed(0)
    obs, _ = envs.reset(seed=0)
    prev = list(iterate(envs.observation_space, obs))
    resetting = [False, False]
    expected = []
    for _ in range(8):
        action = envs.action_space.sample()
        nxt, _, term, trunc, _ = envs.step(action)
        actions = list(iterate(envs.action_space, action))
        now = list(iterate(envs.observation_space, nxt))
        for i in range(2):
            if not resetting[i]:
                expected.append((prev[i], actions[i], now[i]))
            resetting[i] = bool(term[i] or trunc[i])
        prev = now
    return envs, expected


@pytest.mark.parametrize("act_name", list(ACTIONS), ids=list(ACTIONS))
@pytest.mark.parametrize("obs_name", list(RAGGED), ids=list(RAGGED))
def test_recorded_observations_and_actions_come_back_exactly(obs_name, act_name, sink_dir):
    obs_space, act_space = RAGGED[obs_name], ACTIONS[act_name]
    envs, expected = _run(obs_space, act_space, sink_dir)
    envs.close()

    ds = relayrl_gym.load(envs.run_path)
    assert ds.observation_space == obs_space and ds.action_space == act_space
    assert ds.metadata["observation_space"] == space_to_json(obs_space)
    n = len(ds)
    assert n == len(expected) > 8
    order = np.lexsort((ds.table.column("env_index").to_numpy(),
                        ds.table.column("timestamp").cast("int64").to_numpy()))
    t = ds.transitions()
    got = zip(_split(obs_space, t.obs, n), _split(act_space, t.action, n),
              _split(obs_space, t.next_obs, n))
    rows = list(got)
    for row, (obs, action, next_obs) in zip(order.tolist(), expected):
        g_obs, g_action, g_next = rows[row]
        assert obs_space.contains(g_obs) and obs_space.contains(g_next)
        assert act_space.contains(g_action)
        assert _same(g_obs, obs), (g_obs, obs)
        assert _same(g_action, action), (g_action, action)
        assert _same(g_next, next_obs), (g_next, next_obs)


@pytest.mark.parametrize("obs_name", ["text", "graph", "dict-of-ragged"])
def test_episodes_and_pandas_hold_the_values(obs_name, sink_dir):
    obs_space = RAGGED[obs_name]
    envs, _ = _run(obs_space, ACTIONS["oneof"], sink_dir)
    envs.close()
    ds = relayrl_gym.load(envs.run_path)
    episodes = list(ds.episodes())
    assert len(episodes) >= 4
    for ep in episodes:
        steps = len(ep.rewards)
        observations = _split(obs_space, ep.observations, steps + 1)
        assert all(obs_space.contains(o) for o in observations)
        assert all(ACTIONS["oneof"].contains(a)
                   for a in _split(ACTIONS["oneof"], ep.actions, steps))
    frame = ds.to_pandas()
    assert all(obs_space.contains(o) for o in frame["obs"])


def test_same_step_autoreset_records_final_observations(sink_dir):
    envs = relayrl_gym.wrap(lambda: TestingEnv(RAGGED["text"], length=2), actors=2,
                            sink=sink_dir, autoreset_mode="same_step")
    try:
        envs.reset(seed=0)
        for _ in range(3):
            envs.step(np.array([0, 1]))
    finally:
        envs.close()
    assert len(relayrl_gym.load(envs.run_path)) == 6


@pytest.mark.parametrize("space", [Ring(), spaces.Sequence(Ring()),
                                   spaces.Dict({"a": spaces.OneOf([spaces.Discrete(2), Ring()])})],
                         ids=["custom", "in-sequence", "in-oneof-in-dict"])
def test_custom_space_is_a_clear_error_listing_the_supported_kinds(space, sink_dir):
    with pytest.raises(UnsupportedSpaceError, match=(
            r"cannot record a Ring space \(.*\); relayrl-gym records Box, Discrete, "
            r"MultiDiscrete, MultiBinary, Text, Dict, Tuple, Sequence, Graph and OneOf spaces")):
        relayrl_gym.wrap(lambda: TestingEnv(space), sink=sink_dir)
    with pytest.raises(UnsupportedSpaceError, match="cannot record a Ring space"):
        space_to_json(space)
    envs = relayrl_gym.wrap(lambda: TestingEnv(space), sink=None)  # unrecorded works
    envs.reset(seed=0)
    envs.close()


@pytest.mark.parametrize("name", ["text", "sequence", "graph", "oneof", "dict-of-ragged"])
def test_sql_rows_refuse_spaces_of_varying_size(name):
    codec = codec_for(RAGGED[name])
    RAGGED[name].seed(0)
    column = codec.to_arrow(codec.stack([RAGGED[name].sample() for _ in range(2)]), 2)
    with pytest.raises(UnsupportedSpaceError, match=(
            r"the SQL sink stores observations and actions as fixed-size rows.*"
            r"Record this run with the Arrow sink")):
        encode_rows(codec, column)


def test_sql_sink_refuses_them_when_the_run_opens(tmp_path):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with pytest.raises(UnsupportedSpaceError, match=(
            r"SQL sink stores observations and actions as fixed-size rows.*a Text space")):
        relayrl_gym.wrap(lambda: TestingEnv(RAGGED["text"], length=3), actors=2,
                         sink=[tmp_path / "arrow", url])
    # Nothing half-open is left behind: the Arrow run was not kept going either.
    assert not [t for t in threading.enumerate() if t.name.startswith("relayrl")]
