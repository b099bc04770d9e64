"""The SB3 and CleanRL examples run end to end (small step counts) and record their rollouts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import relayrl_gym

pytest.importorskip("stable_baselines3")  # torch comes with it

REPO = Path(__file__).resolve().parents[1]


def _run_example(name: str, tmp_path: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, str(REPO / "examples" / name), *args,
                          "--sink", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _one_change(name: str) -> None:
    text = (REPO / "examples" / name).read_text()
    assert len(re.findall(r"# the one change: ", text)) == 1
    assert "relayrl_gym.wrap(" in text.split("# the one change: ", 1)[1].split("\n\n", 1)[0]


def test_sb3_cartpole_example(tmp_path):
    _one_change("sb3_cartpole.py")
    stdout = _run_example("sb3_cartpole.py", tmp_path, "--total-timesteps", "2048")
    runs = sorted(tmp_path.iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(runs) == 2  # PPO's run, then DQN's
    for run, algo in zip(runs, ("PPO", "DQN")):
        assert f"dataset: {run}" in stdout and f"{algo}: evaluation return" in stdout
        ds = relayrl_gym.load(run)
        summary = ds.summary()
        assert len(ds) > 2048  # the training steps, then the evaluation episodes
        assert summary.episodes >= 10 and str(summary) in stdout
        assert ds.metadata["autoreset_mode"] == "SameStep"
    assert len(relayrl_gym.load(runs[0]).summary().actors) == 8  # PPO: 8 actors, DQN: 1
    assert len(relayrl_gym.load(runs[1]).summary().actors) == 1


def test_cleanrl_ppo_example(tmp_path):
    _one_change("cleanrl_ppo.py")
    stdout = _run_example("cleanrl_ppo.py", tmp_path, "--total-timesteps", "2048",
                          "--num-envs", "4", "--num-steps", "128")
    (run,) = tmp_path.iterdir()
    assert f"dataset: {run}" in stdout and "iteration 4/4  global_step=2048" in stdout
    ds = relayrl_gym.load(run)
    assert len(ds) == 2048  # 4 iterations x 128 steps x 4 envs, every one recorded
    summary = ds.summary()
    assert str(summary) in stdout
    # The script's own episode count (from RecordEpisodeStatistics) matches the dataset's.
    counted = sum(int(n) for n in re.findall(r"episodes=(\d+)", stdout))
    assert summary.episodes == counted > 0
    assert {a.steps for a in summary.actors} == {512}
