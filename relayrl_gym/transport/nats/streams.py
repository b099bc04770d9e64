"""The JetStream stream a run is recorded into: its subjects, its headers, and its creation.

A stream ``S`` holds the subjects ``PREFIX.>`` (``PREFIX`` is ``S`` for a stream relayrl-gym
creates). Each run has two subjects of its own:

- ``PREFIX.schema.<run>``: the run's Arrow schema (spaces, env, config in its metadata), one
  message per sender, published before its first batch;
- ``PREFIX.data.B0.B1.B2.B3.B4.<run>``: the run's batches, each one Arrow IPC record-batch
  message (no pickle), with headers naming its run, sender and sequence number. ``B0``..``B4``
  are the low bits (``0``/``1``) of the run id's CRC-32: its partition, so that ``n`` consumers
  (``n`` a power of two up to 32) share a stream with one subject filter each, member ``i``
  taking the runs whose partition is ``i`` modulo ``n`` (`partition_filter`).

``<run>`` is the run id made a subject token (`subject_token`). Every message carries the
``Nats-Msg-Id`` ``<run>/<sender>/<seq>`` (``.../schema`` for the schema), so the stream keeps a
message published twice within its duplicate window once; a consumer's per-sender sequence
numbers keep it once after that window too.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

from relayrl_gym.errors import ConfigError, TransportError
from relayrl_gym.transport.nats.options import NatsTarget, subject_token

__all__ = [
    "DEFAULT_MAX_AGE",
    "HEADER_ROWS",
    "HEADER_RUN",
    "HEADER_SENDER",
    "HEADER_SEQ",
    "MSG_ID",
    "PARTITION_BITS",
    "check_partition",
    "data_subject",
    "ensure_stream",
    "partition_filter",
    "schema_subject",
]

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
HEADER_RUN = "Relayrl-Run"
HEADER_SENDER = "Relayrl-Sender"
HEADER_SEQ = "Relayrl-Seq"
HEADER_ROWS = "Relayrl-Rows"
#: Seconds a created stream keeps messages (7 days; ``?max_age=`` in the URL, 0: forever).
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
#: Seconds within which the stream drops a message whose ``Nats-Msg-Id`` it has seen.
DUPLICATE_WINDOW = 120.0
#: Partition bits in a data subject: consumers of one durable name share a stream 2**k ways,
#: k <= 5.
PARTITION_BITS = 5


def partition_bits(run_id: str) -> str:
    """The partition tokens of ``run_id``'s data subject.

    >>> partition_bits("CartPole-v1-x")
    '0.1.0.1.1'
    """
    crc = zlib.crc32(run_id.encode())
    return ".".join(str((crc >> bit) & 1) for bit in range(PARTITION_BITS))


def data_subject(prefix: str, run_id: str) -> str:
    """The subject of ``run_id``'s batches.

    >>> data_subject("relayrl", "CartPole-v1-x")
    'relayrl.data.0.1.0.1.1.CartPole-v1-x'
    """
    return f"{prefix}.data.{partition_bits(run_id)}.{subject_token(run_id)}"


def check_partition(index: int, count: int) -> None:
    """Refuses a partition ``index`` of ``count`` consumers that the subjects cannot express."""
    if count < 1 or count > 1 << PARTITION_BITS or count & (count - 1):
        raise ConfigError(f"the number of consumers sharing a stream must be a power of two "
                          f"from 1 to {1 << PARTITION_BITS}, got {count}")
    if not 0 <= index < count:
        raise ConfigError(f"partition {index} of {count}: the index must be 0 to {count - 1}")


def partition_filter(prefix: str, index: int, count: int) -> str:
    """The subject filter of consumer ``index`` of ``count`` sharing ``prefix``'s batches.

    >>> partition_filter("relayrl", 0, 1), partition_filter("relayrl", 3, 4)
    ('relayrl.data.>', 'relayrl.data.1.1.>')
    """
    check_partition(index, count)
    bits = [str((index >> bit) & 1) for bit in range(count.bit_length() - 1)]
    return ".".join([prefix, "data", *bits, ">"])


def schema_subject(prefix: str, run_id: str) -> str:
    return f"{prefix}.schema.{subject_token(run_id)}"


async def ensure_stream(js: Any, target: NatsTarget) -> str:
    """Creates ``target``'s stream when it is missing; returns the subject prefix to publish
    under. An existing stream is used as it is, if one of its subjects is ``X.>``.

    Raises:
        ConfigError: the stream exists without a ``X.>`` subject.
        TransportError: the server refused to create it (permissions, limits).
    """
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(target.stream)
    except NotFoundError:
        info = await _create(js, target)
    subjects = list(info.config.subjects or [])
    for subject in subjects:
        if subject.endswith(".>") and "*" not in subject and ">" not in subject[:-2]:
            return str(subject[:-2])
    raise ConfigError(f"the stream {target.stream!r} at {target.display} exists with subjects "
                      f"{subjects}; relayrl-gym publishes under one 'PREFIX.>' subject: add "
                      f"'{target.stream}.>' to it, or name another stream")


async def _create(js: Any, target: NatsTarget) -> Any:
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError, ServerError

    max_age = target.number("max_age", DEFAULT_MAX_AGE)
    max_bytes = target.number("max_bytes", 0)
    config = StreamConfig(
        name=target.stream, subjects=[f"{target.stream}.>"], num_replicas=target.replicas,
        storage=StorageType.FILE, retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD, duplicate_window=DUPLICATE_WINDOW,
        max_age=max_age or None, max_bytes=int(max_bytes) or None,
        description="relayrl-gym recorded runs")
    try:
        info = await js.add_stream(config)
    except BadRequestError as err:  # created by another client meanwhile, or not allowed
        try:
            return await js.stream_info(target.stream)
        except Exception:
            raise TransportError(f"cannot create the stream {target.stream!r} at "
                                 f"{target.display}: {err.description or err}") from err
    except ServerError as err:
        raise TransportError(f"cannot create the stream {target.stream!r} at "
                             f"{target.display}: {err.description or err}") from err
    log.info("created the stream %s (subjects %s.>, %d replica(s))", target.stream,
             target.stream, target.replicas)
    return info
