"""The PettingZoo example runs end to end (few steps) and records both players' moves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import relayrl_gym

pytest.importorskip("pettingzoo")
pytest.importorskip("stable_baselines3")

REPO = Path(__file__).resolve().parents[1]


def test_pettingzoo_tictactoe_example(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "pettingzoo_tictactoe.py"),
                          "--total-timesteps", "512", "--actors", "2", "--eval-games", "5",
                          "--sink", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rates = re.findall(r"win rate (\d\.\d\d)  draw (\d\.\d\d)  loss (\d\.\d\d)", out.stdout)
    assert len(rates) == 2  # before and after training
    for rate in rates:
        assert abs(sum(map(float, rate)) - 1.0) < 0.02
    (run,) = tmp_path.iterdir()
    assert f"dataset: {run}" in out.stdout
    ds = relayrl_gym.load(run)
    rows = ds.to_pandas()
    assert len(rows[rows["agent_id"] == "player_1"]) >= 500  # the learner's steps
    assert set(rows["agent_id"]) == {"player_1", "player_2"}
    assert str(ds.summary()) in out.stdout
