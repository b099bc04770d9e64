"""Checks on a payload before anything reads it: its checksum, and the shape of its Arrow IPC
message (no compressed bodies: a few kilobytes must not expand to gigabytes).

A sender's batches are Arrow IPC record-batch messages with uncompressed bodies, so their
size in memory is their size on the wire, which the collector's message limit bounds. A body
compressed with Arrow's IPC compression could expand a thousandfold when read; it is refused
by reading the message's flatbuffer metadata, before any buffer is decompressed.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pyarrow as pa

from relayrl_gym.transport.protocol import ProtocolViolation

__all__ = ["check_record_batch_message", "checked_payload", "payload_crc", "read_checked_batch"]

_RECORD_BATCH = 3  # MessageHeader union tag of RecordBatch (Arrow's Message.fbs)


def payload_crc(payload: Any) -> int:
    """CRC-32 of a payload frame (``zlib.crc32``: C, and it releases the GIL on large frames).

    >>> payload_crc(b"relayrl")
    1675095911
    """
    return zlib.crc32(payload)


def checked_payload(payload: Any, crc: Any, what: str) -> pa.Buffer:
    """The payload as a pyarrow buffer once its CRC-32 matches ``crc`` (from the header).

    Raises:
        ProtocolViolation: ``crc`` is missing or does not match (a corrupted message).
    """
    if isinstance(crc, bool) or not isinstance(crc, int):
        raise ProtocolViolation(f"{what} has no integer 'crc' field (protocol v2 senders "
                                "send the payload's CRC-32)")
    got = zlib.crc32(payload)
    if got != crc:
        raise ProtocolViolation(f"{what} is corrupted: its payload's CRC-32 is {got}, the "
                                f"header says {crc}; it was not written")
    return pa.py_buffer(payload)


def check_record_batch_message(buffer: pa.Buffer, what: str) -> None:
    """Refuses anything but an uncompressed Arrow IPC record-batch message.

    >>> import numpy as np
    >>> check_record_batch_message(pa.record_batch({"x": np.arange(3)}).serialize(), "batch 0")
    """
    try:
        message = pa.ipc.read_message(buffer)
        meta = message.metadata.to_pybytes()
        root = _u32(meta, 0)
        kind = _field(meta, root, 1)
        header = _field(meta, root, 2)
        if kind is None or meta[kind] != _RECORD_BATCH or header is None:
            raise ProtocolViolation(f"{what} is an Arrow {message.type} message, not a record "
                                    "batch")
        version = _field(meta, root, 0)
        old = version is None or struct.unpack_from("<h", meta, version)[0] < 4  # before V5
        # Arrow 0.17 marked compressed bodies in the message's custom metadata: refused too.
        compressed = old or _field(meta, root, 4) is not None or \
            _field(meta, header + _u32(meta, header), 3) is not None
    except ProtocolViolation:
        raise
    except Exception as err:  # malformed metadata: struct.error, IndexError, ArrowInvalid
        raise ProtocolViolation(f"{what} is not an Arrow IPC record-batch message: "
                                f"{str(err)[:200]}") from err
    if compressed:
        raise ProtocolViolation(f"{what} has an IPC-compressed body; senders send bodies "
                                "uncompressed (their size is bounded by the message limit)")


def read_checked_batch(buffer: pa.Buffer, schema: pa.Schema, what: str) -> pa.RecordBatch:
    """A peer's record-batch message read with ``schema`` once it is checked in full (an
    uncompressed record batch whose offsets and lengths hold: a peer's are never trusted).

    Raises:
        ProtocolViolation: it is not a valid record batch of ``schema``.
    """
    check_record_batch_message(buffer, what)
    try:
        batch = pa.ipc.read_record_batch(buffer, schema)
        batch.validate(full=True)
    except Exception as err:
        raise ProtocolViolation(f"{what} is not a valid record batch of the run's schema: "
                                f"{str(err)[:200]}") from err
    return batch


def _u32(data: bytes, pos: int) -> int:
    return int(struct.unpack_from("<I", data, pos)[0])


def _field(data: bytes, table: int, index: int) -> int | None:
    """Position of field ``index`` of the flatbuffer table at ``table``; None when absent."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    size = struct.unpack_from("<H", data, vtable)[0]
    slot = 4 + 2 * index
    if slot + 2 > size:
        return None
    offset = struct.unpack_from("<H", data, vtable + slot)[0]
    return table + offset if offset else None
