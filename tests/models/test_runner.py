"""PolicyRunner: the current policy and its version, swapped only for models that fit."""

import threading

import numpy as np
import pytest
import torch
from gymnasium import spaces

from relayrl_gym.errors import ConfigError
from relayrl_gym.models.runner import PolicyRunner
from relayrl_gym.policies.fitting import VersionCounter
from relayrl_gym.policies.module import ModelModule

OBS, ACT = spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2)


def _module(tmp_path, name, obs=OBS, act=ACT, version=0, seed=0):
    torch.manual_seed(seed)
    width = act.n if isinstance(act, spaces.Discrete) else act.shape[0]
    net = torch.nn.Sequential(torch.nn.Linear(obs.shape[0], 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, width))
    return ModelModule.from_torch(net, obs, act, path=tmp_path / name, format="onnx",
                                  version=version)


def test_versions_move_forward_and_a_model_keeps_its_version(tmp_path):
    first, second = _module(tmp_path, "a"), _module(tmp_path, "b", seed=1)
    runner = PolicyRunner(first, OBS, ACT)
    assert runner.current() == (first, 0)
    assert runner.update(second) == 1
    assert runner.update(first) == 0  # the same object runs as the version it had
    assert runner.current() == (first, 0)
    loaded = runner.update(tmp_path / "b")  # a path is a new model object
    assert loaded == 2 and runner.model.observation_space == OBS


def test_a_model_that_does_not_fit_is_refused_and_the_old_keeps_running(tmp_path):
    runner = PolicyRunner(_module(tmp_path, "a"), what="policy", owner="env")
    other = _module(tmp_path, "wide", obs=spaces.Box(-1, 1, (3,), np.float32))
    with pytest.raises(ConfigError, match=r"do not fit the env's.*old model keeps running"):
        runner.update(other)
    assert runner.current()[1] == 0
    with pytest.raises(ConfigError, match="must be a ModelModule"):
        runner.update(object())


def test_runners_sharing_a_counter_never_reuse_a_version(tmp_path):
    counter = VersionCounter()
    one = PolicyRunner(_module(tmp_path, "a"), versions=counter)
    two = PolicyRunner(_module(tmp_path, "b", seed=1), versions=counter)
    three = _module(tmp_path, "c", seed=2, version=7)
    assert (one.version, two.version) == (0, 1)
    assert two.update(three) == 7  # its own version, above every earlier one
    assert one.update(_module(tmp_path, "d", seed=3)) == 8


def test_current_never_pairs_a_model_with_another_models_version(tmp_path):
    models = [_module(tmp_path, f"m{i}", seed=i, version=i) for i in range(2)]
    runner = PolicyRunner(models[0])
    versions = {id(m): runner.version_of(m) for m in models}
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            seen.append(runner.current())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(300):
        runner.swap(models[i % 2])
    stop.set()
    reader.join()
    assert seen and all(versions[id(model)] == version for model, version in seen)


def test_runners_sharing_a_counter_give_distinct_versions_from_many_threads(tmp_path):
    counter = VersionCounter()
    runners = [PolicyRunner(_module(tmp_path, f"r{i}", seed=i), versions=counter)
               for i in range(4)]
    fresh = [[_module(tmp_path, f"n{i}-{k}", seed=10 * i + k) for k in range(5)]
             for i in range(4)]
    got = [[] for _ in runners]

    def swap_all(i):
        got[i] += [runners[i].update(model) for model in fresh[i]]

    threads = [threading.Thread(target=swap_all, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    versions = [v for vs in got for v in vs]
    assert sorted(versions) == list(range(4, 24))  # each new model its own version
