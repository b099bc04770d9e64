"""Observations and actions as one fixed-size byte string per row (how SQL sinks store them).

Box, Discrete, MultiDiscrete and MultiBinary leaves have a fixed shape, so one row of an
obs/action column of them (or of Dicts and Tuples of them) is the concatenation of its leaves'
raw bytes (native dtypes, C order, leaves in the space's order). The spaces stored with the run
say how to split them again: the round trip is exact. Text, Sequence, Graph and OneOf values vary
in size from step to step and have no such row: `check_fixed_size` says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from relayrl_gym.errors import UnsupportedSpaceError
from relayrl_gym.schema.codecs import Codec, DictCodec, LeafCodec, TupleCodec

__all__ = ["check_fixed_size", "decode_rows", "encode_rows", "row_size"]

_FIXED_SIZE = "Box, Discrete, MultiDiscrete and MultiBinary spaces (in Dicts and Tuples)"


def _leaves(codec: Codec) -> list[LeafCodec]:
    if isinstance(codec, DictCodec):
        return [leaf for child in codec.children.values() for leaf in _leaves(child)]
    if isinstance(codec, TupleCodec):
        return [leaf for child in codec.children for leaf in _leaves(child)]
    if isinstance(codec, LeafCodec):
        return [codec]
    kind = type(codec).__name__.removesuffix("Codec")
    raise UnsupportedSpaceError(
        f"the SQL sink stores observations and actions as fixed-size rows, of {_FIXED_SIZE}; "
        f"a {kind} space's values vary in size from step to step. Record this run with the "
        "Arrow sink (sink='relayrl_runs/'), which stores every space.")


def check_fixed_size(codec: Codec) -> None:
    """Raises `UnsupportedSpaceError` if the codec's rows have no fixed size (a Text, Sequence,
    Graph or OneOf space in it), which the SQL sink cannot store.

    >>> from gymnasium import spaces
    >>> from relayrl_gym.schema.codecs import codec_for
    >>> check_fixed_size(codec_for(spaces.Tuple((spaces.Discrete(2), spaces.Text(3)))))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    relayrl_gym.errors.UnsupportedSpaceError: the SQL sink stores ... a Text space's values vary...
    """
    _leaves(codec)


def row_size(codec: Codec) -> int:
    """Bytes per row."""
    return sum(leaf.row_bytes for leaf in _leaves(codec))


def _leaf_arrays(codec: Codec, array: pa.Array) -> list[np.ndarray]:
    if isinstance(codec, DictCodec | TupleCodec):
        children = (list(codec.children.values()) if isinstance(codec, DictCodec)
                    else codec.children)
        return [leaf for child, part in zip(children, array.flatten())
                for leaf in _leaf_arrays(child, part)]
    return [codec.from_arrow(array)]


def encode_rows(codec: Codec, array: pa.Array) -> np.ndarray:
    """An obs/action Arrow column as a ``(rows, row_size)`` uint8 array.

    >>> from gymnasium import spaces
    >>> from relayrl_gym.schema.codecs import codec_for
    >>> codec = codec_for(spaces.Dict({"a": spaces.Discrete(3), "b": spaces.Box(0, 1, (2,))}))
    >>> column = codec.to_arrow({"a": np.array([1, 2]), "b": np.ones((2, 2), np.float32)}, 2)
    >>> rows = encode_rows(codec, column)
    >>> rows.shape, decode_rows(codec, rows)["a"].tolist()
    ((2, 16), [1, 2])
    """
    check_fixed_size(codec)
    n = len(array)
    parts = [np.ascontiguousarray(leaf).reshape(n, -1).view(np.uint8)
             for leaf in _leaf_arrays(codec, array)]
    return parts[0] if len(parts) == 1 else np.hstack(parts)


def decode_rows(codec: Codec, rows: np.ndarray) -> Any:
    """The inverse of `encode_rows`: nested numpy batches with the space's shapes and dtypes."""
    offset = 0

    def build(c: Codec) -> Any:
        nonlocal offset
        if isinstance(c, DictCodec):
            return {k: build(child) for k, child in c.children.items()}
        if isinstance(c, TupleCodec):
            return tuple(build(child) for child in c.children)
        assert isinstance(c, LeafCodec)
        part = np.ascontiguousarray(rows[:, offset : offset + c.row_bytes])
        offset += c.row_bytes
        return part.view(c.dtype).reshape(len(rows), *c.shape)

    return build(codec)
