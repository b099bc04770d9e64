"""Regressions found in review: non-finite logits, masks over -inf logits, in-place models,
file modes of saved models."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from gymnasium import spaces

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from relayrl_gym.errors import ModelError  # noqa: E402
from relayrl_gym.policies import ModelModule  # noqa: E402
from relayrl_gym.policies.heads import ArgmaxHead, SampleHead  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("head", [ArgmaxHead, SampleHead], ids=["argmax", "sample"])
def test_non_finite_logits_name_no_action(head):
    choose = head(spaces.Discrete(2))
    with pytest.raises(ModelError, match=r"rows \[0\] are NaN, \+inf, or -inf"):
        choose(np.array([[0.0, -np.inf]]), np.array([[0, 1]]), RNG)  # only -inf allowed
    with pytest.raises(ModelError, match=r"rows \[1\]"):
        choose(np.array([[0.0, 1.0], [np.nan, 0.0]]), None, RNG)
    with pytest.raises(ModelError, match=r"rows \[0\]"):
        choose(np.array([[np.inf, 0.0]]), None, RNG)
    actions, _ = choose(np.array([[5.0, 1.0]]), np.array([[0, 1]]), RNG)
    assert actions.tolist() == [1]  # the mask wins over a larger logit


def test_nan_observations_are_an_error_not_a_silent_action(tmp_path):
    module = ModelModule.from_torch(torch.nn.Linear(4, 2), spaces.Box(-1, 1, (4,)),
                                    spaces.Discrete(2), path=tmp_path / "pi", format="onnx")
    with pytest.raises(ModelError, match="NaN in, NaN out"):
        module.step(np.full((1, 4), np.nan, np.float32))


def test_onnx_sessions_use_the_configured_cpu_threads(tmp_path, monkeypatch):
    from relayrl_gym.policies.onnx_backend import CPU_THREADS_ENV

    net = torch.nn.Linear(4, 2)
    module = ModelModule.from_torch(net, spaces.Box(-1, 1, (4,)), spaces.Discrete(2),
                                    path=tmp_path / "pi", format="onnx")
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    expected = net(torch.from_numpy(obs)).argmax(1).numpy()
    options = module._backend._session.get_session_options()
    assert options.intra_op_num_threads == 1  # the default for a policy on the CPU
    assert (module.step(obs)[0] == expected).all()
    monkeypatch.setenv(CPU_THREADS_ENV, "2")
    two = ModelModule.load_from_path(tmp_path / "pi")
    assert two._backend._session.get_session_options().intra_op_num_threads == 2
    assert (two.step(obs)[0] == expected).all()
    monkeypatch.setenv(CPU_THREADS_ENV, " ")  # set but empty: the default
    assert ModelModule.load_from_path(tmp_path / "pi")._backend._session.get_session_options(
    ).intra_op_num_threads == 1
    for bad in ("many", "-1", "2_0", "99999"):
        monkeypatch.setenv(CPU_THREADS_ENV, bad)
        with pytest.raises(ModelError, match=f"{CPU_THREADS_ENV} must be a whole number of "
                                             f"threads from 0 to 1024 .*got '{bad}'"):
            ModelModule.load_from_path(tmp_path / "pi")


def test_a_changed_session_core_call_falls_back_to_the_public_run(tmp_path):
    net = torch.nn.Linear(4, 2)
    module = ModelModule.from_torch(net, spaces.Box(-1, 1, (4,)), spaces.Discrete(2),
                                    path=tmp_path / "pi", format="onnx")

    class OtherCore:  # what a future onnxruntime with another core signature would do
        def run(self, *args):
            raise TypeError("run(): incompatible function arguments")

    module._backend._core = OtherCore()
    obs = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    expected = net(torch.from_numpy(obs)).argmax(1).numpy()
    assert (module.step(obs)[0] == expected).all()  # the public run answered
    assert (module.step(obs)[0] == expected).all()  # and keeps answering


def test_a_model_working_in_place_leaves_the_callers_observations_alone(tmp_path):
    class InPlace(torch.nn.Module):
        def forward(self, x):
            return x.mul_(0.5)[:, :2]

    module = ModelModule.from_torch(InPlace(), spaces.Box(-1, 1, (4,)), spaces.Discrete(2),
                                    path=tmp_path / "pt", format="torchscript")
    obs = np.ones((2, 4), np.float32)
    module.step(obs)
    assert (obs == 1).all()


def test_saved_models_are_readable_by_others(tmp_path):
    ModelModule.from_torch(torch.nn.Linear(4, 2), spaces.Box(-1, 1, (4,)), spaces.Discrete(2),
                           path=tmp_path / "pi", format="onnx")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.onnx", "metadata.json"):
        mode = stat.S_IMODE((tmp_path / "pi" / name).stat().st_mode)
        assert mode == 0o666 & ~umask
