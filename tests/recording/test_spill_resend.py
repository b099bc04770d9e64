"""A failing sink's spill is sent to the sink by one command once it is back."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import relayrl_gym
from relayrl_gym.errors import SinkError
from relayrl_gym.sinks.sql import SQLSink


class Down(SQLSink):
    """A database that refuses every write (its server is down)."""

    def write(self, batch):
        raise ConnectionError("the database server is down")


def test_a_database_outage_spill_is_resent_by_one_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=[tmp_path / "copy", Down(url)],
                            spill_dir=tmp_path / "spill", batch_rows=32)
    envs.reset(seed=0)
    for _ in range(60):
        envs.step(np.array([0, 1]))
    envs.agent.writer.close_retry = 0.1
    with pytest.raises(SinkError, match=r"relayrl-gym resend .* --to SINK_URL") as err:
        envs.close()
    spill = tmp_path / "spill" / "sink1-Down" / envs.run_id
    assert str(spill) in str(err.value)
    out = subprocess.run([sys.executable, "-m", "relayrl_gym.cli.main", "resend", str(spill),
                          "--to", url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rows written to sqlite:///" in out.stdout and not spill.exists()
    resent = relayrl_gym.load(f"{url}?run={envs.run_id}-spill").table
    local = relayrl_gym.load(tmp_path / "copy" / envs.run_id).table
    keep = ["actor_id", "episode_id", "step", "obs", "action", "reward", "next_obs"]
    assert resent.select(keep).equals(local.select(keep))


def test_a_spill_is_resent_to_an_arrow_directory_with_its_infos(tmp_path):
    # Infos kept as numbers in the spill reach the new run as they were (same text back).
    from tests_helpers import make_testing_env

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    envs = relayrl_gym.wrap(make_testing_env(info=True, length=4), actors=2,
                            sink=[tmp_path / "copy", Down(url)], spill_dir=tmp_path / "spill",
                            batch_rows=16)
    envs.reset(seed=0)
    for _ in range(30):
        envs.step(np.array([0, 1]))
    envs.agent.writer.close_retry = 0.1
    with pytest.raises(SinkError):
        envs.close()
    spill = tmp_path / "spill" / "sink1-Down" / envs.run_id
    out = subprocess.run([sys.executable, "-m", "relayrl_gym.cli.main", "resend", str(spill),
                          "--to", str(tmp_path / "again")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    resent = relayrl_gym.load(tmp_path / "again" / f"{envs.run_id}-spill").table
    local = relayrl_gym.load(tmp_path / "copy" / envs.run_id).table
    keep = ["actor_id", "episode_id", "step", "obs", "action", "reward", "next_obs", "info"]
    assert resent.num_rows == local.num_rows > 0
    assert resent.select(keep).equals(local.select(keep))
    assert any(resent.column("info").to_pylist())
