"""A peer is what authenticated it: no header moves, forges or drops another sender's rows;
every batch is checksummed; one peer's runs and senders are bounded; all refusals counted."""

from __future__ import annotations

import random

import pyarrow as pa
from zmq_helpers import RawClient, assert_same_rows, record_batches, rows, wait_until

import relayrl_gym
from relayrl_gym.transport import Limits, TrainingServer, ZMQSink
from relayrl_gym.transport.keys import client_keys, generate_keys
from relayrl_gym.transport.payloads import payload_crc
from relayrl_gym.transport.protocol import Kind, encode


def _step(envs, n):
    for _ in range(n):
        envs.step(envs.action_space.sample())


def test_a_forged_start_or_batch_cannot_touch_another_senders_run(tmp_path):
    # Before: a START naming the victim's sender with a huge `first` made its later rows
    # "duplicates" (the victim kept 14-47% of them while its close() said all was well).
    schema, foreign = record_batches(tmp_path / "other")
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        url = f"{server.sink_url}?models=off"
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, batch_rows=16,
                                sink=[tmp_path / "local", url])
        envs.reset(seed=0)
        _step(envs, 40)
        envs.flush()
        wait_until(lambda: server.stats["rows"] >= 64, what="the first batches")
        (sender,) = server.stats["senders"] and list(server.stats["per_sender"])
        attacker = RawClient(server.endpoint)
        try:
            attacker.send(encode(Kind.START, run=envs.run_id, sender=sender, seq=-1,
                                 first=10**9), schema.serialize().to_pybytes())
            reply = attacker.reply()
            assert reply.kind is Kind.REJECT and "is in use" in reply.fields["reason"]
            seq = server.stats["per_sender"][sender]["last_seq"] + 1
            attacker.send(encode(Kind.BATCH, run=envs.run_id, sender=sender, seq=seq),
                          foreign[0].serialize().to_pybytes())
            assert attacker.reply().kind is Kind.NEED_START  # nothing written
        finally:
            attacker.close()
        _step(envs, 40)
        envs.close()  # no error: every row was acknowledged
        stats = server.stats
    assert stats["refused_auth"] == 1 and stats["duplicates"] == 0
    assert_same_rows(rows(tmp_path / "collected" / envs.run_id),
                     rows(tmp_path / "local" / envs.run_id))


def test_a_sender_name_belongs_to_its_curve_key_even_with_its_token(tmp_path):
    schema, (recorded,) = record_batches(tmp_path)
    batches = [recorded.slice(0, 10), recorded.slice(10)]
    keys = generate_keys(tmp_path / "keys", ["a", "b"])
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        curve_keys=keys) as server:
        victim = ZMQSink(server.endpoint, models="off", curve_keys=keys / "clients" / "a")
        victim.start("shared-run", schema)
        victim.write(batches[0])
        assert victim.wait_acknowledged(10) and victim.token is not None
        b = client_keys(keys / "clients" / "b")
        attacker = RawClient(server.endpoint, curve_serverkey=b.server, curve_publickey=b.public,
                             curve_secretkey=b.secret)
        try:  # even a leaked token does not let another authorized client in
            attacker.send(encode(Kind.START, run="shared-run", sender=victim.sender_id, seq=-1,
                                 token=victim.token, first=10**9),
                          schema.serialize().to_pybytes())
            reply = attacker.reply()
            assert reply.kind is Kind.REJECT and "another client key" in reply.fields["reason"]
            victim.write(batches[1])
            assert victim.wait_acknowledged(10)
        finally:
            attacker.close()
            victim.close()
        stats = server.stats
    assert stats["refused_auth"] == 1
    assert relayrl_gym.load(tmp_path / "collected" / "shared-run").table.num_rows == \
        batches[0].num_rows + batches[1].num_rows


