"""Every transition streamed by actor processes is in the collector's dataset exactly once,
also when the collector or a sender is killed (SIGKILL) and restarted mid-stream."""

from __future__ import annotations

import pyarrow.compute as pc
from zmq_helpers import (
    assert_no_duplicates,
    assert_same_rows,
    committed_rows,
    finish,
    first_line,
    free_port,
    kill,
    rows,
    start_actor,
    start_serve,
    wait_until,
)


def test_two_actor_processes_arrive_exactly_once(tmp_path, server):
    url = server.sink_url + "?models=off"
    actors = [start_actor("--url", url, "--local", str(tmp_path / f"local{i}"), "--steps",
                          "1500", "--seed", str(i), cwd=tmp_path) for i in range(2)]
    results = [finish(p) for p in actors]
    for i, result in enumerate(results):
        run = result["run_id"]
        assert_same_rows(rows(tmp_path / "collected" / run), rows(tmp_path / f"local{i}" / run))
    stats = server.stats
    assert stats["senders"] == 2 and stats["rejected"] == 0
    assert stats["rows"] == sum(len(rows(tmp_path / "collected" / r["run_id"]))
                                for r in results)
    assert all(s["last_seq"] >= 0 for s in stats["per_sender"].values())


def test_collector_killed_and_restarted_mid_stream(tmp_path):
    port = free_port()
    bind = f"tcp://127.0.0.1:{port}"
    sink = tmp_path / "collected"
    collector, _ = start_serve("--bind", bind, "--sink", str(sink), cwd=tmp_path)
    actors = [start_actor("--url", f"zmq+tcp://127.0.0.1:{port}?models=off", "--local",
                          str(tmp_path / "local"), "--steps", "2500", "--sleep", "0.001",
                          "--seed", str(i), cwd=tmp_path) for i in range(2)]
    runs = [first_line(actor)["run_id"] for actor in actors]
    wait_until(lambda: all(committed_rows(sink / run) > 200 for run in runs),
               what="rows at the collector")
    kill(collector)  # SIGKILL: no flush, no goodbye
    rows_before = [committed_rows(sink / run) for run in runs]
    collector, _ = start_serve("--bind", bind, "--sink", str(sink), cwd=tmp_path)
    try:
        results = [finish(actor) for actor in actors]
    finally:
        collector.terminate()
        out, _ = collector.communicate(timeout=20)
    assert collector.returncode == 0 and "stopped" in out
    assert [r["steps"] for r in results] == [2500, 2500]
    for run, before in zip(runs, rows_before):
        got = rows(sink / run)
        assert got.num_rows > before
        assert_same_rows(got, rows(tmp_path / "local" / run))


def test_sender_killed_and_restarted(tmp_path, server):
    """A restarted sender is a new run; what the killed one delivered is kept exactly once and
    is, in order, a prefix of what it recorded locally."""
    url = server.sink_url + "?models=off"
    doomed = start_actor("--url", url, "--local", str(tmp_path / "local"), "--forever",
                         "--sleep", "0.001", cwd=tmp_path)
    run_a = first_line(doomed)["run_id"]
    wait_until(lambda: committed_rows(tmp_path / "collected" / run_a) > 300,
               what="rows of the first sender")
    kill(doomed)
    again = start_actor("--url", url, "--local", str(tmp_path / "local"), "--steps", "800",
                        cwd=tmp_path)
    run_b = finish(again)["run_id"]
    assert run_b != run_a
    assert_same_rows(rows(tmp_path / "collected" / run_b), rows(tmp_path / "local" / run_b))
    import relayrl_gym

    got = relayrl_gym.load(tmp_path / "collected" / run_a).table
    local = relayrl_gym.load(tmp_path / "local" / run_a).table
    assert_no_duplicates(got)
    assert 300 < got.num_rows <= local.num_rows
    head = local.slice(0, got.num_rows)
    for name in ("actor_id", "episode_id", "step", "obs", "action", "reward"):
        assert got[name].equals(head[name]), name
    assert pc.min(got["step"]).as_py() == 0


def test_collector_down_window_full_spills_then_delivers_once(tmp_path):
    """Past the sender's window, batches wait in the writer's backlog (spilled to disk past its
    bound) and are retried; when the collector comes up, every one arrives once."""
    import pyarrow as pa

    import relayrl_gym
    from relayrl_gym.recording.delivery import SinkDelivery
    from relayrl_gym.transport import TrainingServer, ZMQSink

    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path / "local", batch_rows=64)
    envs.reset(seed=0)
    for _ in range(1000):
        envs.step(envs.action_space.sample())
    envs.close()
    source = relayrl_gym.load(envs.run_path).table
    batches = source.to_batches(max_chunksize=100)
    port = free_port()
    sink = ZMQSink(f"tcp://127.0.0.1:{port}", models="off", window_bytes=20_000,
                   resend_after=0.2)
    sink.start("late-run", source.schema)
    delivery = SinkDelivery(sink, "late-run", tmp_path / "spill", max_backlog_bytes=30_000,
                            retry_initial=0.05, retry_max=0.2)
    for batch in batches:
        delivery.offer(pa.record_batch(batch.columns, schema=source.schema))
    assert delivery.rows_waiting > 0 and (tmp_path / "spill" / "late-run").exists()
    with TrainingServer(bind=f"tcp://127.0.0.1:{port}", sink=tmp_path / "collected"):
        wait_until(lambda: delivery.retry() and sink.wait_acknowledged(0.05),
                   what="the backlog to drain")
        delivery.close()
        sink.close()
    got = rows(tmp_path / "collected" / "late-run")
    assert_same_rows(got, source.sort_by([(c, "ascending") for c in
                                          ("actor_id", "episode_id", "step")]))
    assert not (tmp_path / "spill" / "late-run").exists()  # delivered spill files are removed
