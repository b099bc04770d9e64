"""The wire protocol between ZMQ senders, the collector and model subscribers.

Every message is a ZMQ multipart message whose first frame is a small JSON header (an object,
at most `MAX_HEADER_BYTES`) with ``"v"`` (`PROTOCOL_VERSION`) and ``"t"`` (the `Kind`). Payload
frames are raw bytes: Arrow IPC messages for data, model files for models. Nothing is pickled.

Data channel (sender DEALER -> collector ROUTER):
    ``start``  {run, sender, seq: -1, first, crc[, token]} + the run's Arrow schema (IPC schema
               message); ``first``: the sender's oldest unacknowledged seq (all before it were
               acked); ``token``: the one the collector gave this sender (a restart, a resend)
    ``batch``  {run, sender, seq, crc} + one record batch (IPC record-batch message, body not
               compressed); ``crc``: CRC-32 of the payload frame, checked before anything
Collector replies:
    ``started`` {run, next, models, max_bytes, token}  the run is open; ``next`` is the seq it
                                     expects (at least ``first``: a collector that lost its
                                     state skips ahead); ``token`` binds the sender name to
                                     this sender: a ``start`` naming it without the token, or
                                     from another CURVE key, is refused, and batches count only
                                     from the connection that started it (others get
                                     ``need_start``)
    ``ack``     {run, seq}           cumulative: every batch up to ``seq`` is in the sink
    ``nack``    {run, expected}      a gap: resend from ``expected``
    ``need_start`` {run}             unknown run (e.g. a restarted collector): send start again
    ``reject``  {reason}             the message was refused (counted)

Model channel (subscriber DEALER -> publisher ROUTER):
    ``hello`` {have, seen}           sent every second: subscription, heartbeat, late-join
                                     request; ``have``: the version the actor runs, ``seen``:
                                     the newest it got (a refused model is not sent again)
    ``model`` {version, files}       + one frame per file of the ModelModule directory

Inference channel (client DEALER -> inference server ROUTER; `relayrl_gym.transport.inference`):
    ``info``  {id[, client]}         what the served model takes and gives
    ``act``   {id, obs[, mask][, seed]} + the observation rows (+ the mask rows): raw
                                     C-order array bytes, described by {dtype, shape}
Server replies:
    ``described`` {id, metadata, version, max_rows}  the model's metadata.json and version
    ``actions`` {id, version, actions, data}  + the action rows, then one frame per extra
                                     output (``data``: [{name, dtype, shape}])
    ``error`` {id, reason}           the request was refused (counted); the server goes on
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any, NamedTuple

from relayrl_gym.errors import TransportError

__all__ = ["MAX_HEADER_BYTES", "MIN_MESSAGE_LIMIT", "PROTOCOL_VERSION", "Header", "Kind",
           "ProtocolViolation", "decode_header", "encode"]

#: Bumped on any incompatible change; a peer speaking another version is rejected.
#: 2: payload checksums, sender tokens, uncompressed IPC bodies.
PROTOCOL_VERSION = 2
#: The most a header frame may hold.
MAX_HEADER_BYTES = 4096
#: Every collector takes messages this large; a sender splits batches to half of it until the
#: collector's ``started`` reply tells its own limit.
MIN_MESSAGE_LIMIT = 2 * 1024 * 1024

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")  # used with fullmatch


class Kind(str, enum.Enum):
    """Message kinds (the header's ``"t"``)."""

    START = "start"
    BATCH = "batch"
    STARTED = "started"
    ACK = "ack"
    NACK = "nack"
    NEED_START = "need_start"
    REJECT = "reject"
    HELLO = "hello"
    MODEL = "model"
    INFO = "info"
    ACT = "act"
    DESCRIBED = "described"
    ACTIONS = "actions"
    ERROR = "error"


_KINDS = {kind.value: kind for kind in Kind}  # a dict lookup: Kind(name) costs microseconds


class ProtocolViolation(TransportError, ValueError):
    """A received message does not follow the protocol (it is rejected and counted)."""


class Header(NamedTuple):
    """A decoded header: its kind and the other fields as sent.

    >>> header = decode_header(encode(Kind.BATCH, run="r1", sender="s", seq=4))
    >>> header.kind, header.name("run"), header.integer("seq")
    (<Kind.BATCH: 'batch'>, 'r1', 4)
    """

    kind: Kind
    fields: dict[str, Any]

    def name(self, key: str) -> str:
        """A run or sender name: safe as a directory name (no path separators, no dots
        first); raises `ProtocolViolation` otherwise."""
        value = self.fields.get(key)
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise ProtocolViolation(f"header field {key!r} must be a name of letters, digits and "
                                    f"'._+-' (1-200 chars), got {str(value)[:60]!r}")
        return value

    def integer(self, key: str, minimum: int = 0) -> int:
        """An integer field >= ``minimum``; raises `ProtocolViolation` otherwise."""
        value = self.fields.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ProtocolViolation(f"header field {key!r} must be an integer >= {minimum}, "
                                    f"got {str(value)[:30]!r}")
        return value


def encode(kind: Kind, **fields: Any) -> bytes:
    """The header frame of a message.

    >>> decode_header(encode(Kind.ACK, run="r", seq=3)).fields["seq"]
    3
    """
    return json.dumps({"v": PROTOCOL_VERSION, "t": kind.value, **fields},
                      separators=(",", ":")).encode()


def decode_header(frame: bytes | memoryview) -> Header:
    """Parses and checks a header frame; raises `ProtocolViolation` saying what is wrong.

    >>> decode_header(b'{"v": 99, "t": "ack"}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    relayrl_gym.transport.protocol.ProtocolViolation: protocol version 99 is not supported ...
    """
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolViolation(f"header frame of {len(frame)} bytes is over the "
                                f"{MAX_HEADER_BYTES}-byte limit")
    try:
        raw = json.loads(bytes(frame))
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolViolation(f"header frame is not JSON: {err}") from err
    except RecursionError as err:  # '[[[[...' nests deeper than the parser goes
        raise ProtocolViolation("header frame nests too deeply") from err
    if not isinstance(raw, dict):
        raise ProtocolViolation("header frame must be a JSON object")
    version = raw.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolViolation(f"protocol version {str(version)[:20]} is not supported (this "
                                f"side speaks {PROTOCOL_VERSION}); upgrade relayrl-gym on the "
                                "older side")
    name = raw.pop("t", None)
    kind = _KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ProtocolViolation(f"unknown message kind {str(name)[:60]!r}")
    return Header(kind, raw)
