"""A learner on NATS: trajectories from a stream, models back through its buckets, hot-swapped by
actors between steps; the rows name the version that acted."""

from __future__ import annotations

import time

import numpy as np
import pyarrow.compute as pc
from nats_helpers import wait_until
from transport.zmq_helpers import rows

import relayrl_gym
from relayrl_gym.transport import TrainingServer


def test_a_learner_reads_trajectories_and_its_models_reach_the_actors(nats_server, tmp_path,
                                                                     cartpole_policy):
    url = f"{nats_server.url}/runs"
    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        batches = server.trajectories(timeout=30)
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=url, policy=cartpole_policy(0),
                                flush_interval=0.05, router_scale=0)
        envs.reset(seed=0)
        for _ in range(20):
            envs.step(envs.act())
        version = server.publish_model(cartpole_policy(1))
        deadline = time.monotonic() + 30
        while envs.agent.get_model_version() != [version, version]:
            assert time.monotonic() < deadline, "the actors never swapped"
            envs.step(envs.act())
        for _ in range(20):  # acted by the new version
            envs.step(envs.act())
        envs.close()
        seen: set[int] = set()
        for batch in batches:
            seen.update(pc.unique(batch["model_version"]).to_pylist())
            if version in seen:
                break
        assert server.stats["model_version"] == version
    assert {0, version} <= seen
    table = rows(tmp_path / "collected" / envs.run_id)
    assert set(pc.unique(table["model_version"]).to_pylist()) == {0, version}


def test_a_late_joining_agent_starts_from_the_current_model(nats_server, tmp_path,
                                                           cartpole_policy):
    url = f"{nats_server.url}/runs"
    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        version = server.publish_model(cartpole_policy(4, version=7))
        assert version == 7
        agent, params = (relayrl_gym.AgentBuilder().actor_count(2).sink(url)
                         .default_model(cartpole_policy(3)).build())
        agent.start(params)
        try:
            ids = agent.get_actor_ids()
            obs = np.zeros((2, 4), np.float32)
            deadline = time.monotonic() + 20
            while agent.get_model_version(ids) != [7, 7]:
                assert time.monotonic() < deadline, "the agent never took the current model"
                agent.request_action(ids, obs, reward=1.0)
                time.sleep(0.01)
            agent.request_action(ids, obs, reward=1.0)
            agent.flag_last_action(ids, reward=1.0)
        finally:
            agent.shutdown()
        def versions() -> list[int]:  # the run directory is made a moment before its files
            try:
                table = rows(tmp_path / "collected" / agent.run_id)
            except relayrl_gym.errors.RelayRLError:
                return []
            return pc.unique(table["model_version"]).to_pylist()

        wait_until(lambda: 7 in versions(), what="version 7's rows")


def test_models_off_keeps_the_actors_model(nats_server, tmp_path, cartpole_policy):
    url = f"{nats_server.url}/runs"
    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        server.publish_model(cartpole_policy(5))
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=f"{url}?models=off",
                                policy=cartpole_policy(0), router_scale=0)
        envs.reset(seed=0)
        for _ in range(50):
            envs.step(envs.act())
            time.sleep(0.01)
        assert envs.agent.get_model_version() == [0, 0] and not envs.agent.model_sources
        envs.close()
