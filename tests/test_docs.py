"""Every example and every Python block of the README runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import relayrl_gym

REPO = Path(__file__).resolve().parents[1]


def test_example_record_cartpole(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "record_cartpole.py"),
                          "--steps", "2000", "--sink", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (run,) = tmp_path.iterdir()
    ds = relayrl_gym.load(run)
    assert len(ds) >= 1900 and f"dataset: {run}" in out.stdout
    assert ds.summary().mean_return > 30  # the lean-following policy beats random (~22)


def _readme_blocks():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_python_blocks(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    code = _readme_blocks()[index]
    exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "__readme__"})


def _example(name, *args, cwd):
    out = subprocess.run([sys.executable, str(REPO / "examples" / name), *args],
                         capture_output=True, text=True, timeout=300, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out


def test_example_train_export_collect(tmp_path):
    out = _example("train_export_collect.py", "--episodes", "150", "--actors", "2",
                   "--collect-steps", "4000", "--sink", str(tmp_path / "runs"),
                   "--policy-dir", str(tmp_path), cwd=tmp_path)
    before = float(re.search(r"return before training.*: ([\d.]+)", out.stdout).group(1))
    after = float(re.search(r"return after training.*: +([\d.]+)", out.stdout).group(1))
    assert after > 2 * before  # 150 REINFORCE episodes already beat random actions
    (run,) = (tmp_path / "runs").iterdir()
    ds = relayrl_gym.load(run)
    assert len(ds) >= 4000 and set(ds.table["model_version"].to_pylist()) == {0}
    assert relayrl_gym.ModelModule.load_from_path(tmp_path / "pi").version == 0


def test_example_offline_behaviour_cloning(tmp_path):
    out = _example("offline_bc.py", "--steps", "10000", "--epochs", "3", "--eval-steps",
                   "4000", "--sink", str(tmp_path / "runs"), "--policy-dir", str(tmp_path),
                   cwd=tmp_path)
    random = float(re.search(r"return with random actions: +([\d.]+)", out.stdout).group(1))
    clone = float(re.search(r"return of the clone .*: ([\d.]+)", out.stdout).group(1))
    assert clone > 5 * random  # cloned from the recorded demonstrations alone
    assert relayrl_gym.ModelModule.load_from_path(tmp_path / "bc").version == 0
