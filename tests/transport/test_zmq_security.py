"""CurveZMQ keeps clients without an allowed key out (no data in, no model out); malformed,
oversized and unknown-version messages are refused and counted, and the collector keeps
serving everyone else."""

from __future__ import annotations

import json
import os
import random
import shutil
import time

import pytest
from zmq_helpers import RawClient, assert_same_rows, record_batches, rows, wait_until

import relayrl_gym
from relayrl_gym.errors import ConfigError, SinkError
from relayrl_gym.transport import TrainingServer
from relayrl_gym.transport.keys import generate_keys
from relayrl_gym.transport.protocol import Kind, encode


def test_malformed_frames_are_refused_counted_and_harmless(tmp_path):
    schema, batches = record_batches(tmp_path)
    good_start = [encode(Kind.START, run="run-1", sender="s1", seq=-1),
                  schema.serialize().to_pybytes()]
    payload = batches[0].serialize().to_pybytes()
    rng = os.urandom
    bad = [
        [rng(64)],                                                      # random bytes
        [rng(3000), rng(100), rng(10)],                                 # random frames
        [b"[1, 2]", b""],                                               # not an object
        [json.dumps({"v": 99, "t": "batch"}).encode(), payload],        # unknown version
        [encode(Kind.ACK, run="run-1", seq=0)],                         # wrong kind
        [encode(Kind.START, run="../../etc", sender="s1", seq=-1), good_start[1]],
        [encode(Kind.START, run="run-2", sender="s1", seq=-1), rng(200)],   # bad schema
        [encode(Kind.BATCH, run="run-1", sender="s1", seq=0), payload[: len(payload) // 2]],
        [encode(Kind.BATCH, run="run-1", sender="s1", seq="x"), payload],   # bad seq
        [encode(Kind.BATCH, run="run-1", sender="s1", seq=0)],          # payload missing
        [b"x" * 5000, b""],                                             # oversized header
        [encode(Kind.BATCH, run="run-1", sender="s1", seq=0), rng(3_000_000)],  # oversized
    ]
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        max_message_bytes=2_097_152) as server:
        client = RawClient(server.endpoint)
        try:
            client.send(*good_start)
            assert client.reply().kind is Kind.STARTED
            for frames in bad:
                client.send(*frames)
                assert client.reply().kind is Kind.REJECT
            client.send(rng(10), rng(5_000_000))  # past twice the limit: ZMQ drops the peer
            time.sleep(0.2)
            assert server.collector.alive
            assert server.stats["rejected"] == len(bad)
            # the collector keeps serving a good sender
            envs = relayrl_gym.wrap("CartPole-v1", actors=2,
                                    sink=[tmp_path / "copy", server.sink_url])
            envs.reset(seed=1)
            for _ in range(30):
                envs.step(envs.action_space.sample())
            envs.close()
            assert_same_rows(rows(tmp_path / "collected" / envs.run_id),
                             rows(tmp_path / "copy" / envs.run_id))
            assert not (tmp_path / "etc").exists()
        finally:
            client.close()


def test_duplicates_and_gaps_are_answered(tmp_path):
    schema, batches = record_batches(tmp_path, steps=60)
    payload = batches[0].serialize().to_pybytes()
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        client = RawClient(server.endpoint)
        try:
            client.send(encode(Kind.BATCH, run="r", sender="s", seq=0), payload)
            assert client.reply().kind is Kind.NEED_START
            client.send(encode(Kind.START, run="r", sender="s", seq=-1),
                        schema.serialize().to_pybytes())
            assert client.reply().fields["next"] == 0
            for _ in range(3):
                client.send(encode(Kind.BATCH, run="r", sender="s", seq=0), payload)
                assert client.reply().fields == {"run": "r", "seq": 0}
            client.send(encode(Kind.BATCH, run="r", sender="s", seq=5), payload)
            reply = client.reply()
            assert reply.kind is Kind.NACK and reply.fields["expected"] == 1
        finally:
            client.close()
        stats = server.stats["per_sender"]["s"]
        assert (stats["batches"], stats["duplicates"], stats["out_of_order"]) == (1, 2, 1)
    assert len(relayrl_gym.load(tmp_path / "collected" / "r")) == batches[0].num_rows


@pytest.fixture
def keys(tmp_path):
    generate_keys(tmp_path / "keys", ["good"])
    generate_keys(tmp_path / "other", ["bad"])  # a keypair the server does not list
    shutil.copyfile(tmp_path / "keys" / "server.key", tmp_path / "other" / "clients" / "bad" /
                    "server.key")
    return tmp_path / "keys", tmp_path / "other" / "clients" / "bad"


def test_curve_lets_allowed_keys_in_and_nobody_else(tmp_path, keys, cartpole_policy):
    server_dir, bad_dir = keys
    cartpole_policy(0).save(tmp_path / "pi")
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        models="tcp://127.0.0.1:*", curve_keys=server_dir) as server:
        version = server.publish_model(cartpole_policy(1))
        good = relayrl_gym.wrap(
            "CartPole-v1", actors=2, policy=tmp_path / "pi",
            sink=[tmp_path / "copy", f"{server.sink_url}?curve={server_dir / 'clients' / 'good'}"])
        bad = relayrl_gym.wrap("CartPole-v1", actors=2, policy=tmp_path / "pi",
                               sink=f"{server.sink_url}?curve={bad_dir}&close_timeout=1"
                               f"&spill={tmp_path / 'spill'}")
        plain = relayrl_gym.wrap("CartPole-v1", actors=2, policy=tmp_path / "pi",
                                 sink=f"{server.sink_url}?close_timeout=1"
                                 f"&spill={tmp_path / 'spill'}")
        for envs in (good, bad, plain):
            envs.reset(seed=0)
        wait_until(lambda: good.agent.get_model_version() == [version, version],
                   what="the allowed client to get the model")
        for envs in (good, bad, plain):
            for _ in range(20):
                envs.step(envs.act())
        good.close()
        # Each refused client is told why, apart from a collector that is down.
        for envs, why in ((bad, r"authentication refused by tcp://127\.0\.0\.1:\d+"),
                          (plain, r"the handshake with tcp://127\.0\.0\.1:\d+ failed")):
            assert envs.agent.get_model_version() == [0, 0]  # no model out
            with pytest.raises(SinkError, match=f"not acknowledged.*The collector refused: {why}"):
                envs.close()
        assert server.stats["senders"] == 1  # no data in
        assert server.stats["refused_handshakes"] >= 2  # and the collector counted them
        assert len(server.stats["actors"]) == 1
    expected = rows(tmp_path / "copy" / good.run_id)
    assert_same_rows(rows(tmp_path / "collected" / good.run_id), expected)
    kept = relayrl_gym.load(tmp_path / "spill" / bad.run_id)  # nothing lost: kept locally
    assert len(kept) == bad.agent.writer.rows_written > 30


