"""Fleets on a real local Ray instance: every worker's run recorded once, workers that die
restarted, models reaching every worker, clear errors."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid

import gymnasium as gym
import pyarrow.compute as pc
import pytest

import relayrl_gym
from relayrl_gym.errors import ConfigError, MissingDependencyError
from relayrl_gym.sinks.arrow import ArrowSink

KEYS = ["actor_id", "episode_id", "step"]


def _recording(root, runs: int) -> bool:
    """Whether ``runs`` runs under ``root`` have rows on disk."""
    try:
        dataset = relayrl_gym.load(root)
    except relayrl_gym.errors.RelayRLError:
        return False
    return len(dataset.run_ids) >= runs and len(dataset) > 0


def _assert_each_transition_once(run_dir) -> int:
    table = relayrl_gym.load(run_dir).table
    counts = table.group_by(KEYS).aggregate([("step", "count")])
    assert table.num_rows == 0 or pc.max(counts["step_count"]).as_py() == 1
    return table.num_rows


def test_collect_with_workers_records_each_transition_once_in_a_run_per_worker(ray_local,
                                                                               tmp_path):
    summary = relayrl_gym.collect("CartPole-v1", actors=2, steps=1500, workers=3,
                                  backend="ray", sink=tmp_path / "runs", seed=0)
    assert isinstance(summary, relayrl_gym.FleetSummary)
    assert summary.workers == 3 and len(summary.run_ids) == 3 and summary.restarts == 0
    assert summary.steps >= 1500 and summary.episodes > 0 and summary.mean_return > 0
    rows = {run: _assert_each_transition_once(tmp_path / "runs" / run)
            for run in summary.run_ids}
    assert sum(rows.values()) == summary.steps  # what the summary says is what was recorded
    assert all(n >= 500 for n in rows.values())  # every worker took its share
    # Worker i's env j was seeded with seed + i * actors + j: three different streams.
    firsts = {run: relayrl_gym.load(tmp_path / "runs" / run).table["obs"][0].as_py()
              for run in summary.run_ids}
    assert len({tuple(v) for v in firsts.values()}) == 3
    assert str(tmp_path / "runs") in str(summary)


def test_a_killed_worker_is_restarted_as_a_new_run_and_nothing_is_recorded_twice(ray_local,
                                                                                 tmp_path):
    slow = {"max_episode_steps": 500}
    fleet = relayrl_gym.Fleet("CartPole-v1", workers=2, actors=2, sink=tmp_path / "runs",
                              seed=1, flush_interval=0.1, **slow)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(summary=fleet.run(steps=40_000)))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while fleet.stats["workers"].get(0, {}).get("steps", 0) < 2000:
            assert time.monotonic() < deadline, "worker 0 never got going"
            time.sleep(0.1)
        os.kill(fleet.placements[0]["pid"], signal.SIGKILL)
    finally:
        runner.join(180)
    summary = result["summary"]
    assert summary.restarts == 1 and summary.crashes[0].worker == 0
    assert summary.crashes[0].steps_reported >= 2000
    assert summary.crashes[0].lost_at_most_seconds == pytest.approx(0.1)
    assert "died after" in str(summary)
    restarted = [r for r in summary.run_ids if r.endswith("-w0r1")]
    assert restarted and len(summary.run_ids) == 3
    for run in summary.run_ids:
        _assert_each_transition_once(tmp_path / "runs" / run)
    # The dead run keeps what it flushed: at most one flush interval short of what it reported.
    dead = relayrl_gym.load(tmp_path / "runs" / summary.crashes[0].run_id)
    assert len(dead) > 0.5 * summary.crashes[0].steps_reported


def test_published_models_reach_every_worker(ray_local, tmp_path, cartpole_policy):
    url = f"nats://127.0.0.1:4222/fleet-{uuid.uuid4().hex[:8]}"
    with relayrl_gym.TrainingServer(source=url, sink=tmp_path / "collected") as server, \
            relayrl_gym.Fleet("CartPole-v1", policy=cartpole_policy(0), workers=2, actors=2,
                              sink=url, flush_interval=0.1) as fleet:
        fleet.start()
        version = server.publish_model(cartpole_policy(1))
        deadline = time.monotonic() + 60
        while not all(w.get("model_versions") == [version, version]
                      for w in fleet.stats["workers"].values()) or \
                len(fleet.stats["workers"]) < 2:
            assert time.monotonic() < deadline, f"not every worker swapped: {fleet.stats}"
            time.sleep(0.2)
        assert fleet.update_model(cartpole_policy(2, version=version + 5)) == [version + 5] * 2
        fleet.scale(3)
        assert len(fleet.stats["workers"]) == 3
        summary = fleet.stop()
        assert server.wait_for_rows(summary.steps, timeout=60)
    versions = set(pc.unique(relayrl_gym.load(tmp_path / "collected").table["model_version"])
                   .to_pylist())
    assert {version, version + 5} <= versions


def test_errors_say_what_to_do(ray_local, tmp_path, monkeypatch):
    with pytest.raises(gym.error.NameNotFound):  # raised in a worker, reaching the caller
        relayrl_gym.collect("NoSuchEnv-v0", steps=10, workers=2, backend="ray",
                            sink=tmp_path / "runs")
    with pytest.raises(ConfigError, match="SQLite file, on one host"):
        relayrl_gym.collect("CartPole-v1", steps=10, workers=2, backend="ray",
                            sink=f"sqlite:///{tmp_path / 'runs.db'}")
    with pytest.raises(ConfigError, match="not a Sink object"):
        relayrl_gym.collect("CartPole-v1", steps=10, workers=2, backend="ray",
                            sink=ArrowSink(tmp_path))
    with pytest.raises(ConfigError, match="`backend` must be 'local' or 'ray'"):
        relayrl_gym.collect("CartPole-v1", steps=10, backend="dask")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"relayrl-gym\[ray\]"):
        relayrl_gym.Fleet("CartPole-v1").start()


def test_the_command_line_collects_with_workers(ray_local, tmp_path):
    import subprocess

    out = subprocess.run([sys.executable, "-m", "relayrl_gym.cli.main", "collect",
                          "CartPole-v1", "--actors", "2", "--steps", "400", "--workers", "2",
                          "--sink", str(tmp_path / "runs"), "--no-progress", "--ray", "auto"],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 workers, 2 runs" in out.stdout
    assert len(relayrl_gym.load(tmp_path / "runs")) >= 400


def test_the_fleet_learner_example_learns(ray_local, tmp_path):
    import re
    import subprocess
    from pathlib import Path

    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    example = Path(__file__).resolve().parents[2] / "examples" / "ray_fleet_learner.py"
    out = subprocess.run([sys.executable, str(example), "--short", "--ray-address", "auto"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    versions = re.findall(r"version +(\d+): mean return", out.stdout)
    assert [int(v) for v in versions] == list(range(1, 26))
    first, last = map(float, re.search(r"rose from ([\d.]+) .* to ([\d.]+)", out.stdout).groups())
    assert last > first
    assert "2 workers, 2 runs" in out.stdout and "restarts" not in out.stdout


def test_ctrl_c_stops_every_worker_flushed_and_prints_the_summary(ray_local, tmp_path):
    import re
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "relayrl_gym.cli.main", "collect",
                             "CartPole-v1", "--actors", "2", "--steps", "100000000",
                             "--workers", "2", "--sink", str(tmp_path / "runs"),
                             "--no-progress", "--ray", "auto"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _recording(tmp_path / "runs", runs=2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    steps = int(re.search(r"2 workers, 2 runs: (\d+) steps", out).group(1))
    assert steps > 0 and len(relayrl_gym.load(tmp_path / "runs")) == steps  # all flushed


def test_a_worker_the_cluster_has_no_room_for_is_a_clear_error(ray_local, tmp_path):
    fleet = relayrl_gym.Fleet("CartPole-v1", workers=1, actors=1, sink=None, num_cpus=64,
                              start_timeout=3)
    with pytest.raises(relayrl_gym.errors.StateError, match="no room for another worker"):
        fleet.start()
