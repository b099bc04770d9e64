"""The inference channel's messages: observation rows in, actions out, as raw array frames.

A request or reply is a JSON header (`relayrl_gym.transport.protocol`) followed by one frame
per array: the array's C-order bytes, described in the header by ``{"dtype", "shape"}``. Only
plain numeric dtypes travel (`DTYPES`); nothing is pickled. Decoding checks every description
against its frame before a byte is read as an array, and raises `ProtocolViolation` saying
what was wrong.
"""

from __future__ import annotations

import math
import struct
from typing import Any, NamedTuple

import numpy as np

from relayrl_gym.transport.protocol import (
    Header,
    Kind,
    ProtocolViolation,
    encode,
)

__all__ = [
    "DTYPES",
    "MAX_ROWS",
    "Actions",
    "Request",
    "array_spec",
    "decode_actions",
    "decode_request",
    "encode_actions",
    "encode_request",
    "pack",
    "read_array",
    "unpack",
]

#: The dtypes an array frame may hold (plain numbers and booleans, native byte order).
DTYPES = frozenset(["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                    "uint64", "float16", "float32", "float64"])
_ITEMSIZE = {name: np.dtype(name).itemsize for name in DTYPES}
_NAMES = {np.dtype(name): name for name in DTYPES}  # dtype.name is slow to compute
#: The most rows one request may carry.
MAX_ROWS = 1 << 16
_MAX_DIMS = 8


class Request(NamedTuple):
    """An ``act`` request as decoded: its id, the observation rows, the optional mask rows
    and the optional sampling seed."""

    id: int
    obs: np.ndarray
    mask: np.ndarray | None
    seed: int | None


class Actions(NamedTuple):
    """An ``actions`` reply as decoded."""

    id: int
    version: int
    actions: np.ndarray
    data: dict[str, np.ndarray]


def array_spec(array: np.ndarray) -> dict[str, Any]:
    """How a header describes ``array``'s frame.

    >>> array_spec(np.zeros((2, 3), np.float32))
    {'dtype': 'float32', 'shape': [2, 3]}
    """
    return {"dtype": _NAMES.get(array.dtype) or array.dtype.name, "shape": list(array.shape)}


def _frame(array: np.ndarray) -> Any:
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    return array.data.cast("B") if array.size else b""


def read_array(spec: Any, frame: bytes | memoryview, what: str) -> np.ndarray:
    """The array ``frame`` holds, once it is known to be what ``spec`` says (read-only,
    sharing the frame's memory).

    >>> read_array({"dtype": "int64", "shape": [2]}, np.arange(2).tobytes(), "obs")
    array([0, 1])
    >>> read_array({"dtype": "object", "shape": [1]}, b"", "obs")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    relayrl_gym.transport.protocol.ProtocolViolation: `obs` has dtype 'object'; ...
    """
    if not isinstance(spec, dict):
        raise ProtocolViolation(f"`{what}` must be described by {{dtype, shape}}, got "
                                f"{str(spec)[:60]!r}")
    dtype, shape = spec.get("dtype"), spec.get("shape")
    if dtype not in DTYPES:
        raise ProtocolViolation(f"`{what}` has dtype {str(dtype)[:30]!r}; arrays must be one of "
                                f"{', '.join(sorted(DTYPES))}")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= _MAX_DIMS or
            not all(type(d) is int and 0 <= d <= MAX_ROWS * 1024 for d in shape)):
        raise ProtocolViolation(f"`{what}` must have a shape of 1 to {_MAX_DIMS} sizes >= 0, "
                                f"got {str(shape)[:60]!r}")
    expected = math.prod(shape) * _ITEMSIZE[dtype]
    if expected != len(frame):
        raise ProtocolViolation(f"`{what}` of dtype {dtype} and shape {tuple(shape)} needs "
                                f"{expected} bytes; its frame has {len(frame)}")
    return np.frombuffer(frame, dtype=dtype).reshape(shape)


_COUNT = struct.Struct("<I")
_MAX_FRAMES = 1024  # a header, the actions and one frame per extra output


def pack(frames: list[Any]) -> bytes:
    """Frames as one message, for transports without multipart messages (NATS): their count,
    each one's length, then their bytes.

    >>> unpack(pack([b"ab", b"", b"c"]))
    [b'ab', b'', b'c']
    """
    views = [memoryview(f).cast("B") if not isinstance(f, bytes) else f for f in frames]
    head = _COUNT.pack(len(views)) + struct.pack(f"<{len(views)}Q", *map(len, views))
    return b"".join([head, *views])


def unpack(data: bytes | memoryview) -> list[bytes]:
    """The frames of a `pack` message; raises `ProtocolViolation` when it is not one."""
    view = memoryview(data).cast("B")
    if len(view) < _COUNT.size:
        raise ProtocolViolation("a packed message needs its frame count")
    (count,) = _COUNT.unpack_from(view)
    if not 1 <= count <= _MAX_FRAMES or len(view) < _COUNT.size + 8 * count:
        raise ProtocolViolation(f"a packed message holds 1 to {_MAX_FRAMES} frames, with their "
                                f"lengths; got a count of {count}")
    lengths = struct.unpack_from(f"<{count}Q", view, _COUNT.size)
    start = _COUNT.size + 8 * count
    if start + sum(lengths) != len(view):
        raise ProtocolViolation(f"a packed message's frames add up to {sum(lengths)} bytes; it "
                                f"holds {len(view) - start}")
    frames = []
    for length in lengths:
        frames.append(bytes(view[start:start + length]))
        start += length
    return frames


def encode_request(request_id: int, obs: np.ndarray, mask: np.ndarray | None = None,
                   seed: int | None = None) -> list[Any]:
    """The frames of an ``act`` request.

    >>> from relayrl_gym.transport.protocol import decode_header
    >>> frames = encode_request(7, np.zeros((2, 4), np.float32), seed=3)
    >>> decode_request(decode_header(frames[0]), frames[1:])[0::3]
    (7, 3)
    """
    fields: dict[str, Any] = {"id": request_id, "obs": array_spec(obs)}
    frames = [None, _frame(obs)]
    if mask is not None:
        fields["mask"] = array_spec(mask)
        frames.append(_frame(mask))
    if seed is not None:
        fields["seed"] = seed
    frames[0] = encode(Kind.ACT, **fields)
    return frames


def decode_request(header: Header, payload: list[Any]) -> Request:
    """An ``act`` request's arrays, checked (one row per observation, a 2-D mask of as many
    rows); raises `ProtocolViolation`."""
    request_id = header.integer("id")
    fields = header.fields
    wanted = 2 if "mask" in fields else 1
    if len(payload) != wanted:
        raise ProtocolViolation(f"an act request carries {wanted} array frame(s) after its "
                                f"header, got {len(payload)}")
    obs = read_array(fields.get("obs"), payload[0], "obs")
    if len(obs) > MAX_ROWS:
        raise ProtocolViolation(f"a request may carry at most {MAX_ROWS} rows, got {len(obs)}")
    mask = None
    if wanted == 2:
        mask = read_array(fields.get("mask"), payload[1], "mask")
        if mask.ndim != 2 or len(mask) != len(obs):
            raise ProtocolViolation(f"`mask` must have one row per observation (shape "
                                    f"({len(obs)}, n)), got {mask.shape}")
    seed = fields.get("seed")
    if seed is not None and (type(seed) is not int or not 0 <= seed < 2**64):
        raise ProtocolViolation(f"`seed` must be an integer in [0, 2**64), got {str(seed)[:30]}")
    return Request(request_id, obs, mask, seed)


def encode_actions(request_id: int, version: int, actions: np.ndarray,
                   data: dict[str, np.ndarray]) -> list[Any]:
    """The frames of an ``actions`` reply."""
    arrays = {name: np.asarray(value) for name, value in data.items()}
    header = encode(Kind.ACTIONS, id=request_id, version=version, actions=array_spec(actions),
                    data=[{"name": name, **array_spec(value)} for name, value in arrays.items()])
    return [header, _frame(actions), *(_frame(value) for value in arrays.values())]


def decode_actions(header: Header, payload: list[Any]) -> Actions:
    """An ``actions`` reply's arrays, checked; raises `ProtocolViolation`.

    >>> from relayrl_gym.transport.protocol import decode_header
    >>> frames = encode_actions(1, 4, np.array([0, 1]), {"value": np.zeros(2, np.float32)})
    >>> reply = decode_actions(decode_header(frames[0]), frames[1:])
    >>> reply.version, reply.actions.tolist(), list(reply.data)
    (4, [0, 1], ['value'])
    """
    request_id = header.integer("id")
    version = header.integer("version", minimum=-1)
    outputs = header.fields.get("data")
    if not isinstance(outputs, list) or len(payload) != 1 + len(outputs):
        raise ProtocolViolation("an actions reply carries the actions and one frame per extra "
                                "output after its header")
    actions = read_array(header.fields.get("actions"), payload[0], "actions")
    data: dict[str, np.ndarray] = {}
    for spec, frame in zip(outputs, payload[1:]):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ProtocolViolation(f"an extra output needs a name, got {str(spec)[:60]!r}")
        data[name] = read_array(spec, frame, name)
        if len(data[name]) != len(actions):
            raise ProtocolViolation(f"extra output {name!r} has {len(data[name])} rows for "
                                    f"{len(actions)} actions")
    return Actions(request_id, version, actions, data)

