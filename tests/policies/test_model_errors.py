"""Every way a ModelModule can be misused or fed a bad model gives a clear error."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces
from policy_nets import FORMATS, OBS_SPACE, ActorCritic, mlp

from relayrl_gym.errors import ConfigError, MissingDependencyError, ModelError
from relayrl_gym.policies import ModelModule


@pytest.fixture
def saved(tmp_path):
    """A saved ONNX argmax policy for Discrete(2): (directory, metadata dict)."""
    path = tmp_path / "m"
    ModelModule.from_torch(mlp(2), OBS_SPACE, spaces.Discrete(2), path=path)
    return path, json.loads((path / "metadata.json").read_text())


def _rewrite(path, meta):
    (path / "metadata.json").write_text(json.dumps(meta))


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match=r"no model at .*nothing: expected a directory holding "
                                         r"metadata.json"):
        ModelModule.load_from_path(tmp_path / "nothing")


def test_directory_without_metadata(tmp_path):
    with pytest.raises(ModelError, match=r"has no metadata.json"):
        ModelModule.load_from_path(tmp_path)


def test_unknown_file_suffix(tmp_path):
    (tmp_path / "policy.bin").write_bytes(b"\0")
    with pytest.raises(ModelError, match=r"not a model: .*\.onnx, \.pt"):
        ModelModule.load_from_path(tmp_path / "policy.bin")


def test_metadata_names_a_missing_model_file(saved):
    path, _ = saved
    (path / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"names model_file 'model.onnx', which is not in"):
        ModelModule.load_from_path(path)


@pytest.mark.parametrize("name", ["model.onnx", "model.pt"])
def test_corrupt_model_file(saved, name, tmp_path):
    path, meta = saved
    (path / name).write_bytes(b"this is not a model" * 10)
    _rewrite(path, {**meta, "model_file": name, "model_type": name.split(".")[1]})
    kind = "an ONNX model" if name.endswith("onnx") else "a TorchScript module"
    with pytest.raises(ModelError, match=f"cannot load .*{name} as {kind}"):
        ModelModule.load_from_path(path)
    (tmp_path / name).write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelError, match=f"cannot load .*{name} as {kind}"):
        ModelModule.load_from_path(tmp_path / name)


def test_metadata_not_json(saved):
    path, _ = saved
    (path / "metadata.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"cannot read .*metadata.json: .*must be a JSON object"):
        ModelModule.load_from_path(path)


@pytest.mark.parametrize(("change", "match"), [
    ({"action_head": "softmax"}, r"action_head must be one of \('identity', 'argmax'"),
    ({"model_type": "tflite"}, "model_type must be one of"),
    ({"model_file": "../model.onnx"}, "must be a file name inside the model directory"),
    ({"version": -1}, "version must be an int >= 0"),
    ({"version": "3"}, "version must be an int >= 0"),
    ({"input_shape": [4]}, "input_shape must be a list starting with -1"),
    ({"input_dtype": "floaty"}, "input_dtype must be a numeric or bool numpy dtype name"),
    ({"input_dtype": "U5"}, "input_dtype must be a numeric or bool numpy dtype name"),
    ({"input_dtype": None}, "input_dtype must be a numeric or bool numpy dtype name"),
    ({"observation_space": "box"}, "observation_space is not a valid space description"),
    ({"model_file": 123}, "must be a file name inside the model directory"),
    ({"model_file": "metadata.json"}, "not metadata.json"),
    ({"schema_version": 2}, "schema_version 2; .* upgrade relayrl-gym"),
    ({"default_device": "tpu"}, "default_device must be one of"),
    ({"action_space": {"type": "Nope"}}, "action_space is not a valid space description"),
    ({"action_space": {"type": "Discrete", "n": 3, "start": 0, "dtype": "int64"}},
     r"output_shape \(batch, 2\) does not fit the action space Discrete\(3\) .* should be "
     r"\(batch, 3\)"),
    ({"observation_space": {"type": "Box", "shape": [5], "dtype": "float32",
                            "low": {"fill": 0.0}, "high": {"fill": 1.0}}},
     r"input_shape \(batch, 4\) does not fit the observation space"),
    ({"action_head": "identity"}, "action head 'identity' needs a Box action space"),
], ids=["head", "type", "traversal", "negative-version", "str-version", "no-batch-axis",
        "dtype", "str-dtype", "null-dtype", "str-space", "int-file", "metadata-as-model",
        "schema", "device", "space-json", "output-vs-action-space",
        "input-vs-obs-space", "head-vs-space"])
def test_invalid_metadata(saved, change, match):
    path, meta = saved
    _rewrite(path, {**meta, **change})
    with pytest.raises(ModelError, match=match):
        ModelModule.load_from_path(path)


def test_missing_metadata_keys(saved):
    path, meta = saved
    del meta["output_shape"], meta["action_head"]
    _rewrite(path, meta)
    with pytest.raises(ModelError, match="lacks output_shape, action_head"):
        ModelModule.load_from_path(path)


def test_unknown_metadata_key_warns(saved):
    path, meta = saved
    _rewrite(path, {**meta, "acton_head": "argmax"})
    with pytest.warns(UserWarning, match=r"ignoring unknown keys \['acton_head'\]"):
        ModelModule.load_from_path(path)


def test_metadata_consistent_but_not_the_model(saved):
    """Metadata for Discrete(3) beside a model with 2 outputs: caught by the forward pass."""
    path, meta = saved
    _rewrite(path, {**meta, "output_shape": [-1, 3],
                    "action_space": {"type": "Discrete", "n": 3, "start": 0, "dtype": "int64"}})
    with pytest.raises(ModelError, match=r"output has shape \(2, 2\) for a batch of 2 but the "
                                         r"metadata expects \(2, 3\)"):
        ModelModule.load_from_path(path)
    module = ModelModule.load_from_path(path, validate=False)
    with pytest.raises(ModelError, match="output has shape"):
        module.validate()


def test_metadata_input_not_the_models(saved):
    path, meta = saved
    box = {"type": "Box", "shape": [5], "dtype": "float32", "low": {"fill": 0.0},
           "high": {"fill": 1.0}}
    _rewrite(path, {**meta, "input_shape": [-1, 5], "observation_space": box})
    with pytest.raises(ModelError, match=r"takes inputs of shape \(None, 4\) .* metadata says"):
        ModelModule.load_from_path(path)
    _rewrite(path, {**meta, "input_dtype": "float64",
                    "observation_space": {**meta["observation_space"], "dtype": "float64"}})
    with pytest.raises(ModelError, match="takes float32 inputs but its metadata says"):
        ModelModule.load_from_path(path)


def test_metadata_extra_outputs_not_the_models(saved):
    path, meta = saved
    _rewrite(path, {**meta, "extra_outputs": ["value"]})
    with pytest.raises(ModelError, match="returns 1 outputs but its metadata expects 2"):
        ModelModule.load_from_path(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_step_bad_obs_shape(fmt, obs):
    module = ModelModule.from_torch(mlp(2), OBS_SPACE, spaces.Discrete(2), format=fmt)
    with pytest.raises(ModelError, match=r"obs has shape \(64, 5\), expected \(batch, 4\)"):
        module.step(np.zeros((64, 5)))
    with pytest.raises(ModelError, match=r"obs has shape \(4,\), .*add a batch axis, obs\[None\]"):
        module.step(obs[0])
    with pytest.raises(ModelError, match=r"obs has shape \(2, 4, 1\)"):
        module.step(obs[:2, :, None])


@pytest.mark.parametrize("head", ["argmax", "sample"])
def test_bad_masks(head, obs):
    module = ModelModule.from_torch(mlp(3), OBS_SPACE, spaces.Discrete(3), action_head=head)
    with pytest.raises(ModelError, match=r"mask has shape \(64, 2\), expected \(64, 3\)"):
        module.step(obs, np.ones((64, 2), bool))
    with pytest.raises(ModelError, match=r"mask has shape \(3,\), expected \(64, 3\)"):
        module.step(obs, np.ones(3, bool))
    mask = np.ones((64, 3), np.int8)
    mask[[1, 5]] = 0
    with pytest.raises(ModelError, match=r"mask rows \[1, 5\] allow no action"):
        module.step(obs, mask)


def test_mask_on_continuous_actions(obs):
    module = ModelModule.from_torch(mlp(2), OBS_SPACE, spaces.Box(-1, 1, (2,)))
    with pytest.raises(ModelError, match="mask was passed to a model with a continuous"):
        module.step(obs, np.ones((64, 2), bool))


def test_unknown_format_and_heads(tmp_path, saved):
    net = mlp(2)
    with pytest.raises(ConfigError, match="format must be one of onnx, torchscript, got 'tf'"):
        ModelModule.from_torch(net, OBS_SPACE, spaces.Discrete(2), format="tf")
    with pytest.raises(ConfigError, match="action_head must be one of identity, argmax, sample"):
        ModelModule.from_torch(net, OBS_SPACE, spaces.Discrete(2), action_head="greedy")
    with pytest.raises(ConfigError, match="action head 'identity' needs a Box action space"):
        ModelModule.from_torch(net, OBS_SPACE, spaces.Discrete(2), action_head="identity")
    with pytest.raises(ConfigError, match="supports Discrete and Box action spaces"):
        ModelModule.from_torch(net, OBS_SPACE, spaces.MultiDiscrete([2, 2]))
    with pytest.raises(ConfigError, match="action_head must be one of"):
        ModelModule.load_from_path(saved[0], action_head="greedy")
    with pytest.raises(ConfigError, match="device must be a DeviceType or one of"):
        ModelModule.load_from_path(saved[0], device="tpu")


def test_export_errors(obs):
    with pytest.raises(ConfigError, match="net returns 2 outputs but extra_outputs names 0"):
        ModelModule.from_torch(ActorCritic(2), OBS_SPACE, spaces.Discrete(2))
    with pytest.raises(ModelError, match=r"output_shape \(batch, 3\) does not fit the action "
                                         r"space Discrete\(2\)"):
        ModelModule.from_torch(mlp(3), OBS_SPACE, spaces.Discrete(2))

    class NaNs(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :2] * float("nan")

    with pytest.raises(ModelError, match=r"actions .* are not all in the action space"):
        ModelModule.from_torch(NaNs(), OBS_SPACE, spaces.Box(-1, 1, (2,)))
    with pytest.raises(ModelError, match=r"observation space Dict.* is not supported"):
        ModelModule.from_torch(mlp(2), spaces.Dict({"a": OBS_SPACE}), spaces.Discrete(2))


def test_fixed_batch_onnx_file(tmp_path):
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(mlp(2), (torch.zeros(1, 4),), tmp_path / "fixed.onnx", dynamo=False)
    with pytest.raises(ModelError, match=r"fixed batch size of 1; .*dynamic batch axis"):
        ModelModule.load_from_path(tmp_path / "fixed.onnx")


def test_pt_file_without_a_leading_linear_needs_the_observation_space(tmp_path):
    conv = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    conv(torch.zeros(2, 1, 8))
    with pytest.warns(DeprecationWarning):
        torch.jit.save(torch.jit.trace(conv, (torch.zeros(2, 1, 8),)), tmp_path / "conv.pt")
    with pytest.raises(ModelError, match=r"cannot infer the observation shape of conv.pt .*pass "
                                         r"observation_space="):
        ModelModule.load_from_path(tmp_path / "conv.pt")
    module = ModelModule.load_from_path(tmp_path / "conv.pt",
                                        observation_space=spaces.Box(-1, 1, (1, 8)))
    assert module.step(np.zeros((3, 1, 8)))[0].shape == (3,)
    with pytest.raises(ModelError, match=r"conv.pt failed on a batch of two zero observations "
                                         r"of shape \(4,\).*pass the right observation_space"):
        ModelModule.load_from_path(tmp_path / "conv.pt", observation_space=OBS_SPACE)


def test_bare_onnx_with_the_wrong_observation_space(tmp_path, saved):
    with pytest.raises(ModelError, match=r"takes inputs of shape \(None, 4\) .* does not fit"):
        ModelModule.load_from_path(saved[0] / "model.onnx",
                                   observation_space=spaces.Box(-1, 1, (5,)))


def test_torch_missing_for_pt(tmp_path, saved, monkeypatch, obs):
    net = mlp(2)
    ModelModule.from_torch(net, OBS_SPACE, spaces.Discrete(2), format="torchscript",
                           path=tmp_path / "pt")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(MissingDependencyError,
                       match=r"'torch' is not installed; .*pip install \"relayrl-gym\[torch\]\""):
        ModelModule.load_from_path(tmp_path / "pt")
    with pytest.raises(MissingDependencyError, match=r"relayrl-gym\[torch\]"):
        ModelModule.from_torch(net, OBS_SPACE, spaces.Discrete(2))
    module = ModelModule.load_from_path(saved[0])  # ONNX needs no torch
    assert module.step(obs)[0].shape == (64,)


def test_onnxruntime_missing(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install \"relayrl-gym\[onnx\]\""):
        ModelModule.load_from_path(saved[0])


def test_onnx_missing_for_export(monkeypatch):
    net = mlp(2)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependencyError, match=r"'onnx' is not installed.*\[onnx\]"):
        ModelModule.from_torch(net, OBS_SPACE, spaces.Discrete(2))
    assert ModelModule.from_torch(net, OBS_SPACE, spaces.Discrete(2), format="torchscript")


def test_from_sb3_rejects_other_objects():
    with pytest.raises(ConfigError, match="from_sb3 takes a Stable-Baselines3 model or policy, "
                                          "got Sequential; for a plain torch module use "
                                          "from_torch"):
        ModelModule.from_sb3(mlp(2))


def test_version_must_be_a_non_negative_int():
    module = ModelModule.from_torch(mlp(2), OBS_SPACE, spaces.Discrete(2))
    with pytest.raises(ModelError, match="version must be an int >= 0, got -2"):
        module.version = -2
    with pytest.raises(ModelError, match="version must be an int >= 0"):
        ModelModule.from_torch(mlp(2), OBS_SPACE, spaces.Discrete(2), version=1.5)  # type: ignore[arg-type]
