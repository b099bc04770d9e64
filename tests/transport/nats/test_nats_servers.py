"""The private NATS servers of nats_servers.py, against the real nats-server and nats-py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import nats
import pytest
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats_servers import NatsServer

STREAM = "ORDERS"
SUBJECT = "orders.new"


async def _ignore(err: Exception) -> None:
    """nats-py's error callback: the errors these tests cause (a killed server) are expected."""


async def _connect(servers: str | list[str], **options: Any) -> nats.NATS:
    # Bounded attempts: an unbounded client would retry a dead server list forever.
    return await nats.connect(servers, error_cb=_ignore, reconnect_time_wait=0.1,
                              max_reconnect_attempts=100, **options)


async def _publish(js: JetStreamContext, ids: Iterable[str], timeout: float = 30.0) -> list[bool]:
    """One message per id (its ``Nats-Msg-Id``), each retried until acknowledged: whether each
    was a duplicate. A retry of a message stored before its ack was lost is dropped by the
    stream's deduplication, so retries never store a message twice."""
    deadline = time.monotonic() + timeout
    duplicates = []
    for msg_id in ids:
        while True:
            try:
                ack = await js.publish(SUBJECT, msg_id.encode(), headers={"Nats-Msg-Id": msg_id},
                                       timeout=1)
                break
            except NatsError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        duplicates.append(bool(ack.duplicate))
    return duplicates


async def _stored_ids(js: JetStreamContext, timeout: float = 30.0) -> list[str]:
    """The ``Nats-Msg-Id`` of every message in the stream, in stream order."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = await js.stream_info(STREAM)
            return [(await js.get_msg(STREAM, seq)).headers["Nats-Msg-Id"]
                    for seq in range(info.state.first_seq, info.state.last_seq + 1)]
        except NatsError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def test_single_server_keeps_deduplicated_messages_across_a_kill(nats_server):
    async def create_and_publish() -> list[bool]:
        nc = await _connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=STREAM, subjects=[SUBJECT])
            return await _publish(js, ["a", "b", "a"])
        finally:
            await nc.close()

    async def read() -> list[str]:
        nc = await _connect(nats_server.url)
        try:
            return await _stored_ids(nc.jetstream())
        finally:
            await nc.close()

    assert asyncio.run(create_and_publish()) == [False, False, True]
    assert asyncio.run(read()) == ["a", "b"]

    nats_server.kill()
    assert not nats_server.alive
    nats_server.restart()
    assert nats_server.alive
    assert asyncio.run(read()) == ["a", "b"]


def test_cluster_keeps_every_message_once_when_the_stream_leader_dies(nats_cluster):
    async def create_and_publish() -> None:
        nc = await _connect(nats_cluster.urls)
        try:
            js = nc.jetstream()
            await js.add_stream(name=STREAM, subjects=[SUBJECT], num_replicas=3)
            await _publish(js, [f"m{i}" for i in range(10)])
        finally:
            await nc.close()

    asyncio.run(create_and_publish())
    leader = nats_cluster.stream_leader(STREAM)
    survivors = [s.url for s in nats_cluster.servers if s is not leader]

    async def publish_across_the_kill() -> tuple[list[bool], str, list[str]]:
        # Connected to the leader first, so the kill makes the client move to a survivor.
        nc = await _connect([leader.url, *survivors], dont_randomize=True)
        try:
            js = nc.jetstream()
            before = await _publish(js, [f"m{i}" for i in range(10, 15)])
            leader.kill()
            after = await _publish(js, [f"m{i}" for i in range(15, 25)])
            return before + after, nc.connected_url.geturl(), await _stored_ids(js)
        finally:
            await nc.close()

    duplicates, connected_to, stored = asyncio.run(publish_across_the_kill())
    assert not any(duplicates)
    assert connected_to in survivors
    assert stored == [f"m{i}" for i in range(25)]
    assert nats_cluster.stream_leader(STREAM) is not leader


@pytest.mark.parametrize(("auth", "credentials"), [
    ({"user": "alice", "password": "s3cret"}, {"user": "alice", "password": "s3cret"}),
    ({"token": "t0ken"}, {"token": "t0ken"}),
    ({"auth": "accounts { APP { jetstream: enabled, users: [{user: bob, password: pw}] } }"},
     {"user": "bob", "password": "pw"}),
], ids=["user", "token", "accounts"])
def test_server_with_auth_admits_only_clients_with_credentials(tmp_path, auth, credentials):
    async def without() -> None:
        await nats.connect(server.url, error_cb=_ignore, allow_reconnect=False,
                           max_reconnect_attempts=0)

    async def with_them() -> int:
        nc = await _connect(server.url, **credentials)
        try:
            return (await nc.jetstream().account_info()).streams
        finally:
            await nc.close()

    with NatsServer(tmp_path, **auth) as server:
        with pytest.raises(NatsError, match="Authorization Violation"):
            asyncio.run(without())
        assert asyncio.run(with_them()) == 0


def test_failed_start_raises_with_the_log_tail(tmp_path):
    server = NatsServer(tmp_path, auth="this is { not a config")
    with pytest.raises(RuntimeError, match=r"exited with status 1(?s:.*)Parse error on line 5"):
        server.start()
    assert not server.alive
