"""Fixtures of the ModelModule tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def obs() -> np.ndarray:
    """64 observations inside OBS_SPACE."""
    return np.random.default_rng(0).uniform(-3, 3, size=(64, 4)).astype(np.float32)
