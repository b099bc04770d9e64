"""Collection rules for the whole repository (doctests of the package included)."""

from __future__ import annotations

import importlib.util

# Modules of optional extras import their dependency at the top; without it, their doctests
# cannot even be collected (the tests that need them skip themselves).
collect_ignore = [path for module, path in (
    ("stable_baselines3", "relayrl_gym/wrappers/sb3.py"),
    ("minari", "relayrl_gym/data/minari_io.py"),
    ("matplotlib", "relayrl_gym/data/plots.py"),
    ("tensorboard", "relayrl_gym/data/scalars.py"),
) if importlib.util.find_spec(module) is None]

# conftest.py files hold fixtures, not doctests; collected as doctest modules they clash by
# name ("conftest") when several test folders are passed to pytest at once.
collect_ignore_glob = ["tests/**/conftest.py"]
