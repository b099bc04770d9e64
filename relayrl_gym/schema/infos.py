"""Env info dicts as the ``info`` column holds them: numbers where they are all numbers, JSON
text otherwise (`info_to_json`)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from relayrl_gym.schema.arrow_arrays import numpy_to_arrow, strings_to_arrow, tiled_strings
from relayrl_gym.schema.transitions import INFO_TYPE

__all__ = ["INFO_TYPE", "InfoRows", "InfosAlike", "RecordedInfo", "RowInfos", "info_to_json",
           "infos_column", "infos_record", "infos_to_arrow", "infos_to_text", "recorded_info",
           "text_info_schema", "with_text_info"]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


#: One encoder for every info (``json.dumps`` with ``default=`` builds a new one per call, which
#: costs as much as the encoding of a small info).
_ENCODER = json.JSONEncoder(default=_json_default, allow_nan=False)

#: Non-finite floats as JSON strings, as the protobuf JSON mapping writes them.
_NON_FINITE = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


def info_to_json(info: dict[str, Any]) -> str | None:
    """Serialises one env's info dict as standard JSON; ``None`` for an empty info.

    numpy values become lists and numbers; NaN and infinities (not JSON) become the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``; keys become strings.

    >>> info_to_json({"x": np.array([1.0, np.nan]), 3: np.float32(np.inf)})
    '{"x": [1.0, "NaN"], "3": "Infinity"}'
    """
    if not info:
        return None
    try:  # the common case: one C-accelerated pass
        return _ENCODER.encode(info)
    except (TypeError, ValueError):  # keys JSON cannot hold, non-finite floats, cycles
        try:
            return json.dumps(_plain(info), allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return json.dumps({"__unserializable__": repr(info)})


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data: str keys, lists, finite floats or their names."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return _plain(value.tolist())
    if isinstance(value, float):
        return value if value == value and value not in _NON_FINITE else \
            _NON_FINITE.get(value, "NaN")
    if value is None or isinstance(value, str | int | bool):
        return value
    return repr(value)


_FLOAT_TYPES = frozenset({float, np.float64, np.float32, np.float16})
_INT_TYPES = frozenset({int, np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16,
                        np.uint32})

#: A recorded info: JSON text, or ``(kind, keys, values)`` with kind "floats" or "ints".
RecordedInfo = str | tuple[str, tuple[str, ...], tuple[Any, ...]]

_STR = {str}
_TUPLE = {tuple}

#: The infos of every row of a batch, all numbers of one kind under the same keys:
#: ``(kind, keys, values)`` with the values of every row, row after row (see `RowInfos`).
InfoRows = tuple[str, tuple[str, ...], tuple[Any, ...]]


class InfosAlike(NamedTuple):
    """The info dicts of a batch's rows, found to have the same keys in the same order
    (`RowInfos.alike`): what both the recorded record and a vector env's batched info are
    built from."""

    keys: tuple[str, ...]
    values: tuple[Any, ...]  # every row's values, row after row
    types: tuple[type, ...]  # the type of each value


class RowInfos:
    """Finds the info dicts of a batch's rows alike: the same exactly-str keys in the same
    order (MuJoCo's rewards and positions, Atari's frame counts, at every step), in a few
    C-level passes for the batch. From that finding `infos_record` keeps them as one
    `InfoRows` record (two small objects, where `recorded_info` makes three for each row) and
    the vector env builds its Gymnasium vector info. One per stepping thread (it remembers the
    last key order it saw).

    >>> rows = RowInfos()
    >>> infos_record(rows.alike([{"x": 0.5, "y": np.float32(1)}, {"x": 1.5, "y": np.float32(2)}]))
    ('floats', ('x', 'y'), (0.5, np.float32(1.0), 1.5, np.float32(2.0)))
    >>> rows.alike([{"x": 1}, {"y": 2}]) is None  # other keys: each row by `recorded_info`
    True
    >>> rows.alike([{1: 0.5}, {1: 0.5}]) is None  # keys that are not str: likewise
    True
    """

    __slots__ = ("_flat", "_keys")

    def __init__(self) -> None:
        self._flat: tuple[Any, ...] | None = None  # every row's keys, row after row, as last seen
        self._keys: tuple[str, ...] = ()

    def alike(self, infos: Sequence[dict[str, Any]]) -> InfosAlike | None:
        """The infos' common keys and every row's values, or None when the rows' keys differ
        (or one info is empty, or a key is not exactly a `str`). While the keys stay the same,
        `keys` is the same tuple from call to call."""
        flat = tuple(itertools.chain.from_iterable(infos))
        if set(map(type, flat)) != _STR:  # keys other than str are told apart by `info_to_json`
            return None  # (1, 1.0 and True are equal keys, and would pass for each other below)
        if flat != self._flat:  # (the same strings again: compared by identity, quickly)
            size = len(infos[0]) if infos else 0
            # Every dict's keys are distinct: the pattern repeating means each dict has the
            # first one's keys, in its order.
            if not size or flat[:size] * len(infos) != flat:
                return None
            self._flat, self._keys = flat, flat[:size]
        values = tuple(itertools.chain.from_iterable(map(dict.values, infos)))
        return InfosAlike(self._keys, values, tuple(map(type, values)))


def infos_record(alike: InfosAlike) -> InfoRows | None:
    """Alike infos as one `InfoRows` record: None unless every value is a number of one kind
    (floats, or ints; bools are kept as text, as `recorded_info` keeps them)."""
    kinds = set(alike.types)
    if kinds <= _FLOAT_TYPES:
        return ("floats", alike.keys, alike.values)
    if kinds <= _INT_TYPES:
        return ("ints", alike.keys, alike.values)
    return None


def recorded_info(info: dict[str, Any]) -> RecordedInfo | None:
    """What the recorder keeps of one env's info dict; ``None`` for an empty info.

    An info of numbers only (MuJoCo's rewards and positions, Atari's frame counts) is kept as
    its keys and values (immutable scalars: no copy, no encoding on the stepping thread), and
    stored as numbers; any other is encoded now, as `info_to_json` does.

    >>> recorded_info({"x": np.float64(0.5), "y": 1.0})
    ('floats', ('x', 'y'), (np.float64(0.5), 1.0))
    >>> recorded_info({"lives": 3, "frame": np.int64(8)})
    ('ints', ('lives', 'frame'), (3, np.int64(8)))
    >>> recorded_info({"ok": True})
    '{"ok": true}'
    """
    if not info:
        return None
    values = tuple(info.values())
    kinds = set(map(type, values))
    if kinds <= _FLOAT_TYPES:  # keys other than str are found when the column is built
        return ("floats", tuple(info), values)
    if kinds <= _INT_TYPES:
        return ("ints", tuple(info), values)
    return info_to_json(info)


def _numbers_map(rows: list[tuple[str, tuple[str, ...], tuple[Any, ...]] | None], kind: str,
                 dtype: type, n: int) -> pa.Array:
    mine = [r if r is not None and r[0] == kind else None for r in rows]
    present = [r for r in mine if r is not None]
    if not present:
        return pa.nulls(n, INFO_TYPE.field(kind).type)
    valid = np.fromiter((r is not None for r in mine), np.bool_, n)
    key_sets = {r[1] for r in present}
    if len(key_sets) == 1:  # the common case: every info of the block has the same keys
        same = next(iter(key_sets))
        if set(map(type, same)) - {str}:
            raise TypeError("an info key that is not a string")  # the block's infos go as text
        lengths = valid.astype(np.int32) * np.int32(len(same))
        keys = tiled_strings(same, len(present))
    else:
        lengths = np.fromiter((len(r[1]) if r is not None else 0 for r in mine), np.int32, n)
        listed = [k for r in present for k in r[1]]
        if set(map(type, listed)) - {str}:
            raise TypeError("an info key that is not a string")  # the block's infos go as text
        keys = strings_to_arrow(listed)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values: np.ndarray = np.fromiter(itertools.chain.from_iterable(r[2] for r in present), dtype,
                                     int(offsets[-1]))
    return pa.MapArray.from_arrays(
        numpy_to_arrow(offsets), keys, numpy_to_arrow(values),
        type=INFO_TYPE.field(kind).type, mask=numpy_to_arrow(~valid))


def infos_to_arrow(values: list[RecordedInfo | None]) -> pa.Array:
    """The stored ``info`` column (`INFO_TYPE`) of recorded infos (see `recorded_info`).

    >>> column = infos_to_arrow([None, ("floats", ("x",), (0.5,)), '{"a": [1]}'])
    >>> infos_to_text(column).to_pylist()
    [None, '{"x": 0.5}', '{"a": [1]}']
    """
    n = len(values)
    numbers: list[Any] = [v if type(v) is tuple else None for v in values]
    texts: list[Any] = [v if type(v) is str else None for v in values]
    try:
        floats = _numbers_map(numbers, "floats", np.float64, n)
        ints = _numbers_map(numbers, "ints", np.int64, n)
    except (OverflowError, ValueError, TypeError):  # e.g. an int past int64: as text
        texts = [info_to_json(dict(zip(v[1], v[2]))) if type(v) is tuple else v
                 for v in values]
        floats = pa.nulls(n, INFO_TYPE.field("floats").type)
        ints = pa.nulls(n, INFO_TYPE.field("ints").type)
    valid = np.fromiter((v is not None for v in values), np.bool_, n)
    return pa.StructArray.from_arrays([floats, ints, strings_to_arrow(texts)],
                                      fields=list(INFO_TYPE), mask=numpy_to_arrow(~valid))


_KIND = itemgetter(0)
_KEYS = itemgetter(1)
_VALUES = itemgetter(2)
_NUMBER_DTYPES = {"floats": np.float64, "ints": np.int64}


def infos_column(parts: Sequence[dict[int, RecordedInfo] | InfoRows | None],
                 starts: Sequence[int], counts: Sequence[int], n: int) -> pa.Array:
    """The stored ``info`` column of ``n`` rows from the infos of the batches that hold them:
    batch ``i`` (rows ``starts[i]`` on, ``counts[i]`` of them) has a dict from its rows to
    their recorded infos (`recorded_info`), an `InfoRows` record of all of them (`RowInfos`),
    or None. The column `infos_to_arrow` builds of the same infos.

    >>> column = infos_column([("floats", ("x",), (0.5, 1.5)), None, {0: '{"a": 1}'}],
    ...                       [0, 2, 3], [2, 1, 1], 4)
    >>> infos_to_text(column).to_pylist()
    ['{"x": 0.5}', '{"x": 1.5}', None, '{"a": 1}']
    """
    if not any(parts):  # no batch has infos (CartPole): one C-level pass
        return pa.nulls(n, INFO_TYPE)
    given = [(start, count, part) for start, count, part in zip(starts, counts, parts) if part]
    records = _as_records(given)
    # The usual block, in which every info is numbers of one kind under the same keys
    # (MuJoCo's rewards and positions at every step), is built from its values in a few
    # C-level passes, with no Python object a row; any other goes through `infos_to_arrow`.
    fast = _records_column(*records, n) if records is not None else None
    if fast is not None:
        return fast
    column: list[Any] = [None] * n
    for start, count, part in given:
        if isinstance(part, dict):
            for row, value in part.items():
                column[start + row] = value
        else:  # each row's own (kind, keys, values)
            kind, keys, flat = part
            size = len(keys)
            column[start : start + count] = [(kind, keys, flat[i : i + size])
                                             for i in range(0, count * size, size)]
    return infos_to_arrow(column)


def _as_records(given: list[tuple[int, int, Any]]
                ) -> tuple[list[int], list[int], list[Any]] | None:
    """The batches' infos as records: each one's first row, its rows, and the record; a row
    -> info dict gives a record of one row for each of its infos of numbers (a MuJoCo step
    with a reset among its rows, between steps kept as records). None when one is text."""
    firsts: list[int] = []
    counts: list[int] = []
    records: list[Any] = []
    for start, count, part in given:
        if isinstance(part, dict):  # (C-level passes: no Python code a row)
            firsts.extend(map(start.__add__, part))
            counts.extend(itertools.repeat(1, len(part)))
            records.extend(part.values())
        else:
            firsts.append(start)
            counts.append(count)
            records.append(part)
    return (firsts, counts, records) if set(map(type, records)) == _TUPLE else None


def _records_column(firsts: list[int], row_counts: list[int], records: list[Any], n: int
                    ) -> pa.Array | None:
    """`infos_column` of records (`_as_records`), in increasing rows, that are all numbers of
    one kind under one key tuple (None for any other)."""
    kinds = set(map(_KIND, records))
    key_sets = set(map(_KEYS, records))
    if len(kinds) != 1 or len(key_sets) != 1:
        return None
    kind, keys = kinds.pop(), key_sets.pop()
    if set(map(type, keys)) - _STR:
        return None  # keys JSON makes strings: `infos_to_arrow` stores the infos as text
    starts = np.array(firsts, np.int64)
    counts = np.array(row_counts, np.int64)
    if len(starts) > 1 and not (np.diff(starts) > 0).all():
        return None  # (a batch's own dict may list its rows in any order)
    total = int(counts.sum())
    try:
        numbers = np.fromiter(itertools.chain.from_iterable(map(_VALUES, records)),
                              _NUMBER_DTYPES[kind], total * len(keys))
    except (OverflowError, ValueError, TypeError):  # e.g. an int past int64: as text, there
        return None
    valid = np.zeros(n, np.bool_)
    if total == n:  # every row has one (the batches never overlap)
        valid[:] = True
    else:  # each batch's rows: its start, then one by one
        begins = np.cumsum(counts) - counts
        valid[np.repeat(starts - begins, counts) + np.arange(total)] = True
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(valid.astype(np.int32) * np.int32(len(keys)), out=offsets[1:])
    absent = numpy_to_arrow(~valid)
    children = {name: pa.nulls(n, INFO_TYPE.field(name).type) for name in INFO_TYPE.names}
    children[kind] = pa.MapArray.from_arrays(
        numpy_to_arrow(offsets), tiled_strings(keys, total), numpy_to_arrow(numbers),
        type=INFO_TYPE.field(kind).type, mask=absent)
    return pa.StructArray.from_arrays(list(children.values()), fields=list(INFO_TYPE),
                                      mask=absent)


def infos_to_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Every row's info as the JSON text `info_to_json` gives its dict (null: no info), from
    a stored ``info`` column (`INFO_TYPE`, or text already)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if column.type == pa.string():
        return column
    if column.null_count == len(column):  # no info at all (CartPole): nothing to decode
        return pa.nulls(len(column), pa.string())
    texts = column.field("json").to_pylist()
    for kind in ("floats", "ints"):
        numbers = column.field(kind)
        if numbers.null_count == len(numbers):
            continue
        for i, pairs in enumerate(numbers.to_pylist()):
            if pairs is not None:
                texts[i] = info_to_json(dict(pairs))
    nulls = column.is_null().to_pylist()
    return strings_to_arrow([None if null else t for t, null in zip(texts, nulls)])


def text_info_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the ``info`` column as JSON text: the schema readers give.

    >>> text_info_schema(pa.schema([("info", INFO_TYPE)])).field("info").type
    DataType(string)
    """
    index = schema.get_field_index("info")
    if index < 0 or schema.field(index).type == pa.string():
        return schema
    return schema.set(index, schema.field(index).with_type(pa.string()))


def with_text_info(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with its ``info`` column as JSON text (``schema``: `text_info_schema`)."""
    if batch.schema.field("info").type == pa.string():
        return batch
    columns = list(batch.columns)
    index = batch.schema.get_field_index("info")
    columns[index] = infos_to_text(columns[index])
    return pa.RecordBatch.from_arrays(columns, schema=schema)
