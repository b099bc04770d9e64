"""The collector's de-duplication state against what senders hold: a collector without the
state of a run (another sink directory, a lost state file) takes the stream up where the sender
is, and a failed commit never writes a batch twice."""

from __future__ import annotations

import resource
import time

import pyarrow as pa
from zmq_helpers import (
    KEY_COLUMNS,
    assert_same_rows,
    finish,
    first_line,
    free_port,
    rows,
    start_actor,
    start_serve,
    wait_until,
)

import relayrl_gym
from relayrl_gym.storage.run_dir import in_progress_name
from relayrl_gym.transport import TrainingServer


def _steps(envs, n):
    for _ in range(n):
        envs.step(envs.action_space.sample())


def test_a_collector_without_the_runs_state_takes_the_stream_up(tmp_path):
    port = free_port()
    bind = f"tcp://127.0.0.1:{port}"
    first = TrainingServer(bind=bind, sink=tmp_path / "a")
    envs = relayrl_gym.wrap(
        "CartPole-v1", actors=2, flush_interval=0.05,
        sink=[tmp_path / "local", f"zmq+tcp://127.0.0.1:{port}?models=off&close_timeout=5"])
    try:
        envs.reset(seed=0)
        _steps(envs, 200)
        envs.agent.flush()
        assert envs.agent.writer.sinks[1].wait_acknowledged(10)
        first.close()
        second = TrainingServer(bind=bind, sink=tmp_path / "b")  # knows nothing of the run
        try:
            _steps(envs, 200)
            envs.close()  # every batch acknowledged (no SinkError, nothing spilled)
        finally:
            second.close()
    finally:
        first.close()
    run = envs.run_id
    assert len(rows(tmp_path / "a" / run)) > 0 and len(rows(tmp_path / "b" / run)) > 0
    both = pa.concat_tables([rows(tmp_path / "a" / run), rows(tmp_path / "b" / run)])
    assert_same_rows(both.sort_by([(c, "ascending") for c in KEY_COLUMNS]),
                     rows(tmp_path / "local" / run))


def test_a_failed_commit_keeps_no_batch_twice(tmp_path):
    """The collector's disk refuses writes for a while (a real file size limit, RLIMIT_FSIZE,
    on the serve process): data written but not committed is cut, resent batches are written
    once, and once the disk takes writes again every transition is there exactly once."""
    limit = 120_000
    port = free_port()
    sink = tmp_path / "collected"
    collector, _ = start_serve(
        "--bind", f"tcp://127.0.0.1:{port}", "--sink", str(sink), "--compression", "none",
        cwd=tmp_path, preexec_fn=lambda: resource.setrlimit(
            resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)))
    try:
        actor = start_actor("--url", f"zmq+tcp://127.0.0.1:{port}?models=off&close_timeout=30",
                            "--local", str(tmp_path / "local"), "--steps", "2500", cwd=tmp_path)
        run = first_line(actor)["run_id"]
        data = sink / run / in_progress_name("part-00000.arrow")
        wait_until(lambda: data.exists() and data.stat().st_size >= limit - 4096,
                   what="the data file to reach the size limit")
        time.sleep(1.0)  # commits fail, batches are resent
        resource.prlimit(collector.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        finish(actor)
    finally:
        collector.terminate()
        _, err = collector.communicate(timeout=20)
    assert "failed" in err  # the fault did happen
    assert_same_rows(rows(sink / run), rows(tmp_path / "local" / run))
