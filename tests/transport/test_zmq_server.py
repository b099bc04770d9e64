"""TrainingServer: learner iterator, counters, other sinks, crash repair of its run store,
clean shutdown; the sink's options and error messages."""

from __future__ import annotations

import sys
import threading
import time

import pyarrow as pa
import pytest
from zmq_helpers import assert_same_rows, rows

import relayrl_gym
from relayrl_gym.errors import ConfigError, MissingDependencyError, StateError, TransportError
from relayrl_gym.sinks.base import open_sink
from relayrl_gym.transport import TrainingServer, ZMQSink
from relayrl_gym.transport.collector.run_store import ArrowRunStore
from relayrl_gym.transport.sender.outbox import Outbox


def _stream(server, tmp_path, steps=100, seed=0, name="copy"):
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=[tmp_path / name, server.sink_url])
    envs.reset(seed=seed)
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    envs.close()
    return envs.run_id


def test_learner_sees_batches_as_they_arrive_and_counters_add_up(tmp_path):
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        seen: list[pa.RecordBatch] = []
        learner = threading.Thread(
            target=lambda: seen.extend(server.trajectories(timeout=3.0)), name="learner")
        learner.start()
        time.sleep(0.1)
        runs = [_stream(server, tmp_path, seed=i) for i in range(2)]
        learner.join(10)
        stats = server.stats
    expected = sum(len(rows(tmp_path / "copy" / r)) for r in runs)
    assert sum(b.num_rows for b in seen) == expected == stats["rows"]
    assert stats["received"] == len(seen) and stats["senders"] == 2
    assert stats["duplicates"] == stats["rejected"] == stats["learner_dropped"] == 0
    assert {b.column("run_id")[0].as_py() for b in seen} == set(runs)


def test_sqlite_sink_gets_every_row_once(tmp_path):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=url,
                        state_dir=tmp_path / "state") as server:
        run = _stream(server, tmp_path, steps=200)
    assert_same_rows(rows(f"{url}?run={run}"), rows(tmp_path / "copy" / run))
    assert (tmp_path / "state" / f"{run}.json").exists()


def test_close_is_quick_and_leaves_no_thread(tmp_path, cartpole_policy):
    server = TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "c",
                            models="tcp://127.0.0.1:*", curve_keys=None)
    server.publish_model(cartpole_policy(0))
    iterator = server.trajectories()
    waiting = threading.Thread(target=lambda: list(iterator), name="relayrl-test-learner")
    waiting.start()
    started = time.monotonic()
    server.close()
    server.close()  # idempotent
    waiting.join(5)
    assert time.monotonic() - started < 5
    assert not waiting.is_alive() and not server.collector.alive
    with pytest.raises(StateError, match="closed"):
        server.publish_model(cartpole_policy(0))


def test_run_store_cuts_unacknowledged_batches_after_a_crash(tmp_path):
    schema = pa.schema([("x", pa.int64())])

    def batch(i):
        return pa.record_batch([pa.array([i, i])], schema=schema)

    store = ArrowRunStore(tmp_path, "run", schema)
    for i in range(3):
        store.write(batch(i))
    store.commit({"s": 2})
    store.write(batch(3))  # written, never committed: then the process dies
    store._parts.flush()  # in the file, as if the process died right after writing
    store._lock.release()  # the process dies: the kernel lets go of its lock on the run
    again = ArrowRunStore(tmp_path, "run", schema)
    assert again.last_seq("s") == 2 and again.rows == 6
    again.write(batch(3))
    again.commit({"s": 3})
    again.close()
    files = sorted((tmp_path / "run").glob("part-*.arrow"))
    values = [v for f in files for v in pa.ipc.open_file(str(f)).read_all()["x"].to_pylist()]
    assert values == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(relayrl_gym.errors.SinkError, match="another schema"):
        ArrowRunStore(tmp_path, "run", pa.schema([("y", pa.int8())]))
    (tmp_path / "local-run").mkdir()  # e.g. an actor's own Arrow sink in the same directory
    (tmp_path / "local-run" / "run.json").write_text("{}")  # (an empty directory is taken)
    with pytest.raises(relayrl_gym.errors.SinkError, match="not written by a collector"):
        ArrowRunStore(tmp_path, "local-run", schema)


def test_outbox_resends_with_backoff_and_rewinds():
    box = Outbox(max_bytes=10, resend_after=1.0, resend_max=4.0)
    for payload in (b"aaaa", b"bbbb", b"cccc"):
        box.put(payload, 2)
    assert box.full and [p.seq for p in box.due(now=0.0)] == [0, 1, 2]
    assert box.due(now=0.5) == [] and [p.seq for p in box.due(now=1.0)] == [0, 1, 2]
    assert box.due(now=2.5) == [] and len(box.due(now=3.0)) == 3  # waited 2 s this time
    box.rewind(2)
    assert [p.seq for p in box.due(now=3.0)] == [2] and box.rows == 2 and not box.full
    assert box.resent == 6


