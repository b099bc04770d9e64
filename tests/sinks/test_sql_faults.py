"""PostgreSQL going away mid-run, and several processes writing to one database at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

import relayrl_gym

pytestmark = pytest.mark.slow


def _cluster(action):
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action,
                    *(["-m", "fast"] if action == "stop" else [])],
                   check=True, capture_output=True, timeout=60)


def _wait_for_postgres(url, timeout=30):
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.skipif(not Path("/etc/postgresql").is_dir() or os.geteuid() != 0,
                    reason="needs the local PostgreSQL cluster and the rights to restart it")
def test_postgresql_stopped_mid_run_then_started_every_transition_once(pg_url, tmp_path):
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=[tmp_path / "arrow", pg_url],
                            router_scale=0, batch_rows=64, flush_interval=0.05)
    rng = np.random.default_rng(0)
    envs.reset(seed=0)

    def play(steps):
        started = time.monotonic()
        for _ in range(steps):
            envs.step(rng.integers(0, 2, size=4))
        return time.monotonic() - started

    try:
        play(300)
        envs.flush()
        _cluster("stop")
        outage = play(300)  # the database is down: stepping goes on
        envs.agent.writer.flush()
        waiting = envs.agent.writer.rows_waiting
    finally:
        _cluster("start")
    _wait_for_postgres(pg_url)
    play(300)
    envs.close()  # delivers what waited (retry with backoff, then a last retry at close)
    assert waiting > 0 and outage < 20
    arrow = relayrl_gym.load(envs.run_path).table
    sql = relayrl_gym.load(f"{pg_url}?run={quote(envs.run_id)}").table
    assert sql.num_rows == arrow.num_rows > 3000
    assert sql.equals(arrow)  # every transition exactly once, in order


_WRITER = textwrap.dedent("""
    import sys, relayrl_gym
    url, arrow_dir, run_id, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=[arrow_dir, url], run_id=run_id,
                            router_scale=0, batch_rows=128, flush_interval=0.05)
    envs.action_space.seed(seed)
    envs.reset(seed=seed)
    for _ in range(1500):
        envs.step(envs.action_space.sample())
    envs.close()
""")


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_processes_write_one_database_at_once(database, pg_url, tmp_path):
    url = pg_url if database == "postgresql" else f"sqlite:///{tmp_path / 'shared.db'}"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    runs = [f"concurrent-{database}-{i}-{tmp_path.name}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), url, str(tmp_path / "arrow"), run,
                               str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, run in enumerate(runs)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for run in runs:
        sql = relayrl_gym.load(f"{url}?run={run}")
        arrow = relayrl_gym.load(tmp_path / "arrow" / run)
        assert len(sql) == len(arrow) > 5000
        assert sql.table.equals(arrow.table)
