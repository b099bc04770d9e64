"""The inference server against real clients: answers equal the local model's, requests of
many processes are batched, new models are swapped in between two steps, a killed server is
survived, and what does not fit or is not allowed gets an error, never an answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

pytest.importorskip("zmq")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import gymnasium as gym
import torch
import zmq

import relayrl_gym
from relayrl_gym import InferenceServer, ModelModule
from relayrl_gym.errors import ConfigError, ModelError, TransportError
from relayrl_gym.transport.inference.client import RemotePolicy
from relayrl_gym.transport.inference.wire import encode_request
from relayrl_gym.transport.keys import generate_keys
from relayrl_gym.transport.protocol import decode_header, encode

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CARTPOLE = gym.make("CartPole-v1")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _client(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "inference_client.py"), *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def _result(proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _serve_process(model: Path, port: int, cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "relayrl_gym.cli.main", "serve-policy", str(model),
         "--bind", f"tcp://127.0.0.1:{port}", "--stats-every", "0"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    line = proc.stdout.readline()
    assert "serving version" in line, proc.stderr.read()
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raw_dealer(endpoint: str):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return ctx, sock


def _ask(sock, frames) -> tuple:
    sock.send_multipart(frames)
    assert sock.poll(5000), "no answer"
    reply = sock.recv_multipart()
    return decode_header(reply[0]), reply[1:]


@pytest.fixture
def value_policy(tmp_path):
    """A CartPole policy with a value output, as an SB3-style actor-critic exports it."""

    class ActorCritic(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh())
            self.pi, self.v = torch.nn.Linear(16, 2), torch.nn.Linear(16, 1)

        def forward(self, x):
            h = self.body(x)
            return self.pi(h), self.v(h)

    torch.manual_seed(0)
    return ModelModule.from_torch(ActorCritic(), CARTPOLE.observation_space,
                                  CARTPOLE.action_space, path=tmp_path / "ac",
                                  extra_outputs=["value"])


@pytest.fixture
def ttt_policy_dir(tmp_path):
    """A tictactoe policy (its "observation" entry in, 9 logits out, masked argmax)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(18, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 9))
    module = ModelModule.from_torch(net, gym.spaces.Box(0, 1, (3, 3, 2), np.int8),
                                    gym.spaces.Discrete(9), path=tmp_path / "ttt")
    return tmp_path / "ttt", module


def test_remote_answers_equal_the_local_model(cartpole_policy, value_policy):
    obs = np.random.default_rng(0).uniform(-2, 2, (7, 4)).astype(np.float32)
    for module in (cartpole_policy(0, version=3), value_policy):
        with InferenceServer(module, bind="tcp://127.0.0.1:*") as server, \
                RemotePolicy(server.url) as remote:
            actions, data, version = remote.step_versioned(obs)
            local_actions, local_data = module.step(obs)
            np.testing.assert_array_equal(actions, local_actions)
            assert actions.dtype == local_actions.dtype
            assert data.keys() == local_data.keys()
            for key in data:
                np.testing.assert_allclose(data[key], local_data[key], rtol=1e-6)
            assert version == remote.version == module.version
            assert remote.observation_space == module.observation_space
            assert remote.action_space == module.action_space
            assert server.stats["requests"] == 1 and server.stats["rows"] == 7