@pytest.mark.parametrize(("url", "error", "message"), [
    ("zmq+tcp://host", TransportError, r"must be HOST:PORT"),
    ("zmq+tcp://host:1?window=3", ConfigError, r"unknown option\(s\) \['window'\]"),
    ("zmq+tcp://host:1?close_timeout=soon", ConfigError, r"close_timeout .* must be seconds"),
], ids=["no-port", "option", "timeout"])
def test_sink_url_errors(url, error, message):
    with pytest.raises(error, match=message):
        open_sink(url)


def test_sink_url_options():
    sink = open_sink("zmq+tcp://10.0.0.1:7776?models=tcp://10.0.0.1:50051&spill=/tmp/s")
    assert isinstance(sink, ZMQSink) and sink.endpoint == "tcp://10.0.0.1:7776"
    assert sink.models_endpoint == "tcp://10.0.0.1:50051" and str(sink.spill_dir) == "/tmp/s"
    with pytest.raises(relayrl_gym.errors.SinkError, match="before start"):
        sink.write(pa.record_batch([pa.array([1])], names=["x"]))


def test_bind_errors_and_busy_port(tmp_path):
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path) as server, \
            pytest.raises(TransportError, match=r"cannot bind .* another collector"):
        TrainingServer(bind=server.endpoint, sink=tmp_path)
    with pytest.raises(ConfigError, match="not a Sink object"):
        TrainingServer(bind="tcp://127.0.0.1:*", sink=relayrl_gym.ArrowSink(tmp_path))


def test_missing_pyzmq_names_the_extra(monkeypatch):
    from relayrl_gym.transport._zmq import require_zmq

    monkeypatch.setitem(sys.modules, "zmq", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "relayrl-gym\[zmq\]"'):
        require_zmq()


def test_agent_config_file_streams_to_the_collector(tmp_path, server, cartpole_policy):
    import numpy as np

    config = tmp_path / "agent.toml"
    config.write_text(f'[sink]\ntargets = []\n[transport]\nkind = "zmq"\n'
                      f'address = "{server.endpoint}"\n')
    agent, params = (relayrl_gym.AgentBuilder().actor_count(2).config_path(config)
                     .default_model(cartpole_policy(2)).build())
    agent.start(params)
    ids = agent.get_actor_ids()
    for _ in range(5):
        agent.request_action(ids, np.zeros((2, 4), np.float32), reward=1.0)
    agent.flag_last_action(ids, reward=1.0)
    agent.shutdown()
    assert len(relayrl_gym.load(tmp_path / "collected" / agent.run_id)) == 10


def test_a_slow_learner_misses_batches_not_the_dataset(tmp_path):
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        learner_queue=2) as server:
        arriving = server.trajectories(timeout=0.5)
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, batch_rows=32,
                                sink=[tmp_path / "copy", server.sink_url])
        envs.reset(seed=0)
        for _ in range(200):
            envs.step(envs.action_space.sample())
        envs.close()
        seen = list(arriving)
        stats = server.stats
    assert len(seen) == 2 and stats["learner_dropped"] == stats["received"] - 2 > 0
    assert_same_rows(rows(tmp_path / "collected" / envs.run_id), rows(tmp_path / "copy" /
                                                                      envs.run_id))


def test_batches_over_the_collectors_limit_are_split(tmp_path):
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        max_message_bytes=2 * 1024 * 1024) as server:
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, batch_rows=1 << 20, flush_interval=60,
                                sink=[tmp_path / "copy", server.sink_url])
        envs.reset(seed=0)
        for _ in range(10_000):  # ~3.5 MB in one batch, written at close
            envs.step(envs.action_space.sample())
        envs.close()
        stats = server.stats
    assert stats["received"] >= 4 and stats["rejected"] == 0
    assert_same_rows(rows(tmp_path / "collected" / envs.run_id),
                     rows(tmp_path / "copy" / envs.run_id))
    with pytest.raises(ConfigError, match="max_message_bytes"):
        TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path, max_message_bytes=1000)


def test_pyzmqs_gc_thread_stops_with_the_last_context_not_before():
    # Stopping it while another sink, server or model source still sends zero-copy could wait
    # for ever (a closing model source once hung the process that way).
    import zmq
    from zmq.utils.garbage import gc

    from relayrl_gym.transport._zmq import new_context, release_gc_thread

    sending, other = new_context(), new_context()
    push, pull = sending.socket(zmq.PUSH), sending.socket(zmq.PULL)
    pull.bind("inproc://gc-test")
    push.connect("inproc://gc-test")
    push.send(b"x" * 100_000, copy=False)  # a zero-copy send starts the gc thread
    assert pull.recv() == b"x" * 100_000
    assert gc.is_alive()
    push.close()
    pull.close()
    sending.term()
    release_gc_thread()
    assert gc.is_alive()  # `other` may still send: left running
    other.term()
    release_gc_thread()
    assert not gc.is_alive()
