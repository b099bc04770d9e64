"""examples/zmq_learner.py runs end to end (short mode): a learner and two actor processes, and
the mean return rises over the published versions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "zmq_learner.py"


@pytest.mark.parametrize("inference", [False, True], ids=["own-models", "inference-server"])
def test_zmq_learner_example_learns(tmp_path, inference):
    """With ``--inference`` the actors act through an inference server following the
    learner's models, and still learn."""
    out = subprocess.run([sys.executable, str(EXAMPLE), "--short", "--sink",
                          str(tmp_path / "runs"), *(["--inference"] if inference else [])],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    versions = re.findall(r"version +(\d+): mean return", out.stdout)
    assert [int(v) for v in versions] == list(range(1, 26))
    first, last = map(float, re.search(r"rose from ([\d.]+) .* to ([\d.]+)", out.stdout).groups())
    assert last > first  # 25 versions: ~200-300 against ~22 (REINFORCE is noisy over 15)
    assert "0 duplicates dropped" in out.stdout
    assert len(list((tmp_path / "runs").iterdir())) == 2  # one run per actor process
    finals = re.findall(r"ended on model version (\d+)", out.stdout)
    assert len(finals) == 2 and all(int(v) >= 24 for v in finals)  # both hot-swapped along
    if inference:
        assert re.search(r"inference server: \d+ requests, mean batch", out.stdout)