def test_seeded_sampling_is_reproducible_per_request(tmp_path):
    torch.manual_seed(1)
    module = ModelModule.from_torch(torch.nn.Linear(4, 5), CARTPOLE.observation_space,
                                    gym.spaces.Discrete(5), path=tmp_path / "s",
                                    action_head="sample")
    obs = np.random.default_rng(0).uniform(-2, 2, (64, 4)).astype(np.float32)
    with InferenceServer(module, bind="tcp://127.0.0.1:*") as server, \
            RemotePolicy(server.url) as remote:
        first, first_data = remote.step(obs, rng=np.random.default_rng(5))
        again, _ = remote.step(obs, rng=np.random.default_rng(5))
        seed = int(np.random.default_rng(5).integers(2**63))
        local, local_data = module.step(obs, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(first, again)
        np.testing.assert_array_equal(first, local)
        np.testing.assert_allclose(first_data["log_prob"], local_data["log_prob"], rtol=1e-6)
        remote.seed(11)
        seeded = [remote.step(obs)[0] for _ in range(2)]
        remote.seed(11)
        assert all((a == remote.step(obs)[0]).all() for a in seeded[:1])
        assert not (seeded[0] == seeded[1]).all()  # one seed per request, not one per client


def test_requests_of_many_processes_are_batched_and_all_answered(tmp_path, cartpole_policy):
    module = cartpole_policy(4)
    clients = 8
    model_dir = module.save(tmp_path / "served")
    with InferenceServer(module, bind="tcp://127.0.0.1:*", max_wait_us=2000) as server:
        procs = [_client("--url", server.url, "--model", str(model_dir), "--requests", "60",
                         "--envs", "4", "--seed", str(i), cwd=tmp_path)
                 for i in range(clients)]
        results = [_result(proc) for proc in procs]
        stats = server.stats
    assert all(r["mismatches"] == 0 for r in results)
    assert stats["requests"] == clients * 60
    assert stats["rows"] == clients * 60 * 4
    assert len(stats["clients"]) == clients
    assert all(c["requests"] == 60 and c["rows"] == 240 for c in stats["clients"].values())
    assert stats["mean_batch"] > 4, stats  # more than one client's rows per model call
    assert sum(stats["batch_sizes"].values()) == stats["batches"]


def test_models_published_by_a_training_server_switch_between_two_steps(tmp_path,
                                                                         cartpole_policy):
    """The learner publishes; the inference server follows; the actors' rows change version
    from one step to the next, and no request fails meanwhile."""
    with relayrl_gym.TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                                    models="tcp://127.0.0.1:*") as learner, \
            InferenceServer(cartpole_policy(0), bind="tcp://127.0.0.1:*",
                            models=learner.models_endpoint) as server:
        envs = relayrl_gym.wrap("CartPole-v1", actors=3, policy=server.url,
                                sink=tmp_path / "runs", autoreset_mode="same_step")
        envs.reset(seed=0)
        for _ in range(20):
            envs.step(envs.act())
        assert learner.publish_model(cartpole_policy(1)) == 1
        deadline = time.monotonic() + 20
        while server.version != 1 and time.monotonic() < deadline:
            envs.step(envs.act())
        assert server.version == 1, "the published model did not reach the server"
        for _ in range(20):
            envs.step(envs.act())
        envs.close()
        assert server.source.received == 1 and server.stats["model_errors"] == 0
    table = relayrl_gym.load(envs.run_path).to_table()
    for index in range(3):
        versions = table.filter(pc.equal(table["env_index"], index))["model_version"]
        versions = np.asarray(versions.to_pylist())
        assert versions[0] == 0 and versions[-1] == 1
        switch = int(np.argmax(versions == 1))
        assert (versions[:switch] == 0).all() and (versions[switch:] == 1).all()


def test_update_model_in_python_and_a_model_that_does_not_fit(cartpole_policy, tmp_path):
    with InferenceServer(cartpole_policy(0), bind="tcp://127.0.0.1:*") as server, \
            RemotePolicy(server.url) as remote:
        obs = np.zeros((2, 4), np.float32)
        assert remote.step_versioned(obs)[2] == 0
        new = cartpole_policy(2)
        assert server.update_model(new) == 1
        actions, _, version = remote.step_versioned(obs)
        assert version == 1 and (actions == new.step(obs)[0]).all()
        wrong = ModelModule.from_torch(torch.nn.Linear(3, 2), gym.spaces.Box(-1, 1, (3,)),
                                       gym.spaces.Discrete(2), path=tmp_path / "w")
        with pytest.raises(ConfigError, match=r"do not fit.*the old model keeps running"):
            server.update_model(wrong)
        assert remote.step_versioned(obs)[2] == 1


def test_a_killed_server_is_survived_and_nothing_is_recorded_twice(tmp_path, cartpole_policy):
    model_dir = cartpole_policy(0).save(tmp_path / "pi")
    port = _free_port()
    server = _serve_process(model_dir, port, tmp_path)
    steps, envs = 300, 2
    client = _client("--mode", "env", "--url", f"zmq+tcp://127.0.0.1:{port}", "--steps",
                     str(steps), "--envs", str(envs), "--sink", str(tmp_path / "runs"),
                     "--sleep", "0.01", "--timeout", "60", cwd=tmp_path)
    run = json.loads(client.stdout.readline())
    time.sleep(1.0)
    server.send_signal(signal.SIGKILL)
    server.wait()
    time.sleep(1.0)
    server = _serve_process(model_dir, port, tmp_path)
    try:
        result = _result(client)
    finally:
        server.terminate()
        server.wait(10)
    assert result["retries"] >= 1  # it did wait for the restarted server
    table = relayrl_gym.load(run["run_path"]).to_table()
    assert table.num_rows == steps * envs
    keys = {(a, e, s) for a, e, s in zip(table["actor_id"].to_pylist(),
                                         table["episode_id"].to_pylist(),
                                         table["step"].to_pylist())}
    assert len(keys) == table.num_rows


