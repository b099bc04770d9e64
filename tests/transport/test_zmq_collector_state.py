"""The collector's de-duplication state against what senders hold: a collector without the
state of a run (another sink directory, a lost state file) takes the stream up where the sender
is, and a failed commit never writes a batch twice."""

from __future__ import annotations

import pyarrow as pa
from zmq_helpers import KEY_COLUMNS, assert_same_rows, free_port, rows

import relayrl_gym
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
