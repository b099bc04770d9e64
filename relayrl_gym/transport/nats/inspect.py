"""``relayrl-gym inspect nats://HOST:PORT/STREAM``: a stream's runs, messages and consumers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from relayrl_gym.errors import TransportError
from relayrl_gym.transport.nats.link import require_nats
from relayrl_gym.transport.nats.options import parse_nats_url

__all__ = ["describe_stream", "stream_report"]


def stream_report(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """What the stream holds and who reads it: ``stream`` (name, subjects, replicas, leader),
    ``messages``, ``bytes``, ``runs`` (runs with a schema in it), ``consumers`` (name ->
    ``pending``: messages not delivered yet, ``unacknowledged``, ``redelivered``,
    ``waiting`` pulls), and ``models`` (the model bucket's current version, -1: none).

    Raises:
        TransportError: the server cannot be reached or has no such stream.
    """
    target = parse_nats_url(url)
    require_nats()
    try:
        return asyncio.run(asyncio.wait_for(_report(target), timeout))
    except (asyncio.TimeoutError, OSError) as err:
        raise TransportError(f"NATS at {target.display} did not answer within {timeout} s: "
                             f"{err}") from err


async def _report(target: Any) -> dict[str, Any]:
    import nats
    from nats.js.errors import NotFoundError

    try:
        nc = await nats.connect(**target.connect_options(), allow_reconnect=False,
                                connect_timeout=3, max_reconnect_attempts=0)
    except Exception as err:
        raise TransportError(f"cannot connect to NATS at {target.display}: {err}") from err
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(target.stream)
        except NotFoundError as err:
            raise TransportError(f"NATS at {target.display} has no stream {target.stream!r} "
                                 "(a NATS sink creates it when it first records)") from err
        prefix = next((s[:-2] for s in info.config.subjects or [] if s.endswith(".>")),
                      target.stream)
        with_subjects = await js.stream_info(target.stream,
                                             subjects_filter=f"{prefix}.schema.>")
        consumers = {}
        for consumer in await js.consumers_info(target.stream):
            consumers[consumer.name] = {
                "pending": consumer.num_pending or 0,
                "unacknowledged": consumer.num_ack_pending or 0,
                "redelivered": consumer.num_redelivered or 0,
                "waiting": consumer.num_waiting or 0}
        cluster = info.cluster
        return {"stream": {"name": target.stream, "subjects": list(info.config.subjects or []),
                           "replicas": info.config.num_replicas or 1,
                           "leader": cluster.leader if cluster else None},
                "messages": info.state.messages, "bytes": info.state.bytes,
                "runs": len(with_subjects.state.subjects or {}),
                "consumers": consumers, "models": await _model_version(js, target.stream)}
    finally:
        await nc.close()


async def _model_version(js: Any, stream: str) -> int:
    try:
        kv = await js.key_value(f"{stream}_model")
        entry = await kv.get("current")
        return int(json.loads(entry.value)["version"])
    except Exception:  # no bucket, no key, or not ours: no model published
        return -1


def describe_stream(url: str) -> str:
    """`stream_report` as the lines ``inspect`` prints."""
    report = stream_report(url)
    stream = report["stream"]
    leader = f", leader {stream['leader']}" if stream["leader"] else ""
    lines = [f"stream {stream['name']} ({', '.join(stream['subjects'])}; "
             f"{stream['replicas']} replica(s){leader})",
             f"  {report['messages']} messages, {report['bytes']} bytes, "
             f"{report['runs']} runs",
             f"  model version: {report['models'] if report['models'] >= 0 else 'none'}",
             f"  {len(report['consumers'])} consumer(s)"]
    for name, c in sorted(report["consumers"].items()):
        lines.append(f"    {name}: {c['pending']} pending, {c['unacknowledged']} "
                     f"unacknowledged, {c['redelivered']} redelivered")
    return "\n".join(lines)