def test_a_corrupted_batch_is_never_written(tmp_path):
    # Before: of 100 batches with one random byte flipped, 66 were accepted and written.
    schema, batches = record_batches(tmp_path, steps=40)
    payload = batches[0].serialize().to_pybytes()
    rng = random.Random(0)
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        client = RawClient(server.endpoint)
        try:
            client.send(encode(Kind.START, run="r", sender="s", seq=-1),
                        schema.serialize().to_pybytes())
            assert client.reply().kind is Kind.STARTED
            for _ in range(100):
                flipped = bytearray(payload)
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
                client.send(encode(Kind.BATCH, run="r", sender="s", seq=0,
                                   crc=payload_crc(payload)), bytes(flipped))
                reply = client.reply()
                assert reply.kind is Kind.REJECT and "corrupted" in reply.fields["reason"]
            client.send(encode(Kind.BATCH, run="r", sender="s", seq=0), payload)
            assert client.reply().kind is Kind.ACK
        finally:
            client.close()
        stats = server.stats
    assert stats["rejected"] == 100 and stats["rows"] == batches[0].num_rows


def test_compressed_bodies_and_extra_frames_are_refused(tmp_path):
    # Before: a 10 kB zstd-compressed IPC body decompressed to 313 MiB in the collector.
    schema, batches = record_batches(tmp_path)
    big = pa.Table.from_batches([batches[0]] * 200).combine_chunks().to_batches()[0]
    out = pa.BufferOutputStream()
    with pa.ipc.new_stream(out, schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_batch(big)
    stream = pa.BufferReader(out.getvalue())
    pa.ipc.read_message(stream)  # the schema message
    bomb = pa.ipc.read_message(stream).serialize().to_pybytes()
    assert len(bomb) < big.nbytes / 5
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        client = RawClient(server.endpoint)
        try:
            client.send(encode(Kind.START, run="r", sender="s", seq=-1),
                        schema.serialize().to_pybytes())
            assert client.reply().kind is Kind.STARTED
            client.send(encode(Kind.BATCH, run="r", sender="s", seq=0), bomb)
            reply = client.reply()
            assert reply.kind is Kind.REJECT and "IPC-compressed" in reply.fields["reason"]
            frame = batches[0].serialize().to_pybytes()
            client.sock.send_multipart([encode(Kind.BATCH, run="r", sender="s", seq=0,
                                               crc=payload_crc(frame)), frame, frame, frame])
            reply = client.reply()
            assert reply.kind is Kind.REJECT and "one payload frame" in reply.fields["reason"]
        finally:
            client.close()
        assert server.stats["rejected"] == 2 and server.stats["rows"] == 0


def test_runs_and_senders_per_peer_are_bounded_and_idle_room_is_made(tmp_path):
    schema, batches = record_batches(tmp_path)
    start_schema = schema.serialize().to_pybytes()
    limits = Limits(runs_per_peer=2, senders_per_peer=3, open_runs=3, senders=100)
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        limits=limits) as server:
        one, two = RawClient(server.endpoint), RawClient(server.endpoint)
        try:
            def start(client, run, sender="s"):
                client.send(encode(Kind.START, run=run, sender=sender, seq=-1), start_schema)
                return client.reply()

            assert start(one, "r1").kind is start(one, "r2").kind is Kind.STARTED
            refused = start(one, "r3")  # a third run of one peer
            assert refused.kind is Kind.REJECT and "runs_per_peer=2" in refused.fields["reason"]
            assert start(two, "r3").kind is Kind.STARTED
            assert start(two, "r4").kind is Kind.STARTED  # the 4th open run: r1 is closed
            assert sorted(server.collector.open_runs) == ["r2", "r3", "r4"]
            one.send(encode(Kind.BATCH, run="r1", sender="s", seq=0),
                     batches[0].serialize().to_pybytes())
            assert one.reply().kind is Kind.NEED_START  # closed: start again to go on
            assert start(two, "r3", "t1").kind is Kind.STARTED
            refused = start(two, "r3", "t2")  # a peer's 4th sender
            assert refused.kind is Kind.REJECT and "senders_per_peer=3" in \
                refused.fields["reason"]
        finally:
            one.close()
            two.close()
        stats = server.stats
        assert server.collector.alive
    assert (stats["refused_limits"], stats["runs_evicted"]) == (2, 1)


def test_closing_leaves_no_pyzmq_thread_behind(tmp_path):
    import threading

    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=f"{server.sink_url}?models=off")
        envs.reset(seed=0)
        _step(envs, 300)  # batches over 64 kB go zero-copy: pyzmq's gc thread starts
        envs.close()
    names = [type(t).__name__ for t in threading.enumerate()]
    assert "GarbageCollectorThread" not in names, names