def test_key_errors_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="relayrl-gym keygen"):
        TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path, curve_keys=tmp_path / "none")
    with pytest.raises(ConfigError, match=r"client secret key .* is missing"):
        relayrl_gym.wrap("CartPole-v1", sink=f"zmq+tcp://127.0.0.1:9?curve={tmp_path}")


def test_fuzzed_messages_never_stall_either_channel(tmp_path, cartpole_policy):
    rng = random.Random(0)
    schema, batches = record_batches(tmp_path)
    valid = [encode(Kind.BATCH, run="r", sender="s", seq=0), batches[0].serialize().to_pybytes()]
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        models="tcp://127.0.0.1:*") as server:
        data, models = RawClient(server.endpoint), RawClient(server.models_endpoint)
        try:
            sent = 0
            for _ in range(150):
                frames = [bytearray(f) for f in valid[:rng.randint(1, 2)]]
                for frame in frames:  # flip, cut or replace bytes of a valid message
                    if rng.random() < 0.5 and frame:
                        frame[rng.randrange(min(len(frame), 60))] ^= 1 << rng.randrange(8)
                    if rng.random() < 0.3:
                        del frame[rng.randrange(len(frame) + 1):]
                    if rng.random() < 0.2:
                        frame[:] = os.urandom(rng.randint(0, 300))
                data.send(*map(bytes, frames))
                models.send(*map(bytes, frames))
                sent += 1
            data.send(encode(Kind.START, run="r", sender="s", seq=-1),
                      schema.serialize().to_pybytes())
            while (reply := data.reply()).kind is not Kind.STARTED:  # all answered, in order
                assert reply.kind in (Kind.REJECT, Kind.NEED_START)
            wait_until(lambda: server.stats["model_rejected"] == sent, what="model rejects")
            version = server.publish_model(cartpole_policy(5))  # the model channel still serves
            models.send(encode(Kind.HELLO, have=-1))
            assert models.reply().fields["version"] == version
        finally:
            data.close()
            models.close()
        assert server.collector.alive and server.stats["rows"] == 0


def test_secret_keys_are_private_and_every_allowed_key_is_checked(tmp_path):
    from relayrl_gym.transport.keys import client_keys, server_keys

    root = generate_keys(tmp_path / "keys", ["a"])
    client = root / "clients" / "a"
    for secret in (root / "server.key_secret", client / "client.key_secret"):
        assert secret.stat().st_mode & 0o777 == 0o600
    server_keys(root), client_keys(client)  # as generated: accepted
    (client / "client.key_secret").chmod(0o644)
    with pytest.raises(ConfigError, match=r"can be read by other users .*chmod 600"):
        client_keys(client)
    (root / "authorized" / "junk.key").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"allowed client key .*junk.key.* not a ZMQ cert"):
        TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "c", curve_keys=root)
