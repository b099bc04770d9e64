"""Helpers shared by several test modules: env factories, nested comparisons."""

from __future__ import annotations

from typing import Any

import numpy as np
from testing_env import TestingEnv


def make_testing_env(**kwargs: Any):
    def make() -> TestingEnv:
        return TestingEnv(**kwargs)

    return make


def assert_same_nested(a: Any, b: Any) -> None:
    """Dicts with the same keys, compared leaf by leaf as arrays (exact)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_nested(a[k], b[k])
    else:
        np.testing.assert_array_equal(a, b)
