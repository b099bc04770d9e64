"""The console script, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import relayrl_gym


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "relayrl_gym.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_collect_then_inspect(tmp_path):
    out = _cli("collect", "CartPole-v1", "--actors", "2", "--steps", "500", "--seed", "0",
               "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    runs = list((tmp_path / "relayrl_runs").iterdir())
    assert len(runs) == 1 and "500 steps" in out.stdout
    ds = relayrl_gym.load(runs[0])
    assert len(ds) == 500
    shown = _cli("inspect", str(runs[0]), cwd=tmp_path)
    assert shown.returncode == 0 and "steps 500" in shown.stdout


def test_collect_episodes_to_a_chosen_sink(tmp_path):
    out = _cli("collect", "CartPole-v1", "--episodes", "5", "--sink", "arrow://data",
               "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "data").iterdir()
    assert relayrl_gym.load(run).summary().episodes >= 5


def test_errors_are_one_line_and_exit_2(tmp_path):
    out = _cli("collect", "NoSuchEnv-v0", "--steps", "10", cwd=tmp_path)
    assert out.returncode == 2
    assert "error: Environment `NoSuchEnv` doesn't exist" in out.stderr
    assert "Traceback" not in out.stderr
    out = _cli("inspect", "nowhere", cwd=tmp_path)
    assert out.returncode == 2 and "no recorded run" in out.stderr
