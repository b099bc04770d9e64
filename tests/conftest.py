from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def sink_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    """Every test must leave no relayrl-gym thread running (clean shutdown invariant)."""
    yield
    leaked = [t.name for t in threading.enumerate()
              if t.name.startswith("relayrl") and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"
