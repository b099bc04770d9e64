"""The inference server over NATS request-reply: a queue group of servers shares the requests,
one leaving or the NATS server restarting costs the clients a pause, not an error."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("nats.js")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import gymnasium as gym
import nats
import torch
from nats_servers import NATS_SERVER, NatsServer

import relayrl_gym
from relayrl_gym import InferenceServer
from relayrl_gym.errors import ConfigError, ModelError, TransportError
from relayrl_gym.transport.inference.channels import inference_subject
from relayrl_gym.transport.inference.client import RemotePolicy
from relayrl_gym.transport.inference.wire import pack, unpack
from relayrl_gym.transport.protocol import decode_header

if not os.access(NATS_SERVER, os.X_OK):
    pytest.skip(f"no nats-server binary ({NATS_SERVER})", allow_module_level=True)


@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer(tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


def test_a_queue_group_shares_requests_and_survives_a_server_leaving(nats_server,
                                                                     cartpole_policy):
    module = cartpole_policy(0, version=4)
    url = f"{nats_server.url}/pi"
    first = InferenceServer(module, bind=url)
    second = InferenceServer(module, bind=url)
    rng = np.random.default_rng(0)
    try:
        with RemotePolicy(f"{url}?retry=0.3") as remote:
            for _ in range(100):
                obs = rng.uniform(-2, 2, (4, 4)).astype(np.float32)
                actions, _, version = remote.step_versioned(obs)
                np.testing.assert_array_equal(actions, module.step(obs)[0])
                assert version == 4
            shares = first.stats["requests"], second.stats["requests"]
            assert min(shares) > 0 and sum(shares) == 100  # each request to one server
            first.close()
            for _ in range(50):
                obs = rng.uniform(-2, 2, (4, 4)).astype(np.float32)
                np.testing.assert_array_equal(remote.step(obs)[0], module.step(obs)[0])
            assert second.stats["requests"] >= shares[1] + 50
    finally:
        first.close()
        second.close()


def test_a_wrapped_env_acts_through_nats_across_a_nats_restart(nats_server, tmp_path,
                                                                cartpole_policy):
    url = f"{nats_server.url}/pi"
    with InferenceServer(cartpole_policy(0), bind=url) as server:
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, policy=f"{url}?retry=0.3",
                                sink=tmp_path / "runs", autoreset_mode="same_step")
        envs.reset(seed=0)
        for _ in range(30):
            envs.step(envs.act())
        nats_server.kill()
        restarter = threading.Timer(1.0, nats_server.restart)
        restarter.start()
        for _ in range(30):  # the first waits for NATS to come back
            envs.step(envs.act())
        restarter.join()
        server.update_model(cartpole_policy(1))
        for _ in range(10):
            envs.step(envs.act())
        envs.close()
    rows = relayrl_gym.load(envs.run_path).table
    assert len(rows) == 70 * 2
    versions = rows["model_version"].to_pylist()
    assert set(versions) == {0, 1} and versions[-1] == 1


def test_malformed_requests_over_nats_are_answered_with_an_error(nats_server,
                                                                 cartpole_policy):
    url = f"{nats_server.url}/pi"
    with InferenceServer(cartpole_policy(0), bind=url) as server:

        async def ask(payload: bytes) -> list[bytes]:
            nc = await nats.connect(nats_server.url)
            try:
                msg = await nc.request(inference_subject("pi"), payload, timeout=5)
                return unpack(msg.data)
            finally:
                await nc.close()

        reply = asyncio.run(ask(b"\x01"))
        assert "frame count" in decode_header(reply[0]).fields["reason"]
        reply = asyncio.run(ask(pack([b'{"v": 2, "t": "act", "id": 3}'])))
        header = decode_header(reply[0])
        assert header.fields["id"] == 3 and "carries 1 array frame(s)" in header.fields["reason"]
        deadline = time.monotonic() + 5
        while server.stats["malformed"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.stats["malformed"] == 2
    with pytest.raises(ConfigError, match="`curve_keys` secures a tcp:// bind"):
        InferenceServer(cartpole_policy(0), bind=url, curve_keys="keys")


def test_the_nats_queue_is_bounded_in_bytes_and_drops_are_counted(nats_server):
    """Requests the socket thread has not read yet are held up to 128 MiB; past it they are
    dropped (the clients ask again) and counted."""
    import zmq

    from relayrl_gym.transport.inference.endpoints import NatsEndpoint
    from relayrl_gym.transport.nats.options import parse_nats_url

    ctx = zmq.Context()
    endpoint = NatsEndpoint(ctx, parse_nats_url(f"{nats_server.url}/pi"))
    try:
        assert endpoint.connected.wait(10)

        async def flood() -> None:
            nc = await nats.connect(nats_server.url)
            try:
                payload = b"x" * (1000 * 1000)
                for _ in range(200):
                    await nc.publish(inference_subject("pi"), payload, reply="_INBOX.flood")
                await nc.flush()
            finally:
                await nc.close()

        asyncio.run(flood())
        deadline = time.monotonic() + 10
        while endpoint.dropped + len(endpoint._waiting) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(endpoint._waiting) == 134 and endpoint.dropped == 66  # 128 MiB of 1 MB
        read = list(endpoint.receive())
        assert len(read) == 134 and not endpoint.more
    finally:
        endpoint.close()
        ctx.term()


def test_no_server_subscribed_is_said_and_big_answers_are_refused(tmp_path, cartpole_policy):
    server = NatsServer(tmp_path, auth="max_payload: 65536").start()
    try:
        url = f"{server.url}/pi"
        with pytest.raises(TransportError, match="no inference server is subscribed"):
            RemotePolicy(f"{url}?timeout=1.5&retry=0.3")
        torch.manual_seed(0)
        sampler = relayrl_gym.ModelModule.from_torch(
            torch.nn.Linear(1, 3), gym.spaces.Box(-1, 1, (1,)), gym.spaces.Discrete(3),
            path=tmp_path / "s", action_head="sample")
        with InferenceServer(sampler, bind=url) as served, \
                RemotePolicy(f"{url}?timeout=10") as remote:
            assert remote.step(np.zeros((4, 1), np.float32))[0].shape == (4,)
            assert remote.retries == 0
            # 40 kB of observations, 160 kB of actions and log-probabilities back.
            with pytest.raises(ModelError, match=r"over the NATS server's max_payload"):
                remote.step(np.zeros((10_000, 1), np.float32))
            assert served.stats["unsent"] == 1
    finally:
        server.stop()

