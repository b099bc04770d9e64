"""A fleet on a simulated two-node Ray cluster: workers spread over the nodes, a directory
that is not shared refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")


@pytest.mark.slow
def test_workers_spread_over_two_nodes_and_a_local_directory_is_refused(tmp_path):
    script = Path(__file__).with_name("two_nodes.py")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == 2
    assert "local to each of the 2 nodes" in seen["refused"]
    assert len(seen["placed_on"]) == 2  # SPREAD: one worker on each node
    assert seen["runs"] == 2 and seen["rows"] == seen["steps"] >= 600
