"""Factories over `testing_env.TestingEnv` shared by several test modules."""

from __future__ import annotations

from typing import Any

from testing_env import TestingEnv


def make_testing_env(**kwargs: Any):
    def make() -> TestingEnv:
        return TestingEnv(**kwargs)

    return make
