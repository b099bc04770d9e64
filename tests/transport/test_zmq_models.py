"""Published models reach every actor process, late joiners included, and are hot-swapped
between steps: the recorded ``model_version`` and ``get_model_version`` follow them."""

from __future__ import annotations

import time

import numpy as np
import pyarrow.compute as pc
import pytest
from zmq_helpers import finish, first_line, rows, start_actor, wait_until

import relayrl_gym
from relayrl_gym.errors import ConfigError


def test_publish_reaches_all_actors_and_late_joiners(tmp_path, server, cartpole_policy):
    first = cartpole_policy(0)
    assert server.publish_model(first) == 1
    url = server.sink_url  # the collector announces its model endpoint
    common = ["--policy", str(tmp_path / "start"), "--sleep", "0.002", "--timeout", "40"]
    cartpole_policy(9).save(tmp_path / "start")
    early = [start_actor("--url", url, "--steps", "300", "--wait-version", "2", *common,
                         cwd=tmp_path) for _ in range(2)]
    for proc in early:
        first_line(proc)
    wait_until(lambda: len(server.stats["actors"]) == 2 and
               all(v == 1 for v in server.stats["actors"].values()),
               what="both actors to run version 1")
    assert server.publish_model(cartpole_policy(1)) == 2
    results = [finish(proc) for proc in early]
    late = finish(start_actor("--url", url, "--steps", "50", "--wait-version", "2", *common,
                              cwd=tmp_path))
    for result in [*results, late]:
        assert result["final_versions"] == [2, 2]
        table = rows(tmp_path / "collected" / result["run_id"])
        versions = pc.unique(table["model_version"]).to_pylist()
        assert 2 in versions and set(versions) <= {0, 1, 2}
    early_versions = pc.unique(rows(tmp_path / "collected" / results[0]["run_id"])
                               ["model_version"]).to_pylist()
    assert 1 in early_versions  # ran version 1 before swapping to 2
    assert server.stats["model_version"] == 2


def test_client_agent_follows_published_models(tmp_path, server, cartpole_policy):
    """The RelayRL client API: update_model arrives from the collector's learner."""
    agent, params = (relayrl_gym.AgentBuilder().actor_count(2).sink(server.sink_url)
                     .default_model(cartpole_policy(3)).build())
    agent.start(params)
    try:
        ids = agent.get_actor_ids()
        obs = np.zeros((2, 4), np.float32)
        agent.request_action(ids, obs)
        version = server.publish_model(cartpole_policy(4))
        deadline = time.monotonic() + 20
        while agent.get_model_version(ids) != [version, version]:
            assert time.monotonic() < deadline, "the agent never swapped"
            agent.request_action(ids, obs, reward=1.0)
            time.sleep(0.01)
        agent.request_action(ids, obs, reward=1.0)  # acted by the new version
        agent.flag_last_action(ids, reward=1.0)
    finally:
        agent.shutdown()
    table = rows(tmp_path / "collected" / agent.run_id)
    assert version in pc.unique(table["model_version"]).to_pylist()


def test_publish_errors(tmp_path):
    from relayrl_gym.transport import TrainingServer

    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path) as server:
        with pytest.raises(ConfigError, match="publishes no models; create it with models="):
            server.publish_model(tmp_path)
        assert server.models_endpoint is None
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path, models="tcp://127.0.0.1:*"
                        ) as server, pytest.raises(ConfigError, match="ModelModule or a path"):
        server.publish_model(42)


def test_a_model_that_does_not_fit_is_refused_and_the_old_one_keeps_running(
        tmp_path, server, cartpole_policy):
    torch = pytest.importorskip("torch")
    import gymnasium as gym

    from relayrl_gym.policies import ModelModule

    cartpole_policy(9).save(tmp_path / "start")
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, policy=tmp_path / "start",
                            sink=server.sink_url)
    try:
        envs.reset(seed=0)
        good = server.publish_model(cartpole_policy(1))
        wait_until(lambda: envs.agent.get_model_version() == [good, good],
                   what="the actors to run the published model")
        three_actions = ModelModule.from_torch(
            torch.nn.Linear(4, 3), envs.single_observation_space, gym.spaces.Discrete(3),
            path=tmp_path / "misfit", format="onnx")
        server.publish_model(three_actions)
        (source,) = envs.agent.model_sources  # models come on a path of their own
        wait_until(lambda: source.refused == 1, what="the misfit to be refused")
        envs.step(envs.act())  # the old model keeps acting
        assert envs.agent.get_model_version() == [good, good] and source.version == good
        wait_until(lambda: list(server.stats["actors"].values()) == [good],
                   what="the actor's hello")
        sent = server.publisher.sent
        time.sleep(1.5)  # hellos go on; the refused model is not sent again
        assert server.publisher.sent == sent
        assert list(server.stats["actors"].values()) == [good]  # what it runs, not the misfit
    finally:
        envs.close()