def test_clients_without_an_allowed_key_get_no_answer(tmp_path, cartpole_policy):
    keys = generate_keys(tmp_path / "keys", ["allowed", "stranger"])
    (keys / "authorized" / "stranger.key").unlink()
    with InferenceServer(cartpole_policy(0), bind="tcp://127.0.0.1:*",
                         curve_keys=keys) as server:
        with RemotePolicy(f"{server.url}?curve={keys / 'clients' / 'allowed'}") as remote:
            assert remote.step(np.zeros((1, 4), np.float32))[0].shape == (1,)
        with pytest.raises(TransportError, match="authentication refused"):
            RemotePolicy(f"{server.url}?curve={keys / 'clients' / 'stranger'}&timeout=2")
        with pytest.raises(TransportError, match="no answer from the inference server"):
            RemotePolicy(server.url, timeout=1.5)
        deadline = time.monotonic() + 5
        while server.stats["refused_auth"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = server.stats
    assert stats["refused_auth"] >= 2 and stats["requests"] == 1


def test_malformed_and_misfitting_requests_are_refused_and_counted(tmp_path,
                                                                   cartpole_policy):
    module = cartpole_policy(0)
    with InferenceServer(module, bind="tcp://127.0.0.1:*") as server, \
            RemotePolicy(server.url) as remote:
        ctx, sock = _raw_dealer(server.endpoint)
        try:
            header, _ = _ask(sock, [b"not json"])
            assert header.kind.value == "error" and "not JSON" in header.fields["reason"]
            frames = encode_request(1, np.zeros((2, 4), np.float32))
            header, _ = _ask(sock, [frames[0], b"short"])
            assert "needs 32 bytes; its frame has 5" in header.fields["reason"]
            bad = json.loads(frames[0])
            bad["obs"]["dtype"] = "object"
            header, _ = _ask(sock, [json.dumps(bad).encode(), b""])
            assert "dtype 'object'" in header.fields["reason"]
            header, _ = _ask(sock, [encode(relayrl_gym.transport.protocol.Kind.HELLO,
                                           have=0, seen=0)])
            assert "takes info and act requests" in header.fields["reason"]
            # Well formed, but not for this model: named mismatches.
            header, _ = _ask(sock, encode_request(2, np.zeros((2, 5), np.float32)))
            assert header.fields["id"] == 2
            assert "observations of shape (5,) do not fit" in header.fields["reason"]
            header, _ = _ask(sock, encode_request(3, np.zeros((2, 4), np.float32),
                                                  mask=np.ones((2, 3), np.bool_)))
            assert "the mask has 3 columns" in header.fields["reason"]
            # Meanwhile a well-behaved client is served.
            obs = np.ones((3, 4), np.float32)
            np.testing.assert_array_equal(remote.step(obs)[0], module.step(obs)[0])
        finally:
            sock.close(0)
            ctx.term()
        with pytest.raises(ModelError, match=r"obs has shape \(2, 5\), expected \(batch, 4\)"):
            remote.step(np.zeros((2, 5)))
        stats = server.stats
    assert stats["malformed"] == 4 and stats["refused"] == 2 and stats["requests"] == 1
    assert sum(c["errors"] for c in stats["clients"].values()) == 6


def test_a_server_gone_is_a_clear_error_after_the_timeout(cartpole_policy):
    server = InferenceServer(cartpole_policy(0), bind="tcp://127.0.0.1:*")
    remote = RemotePolicy(server.url, timeout=1.0, retry=0.2)
    try:
        remote.step(np.zeros((1, 4), np.float32))
        server.close()
        start = time.monotonic()
        with pytest.raises(TransportError, match=r"no answer .* for 1 s"):
            remote.step(np.zeros((1, 4), np.float32))
        assert time.monotonic() - start < 3
        assert remote.retries >= 3
    finally:
        remote.close()
        server.close()


def test_cuda_falls_back_to_the_cpu_with_a_warning(cartpole_policy, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the fallback is not taken")
    model_dir = cartpole_policy(0).save(tmp_path / "pi")
    with pytest.warns(UserWarning, match="CPU"), \
            InferenceServer(model_dir, bind="tcp://127.0.0.1:*", device="cuda") as server:
        assert server.runner.model.device.value == "cpu"
        with RemotePolicy(server.url) as remote:
            assert remote.step(np.zeros((1, 4), np.float32))[0].shape == (1,)


def test_every_front_end_takes_the_server_url(tmp_path, cartpole_policy, ttt_policy_dir):
    """wrap, the agent API, collect and PettingZoo policies= all act through the server, and
    their rows carry the version it answered with."""
    module = cartpole_policy(0, version=5)
    with InferenceServer(module, bind="tcp://127.0.0.1:*") as server:
        agent, params = (relayrl_gym.AgentBuilder().actor_count(3).default_model(server.url)
                         .sink(str(tmp_path / "agent")).build())
        agent.start(params)
        ids = agent.get_actor_ids()
        obs = np.random.default_rng(0).uniform(-1, 1, (3, 4)).astype(np.float32)
        np.testing.assert_array_equal(agent.request_action(ids, obs), module.step(obs)[0])
        agent.request_action(ids, obs, reward=1.0)
        agent.shutdown()
        rows = relayrl_gym.load(agent.run_path).to_table()
        assert rows.num_rows == 3 and set(rows["model_version"].to_pylist()) == {5}

        summary = relayrl_gym.collect("CartPole-v1", policy=server.url, actors=2, steps=50,
                                      sink=tmp_path / "collected", progress=False)
        rows = relayrl_gym.load(summary.run_path).to_table()
        assert rows.num_rows >= 50 and set(rows["model_version"].to_pylist()) == {5}

        ttt_dir, _ = ttt_policy_dir
        with InferenceServer(ttt_dir, bind="tcp://127.0.0.1:*") as game_server:
            from pettingzoo.classic import tictactoe_v3

            envs = relayrl_gym.wrap(tictactoe_v3.env, actors=2,
                                    policies={"player_1": game_server.url},
                                    sink=tmp_path / "game")
            _, infos = envs.reset(seed=0)
            for _ in range(6):
                legal = [int(np.flatnonzero(m)[0]) for m in infos["action_mask"]]
                _, _, _, _, infos = envs.step(np.array(legal))
            envs.close()
            assert game_server.stats["requests"] >= 3
        rows = relayrl_gym.load(envs.run_path).to_table()
        played = rows.filter(pc.equal(rows["agent_id"], "player_1"))
        assert played.num_rows > 0 and set(played["model_version"].to_pylist()) == {0}


def test_a_ray_fleet_acts_through_the_server(tmp_path, cartpole_policy, ray_local):
    """The URL travels to the workers as it is (a path would be shipped as its files)."""
    with InferenceServer(cartpole_policy(0, version=2), bind="tcp://127.0.0.1:*") as server:
        summary = relayrl_gym.collect("CartPole-v1", policy=server.url, actors=2, steps=200,
                                      workers=2, backend="ray", sink=tmp_path / "runs",
                                      progress=False)
        assert len(server.stats["clients"]) == 2  # one connection per worker
    rows = relayrl_gym.load(tmp_path / "runs").table
    assert len(rows) == summary.steps and set(rows["model_version"].to_pylist()) == {2}


def test_a_client_flooding_requests_is_bounded_and_others_are_served(cartpole_policy):
    module = cartpole_policy(0)
    obs = np.ones((2, 4), np.float32)
    with InferenceServer(module, bind="tcp://127.0.0.1:*") as server, \
            RemotePolicy(server.url) as other:
        ctx, sock = _raw_dealer(server.endpoint)
        try:
            for request_id in range(1, 301):  # sent at once, without reading an answer
                sock.send_multipart(encode_request(request_id, obs))
            answers: dict[int, str] = {}
            while len(answers) < 300:
                assert sock.poll(5000), f"only {len(answers)} answers"
                header = decode_header(sock.recv_multipart()[0])
                assert header.fields["id"] not in answers  # one answer per request
                answers[header.fields["id"]] = (header.kind.value,
                                                header.fields.get("reason", ""))
            np.testing.assert_array_equal(other.step(obs)[0], module.step(obs)[0])
        finally:
            sock.close(0)
            ctx.term()
        refused = [reason for kind, reason in answers.values() if kind == "error"]
        assert all("requests waiting already" in reason for reason in refused)
        assert sum(kind == "actions" for kind, _ in answers.values()) >= 64
        assert server.stats["refused"] == len(refused)


def _ask_together(endpoint: str, requests: list[list]) -> list[tuple]:
    """Sends each request from a connection of its own, then reads every answer."""
    peers = [_raw_dealer(endpoint) for _ in requests]
    try:
        for _, sock in peers:  # each heard first: the batch then waits for all of them
            _ask(sock, [encode(relayrl_gym.transport.protocol.Kind.INFO, id=0)])
        for (_, sock), frames in zip(peers, requests):
            sock.send_multipart(frames)
        answers = []
        for _, sock in peers:
            assert sock.poll(5000), "no answer"
            answers.append(decode_header(sock.recv_multipart()[0]))
        return answers
    finally:
        for ctx, sock in peers:
            sock.close(0)
            ctx.term()


def test_one_clients_bad_rows_fail_only_its_own_request(tmp_path, ttt_policy_dir):
    """A mask allowing nothing is refused on arrival; NaN observations make the model fail on
    that request alone, not on the others batched with it."""
    _, module = ttt_policy_dir
    box = ModelModule.from_torch(torch.nn.Linear(4, 2), CARTPOLE.observation_space,
                                 CARTPOLE.action_space, path=tmp_path / "box")
    obs = np.zeros((2, 3, 3, 2), np.int8)
    with InferenceServer(module, bind="tcp://127.0.0.1:*", max_wait_us=300_000) as server:
        victim, attacker = _ask_together(server.endpoint, [
            encode_request(1, obs, mask=np.ones((2, 9), np.bool_)),
            encode_request(1, obs, mask=np.zeros((2, 9), np.uint8))])
        assert victim.kind.value == "actions"
        assert "mask rows [0, 1] allow no action" in attacker.fields["reason"]
        assert server.stats["refused"] == 1 and server.stats["model_errors"] == 0
    with InferenceServer(box, bind="tcp://127.0.0.1:*", max_wait_us=300_000) as server:
        good = np.ones((2, 4), np.float32)
        victim, attacker = _ask_together(server.endpoint, [
            encode_request(1, good), encode_request(1, np.full((2, 4), np.nan, np.float32))])
        assert victim.kind.value == "actions", victim.fields
        assert attacker.kind.value == "error"
        assert "failed on this request" in attacker.fields["reason"]
        stats = server.stats
        assert stats["batches"] == 1 and stats["model_errors"] == 1


def test_a_request_longer_than_max_batch_is_answered_in_parts(cartpole_policy):
    module = cartpole_policy(0)
    obs = np.random.default_rng(0).uniform(-2, 2, (70, 4)).astype(np.float32)
    expected = module.step(obs)[0]
    calls: list[int] = []
    step = module.step

    def counted(rows, mask=None, **kwargs):  # the real model, its calls counted
        calls.append(len(rows))
        return step(rows, mask, **kwargs)

    module.step = counted
    with InferenceServer(module, bind="tcp://127.0.0.1:*", max_batch=32) as server, \
            RemotePolicy(server.url) as remote:
        calls.clear()  # the server's own check of the model's outputs
        np.testing.assert_array_equal(remote.step(obs)[0], expected)
    assert calls == [32, 32, 6]


def _step_in_thread(remote: RemotePolicy) -> tuple[threading.Thread, list[BaseException]]:
    """A started thread making one call of ``remote``, and the list its error goes to."""
    raised: list[BaseException] = []

    def call() -> None:
        try:
            remote.step(np.zeros((1, 4), np.float32))
        except BaseException as err:
            raised.append(err)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, raised


def test_close_from_another_thread_stops_a_waiting_call(cartpole_policy):
    server = InferenceServer(cartpole_policy(0), bind="tcp://127.0.0.1:*")
    remote = RemotePolicy(server.url, timeout=30)
    server.close()
    thread, failure = _step_in_thread(remote)
    time.sleep(0.3)
    start = time.monotonic()
    remote.close()
    thread.join(5)
    assert time.monotonic() - start < 1.5 and not thread.is_alive()
    assert isinstance(failure[0], TransportError) and "was closed" in str(failure[0])


def test_interpreter_exit_with_a_call_waiting_on_a_dead_server(tmp_path, cartpole_policy):
    model_dir = cartpole_policy(0).save(tmp_path / "pi")
    script = tmp_path / "exit.py"
    script.write_text(
        "import threading, time, numpy as np\n"
        "from relayrl_gym import InferenceServer\n"
        "from relayrl_gym.transport.inference.client import RemotePolicy\n"
        f"server = InferenceServer({str(model_dir)!r}, bind='tcp://127.0.0.1:*')\n"
        "remote = RemotePolicy(server.url, timeout=60)\n"
        "server.close()\n"
        "threading.Thread(target=remote.step, args=(np.zeros((1, 4), np.float32),),\n"
        "                 daemon=True).start()\n"
        "time.sleep(0.5)\n"
        "print('leaving', flush=True)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "leaving"
    start = time.monotonic()
    proc.wait(30)
    assert time.monotonic() - start < 2.5


def test_connections_opened_for_a_url_are_closed_on_every_path(tmp_path, cartpole_policy):
    import gc

    def open_remotes() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects()
                   if isinstance(o, RemotePolicy) and not o._closed)

    with InferenceServer(cartpole_policy(0), bind="tcp://127.0.0.1:*") as server:
        agent, params = (relayrl_gym.AgentBuilder().actor_count(1).default_model(server.url)
                         .sink("unknown-scheme://x").build())
        with pytest.raises(ConfigError):
            agent.start(params)
        assert open_remotes() == 0
        with InferenceServer(server.url, bind="tcp://127.0.0.1:*") as relay, \
                RemotePolicy(relay.url) as remote:
            assert remote.step(np.zeros((1, 4), np.float32))[0].shape == (1,)
        assert open_remotes() == 0
        agent, params = (relayrl_gym.AgentBuilder().actor_count(1).default_model(server.url)
                         .sink(None).build())
        agent.start(params)
        for _ in range(3):
            agent.update_model(server.url)  # one connection per URL, however often given
        assert open_remotes() == 1
        agent.shutdown()
        assert open_remotes() == 0


def test_a_server_restarted_with_another_model_is_an_error_not_wrong_rows(tmp_path,
                                                                          cartpole_policy,
                                                                          value_policy):
    port = _free_port()
    first = InferenceServer(cartpole_policy(0), bind=f"tcp://127.0.0.1:{port}")
    remote = RemotePolicy(f"zmq+tcp://127.0.0.1:{port}?retry=0.2")
    try:
        remote.step(np.zeros((1, 4), np.float32))
        first.close()
        with InferenceServer(value_policy, bind=f"tcp://127.0.0.1:{port}"), \
                pytest.raises(TransportError, match="restarted with another model"):
            remote.step(np.zeros((1, 4), np.float32))
    finally:
        remote.close()
        first.close()


def test_clients_that_give_one_name_are_counted_apart(cartpole_policy):
    with InferenceServer(cartpole_policy(0), bind="tcp://127.0.0.1:*") as server, \
            RemotePolicy(server.url, name="actor-7") as a, \
            RemotePolicy(server.url, name="actor-7") as b:
        for remote, times in ((a, 5), (b, 1)):
            for _ in range(times):
                remote.step(np.zeros((2, 4), np.float32))
        clients = server.stats["clients"]
    assert sorted(c["requests"] for c in clients.values()) == [1, 5]
    assert all(name.startswith("actor-7 [") for name in clients)


def test_closing_a_relay_whose_upstream_is_gone_is_quick(cartpole_policy):
    """A server serving another server's URL: closing it stops the call waiting upstream."""
    upstream = InferenceServer(cartpole_policy(0), bind="tcp://127.0.0.1:*")
    relay = InferenceServer(upstream.url, bind="tcp://127.0.0.1:*")
    with RemotePolicy(f"{relay.url}?timeout=30") as remote:
        assert remote.step(np.zeros((1, 4), np.float32))[0].shape == (1,)
        upstream.close()
        waiting, outcome = _step_in_thread(remote)
        time.sleep(0.5)  # the relay's socket thread now waits on the upstream
        start = time.monotonic()
        relay.close()
        assert time.monotonic() - start < 2
        waiting.join(5)
    assert isinstance(outcome[0], (TransportError, ModelError))
