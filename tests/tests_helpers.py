"""Helpers shared by several test modules: env factories, recordings, nested comparisons."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
from testing_env import TestingEnv

import relayrl_gym


def make_testing_env(**kwargs: Any):
    def make() -> TestingEnv:
        return TestingEnv(**kwargs)

    return make


def record_random(sink: Any, env: Any = "CartPole-v1", actors: int = 2, steps: int = 60,
                  seed: int = 0, **kwargs: Any):
    """``steps`` vector steps of seeded random actions recorded to ``sink``; the closed env."""
    envs = relayrl_gym.wrap(env, actors=actors, sink=sink, **kwargs)
    envs.action_space.seed(seed)
    envs.reset(seed=seed)
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    envs.close()
    return envs


def assert_same_nested(a: Any, b: Any, *, dtypes: bool = False) -> None:
    """Dicts with the same keys and tuples of the same length, compared leaf by leaf as
    arrays (exact; ``dtypes``: dtypes and shapes too)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_nested(a[k], b[k], dtypes=dtypes)
    elif isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_nested(x, y, dtypes=dtypes)
    else:
        if dtypes:
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
        np.testing.assert_array_equal(a, b)


def start_serve(cwd: Any, *args: str) -> tuple[subprocess.Popen, str, str]:
    """``relayrl-gym serve --bind tcp://127.0.0.1:* ARGS`` in a process of its own, once it
    listens: (the process, its data endpoint, the line it printed)."""
    serve = subprocess.Popen(
        [sys.executable, "-m", "relayrl_gym.cli.main", "serve", "--bind", "tcp://127.0.0.1:*",
         *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = serve.stdout.readline()
    if "listening on tcp://127.0.0.1:" not in line:
        serve.kill()
        raise AssertionError(f"serve did not start: {serve.communicate()[1]}")
    return serve, line.split("listening on ")[1].split(",")[0], line
