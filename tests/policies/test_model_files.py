"""ModelModules on disk: save/load round trips, bare .onnx / .pt files, metadata defaults."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from gymnasium import spaces
from policy_nets import FORMATS, OBS_SPACE, ActorCritic, mlp, torch_out

from relayrl_gym.policies import ModelMetadata, ModelModule

SUFFIX = {"onnx": "model.onnx", "torchscript": "model.pt"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("space", [spaces.Discrete(3, start=1), spaces.Box(-0.5, 0.5, (3,))],
                         ids=str)
def test_save_load_round_trip(fmt, space, obs, tmp_path):
    net = ActorCritic(3, scale=3.0)
    module = ModelModule.from_torch(net, OBS_SPACE, space, format=fmt, version=7,
                                    extra_outputs=("value",))
    path = module.save(tmp_path / "policy")
    assert sorted(p.name for p in path.iterdir()) == sorted(["metadata.json", SUFFIX[fmt]])
    loaded = ModelModule.load_from_path(path)
    assert loaded.metadata == module.metadata and loaded.version == 7
    assert loaded.model_bytes() == module.model_bytes()
    (a1, d1), (a2, d2) = module.step(obs), loaded.step(obs)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(d1["value"], d2["value"])
    # saved again, to itself and elsewhere, with a new version
    loaded.version = 8
    loaded.save(path)
    assert ModelModule.load_from_path(path).version == 8
    again = ModelModule.load_from_path(loaded.save(tmp_path / "copy"))
    assert again.metadata == loaded.metadata
    assert not [p for p in path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_from_torch_path_writes_the_directory(obs, tmp_path):
    module = ModelModule.from_torch(mlp(2), OBS_SPACE, spaces.Discrete(2), path=tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["model_type"] == "onnx" and meta["input_shape"] == [-1, 4]
    assert meta["output_shape"] == [-1, 2] and meta["action_head"] == "argmax"
    assert meta["version"] == 0 and meta["default_device"] == "cpu"
    assert meta["observation_space"]["type"] == "Box"
    np.testing.assert_array_equal(
        ModelModule.load_from_path(tmp_path / "m").step(obs)[0], module.step(obs)[0])


def test_load_with_head_override(obs, tmp_path):
    ModelModule.from_torch(mlp(3), OBS_SPACE, spaces.Discrete(3), path=tmp_path / "m")
    sampled = ModelModule.load_from_path(tmp_path / "m", action_head="sample")
    _, data = sampled.step(obs, rng=np.random.default_rng(0))
    assert sampled.action_head == "sample" and data["log_prob"].shape == (64,)


def test_metadata_without_spaces_gets_defaults(obs, tmp_path):
    ModelModule.from_torch(mlp(3), OBS_SPACE, spaces.Discrete(3), path=tmp_path / "m")
    meta_path = tmp_path / "m" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    for key in ("observation_space", "action_space", "schema_version", "version",
                "default_device", "extra_outputs"):
        del meta[key]
    meta_path.write_text(json.dumps(meta))
    module = ModelModule.load_from_path(tmp_path / "m")
    assert module.action_space == spaces.Discrete(3)
    assert module.observation_space == spaces.Box(-np.inf, np.inf, (4,), np.float32)
    assert module.version == 0


def _onnx_file(net, path, output_names=("out",), dynamic=True):
    names = ["obs", *output_names]
    torch.onnx.export(net, (torch.zeros(2, 4),), path, input_names=["obs"],
                      output_names=list(output_names), dynamo=False,
                      dynamic_axes={n: {0: "batch"} for n in names} if dynamic else None)


def _pt_file(net, path):
    torch.jit.save(torch.jit.trace(net, (torch.zeros(2, 4),)), path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("write", [_onnx_file, _pt_file], ids=["onnx", "pt"])
def test_bare_file_discrete_inferred(write, obs, tmp_path):
    net = mlp(3)
    path = tmp_path / ("policy.onnx" if write is _onnx_file else "policy.pt")
    write(net, path)
    module = ModelModule.load_from_path(path)
    assert module.action_head == "argmax" and module.action_space == spaces.Discrete(3)
    assert module.observation_space.shape == (4,) and module.metadata.model_file == path.name
    np.testing.assert_array_equal(module.step(obs)[0], torch_out(net, obs).argmax(axis=1))
    # saved as a directory with inferred metadata, loaded back the same
    loaded = ModelModule.load_from_path(module.save(tmp_path / "dir"))
    assert loaded.metadata == module.metadata


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("write", [_onnx_file, _pt_file], ids=["onnx", "pt"])
def test_bare_file_with_explicit_spaces(write, obs, tmp_path):
    net = mlp(2, scale=20.0)
    path = tmp_path / ("policy.onnx" if write is _onnx_file else "policy.pt")
    write(net, path)
    space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    module = ModelModule.load_from_path(path, observation_space=OBS_SPACE, action_space=space)
    assert module.action_head == "identity" and module.observation_space == OBS_SPACE
    np.testing.assert_allclose(module.step(obs)[0], np.clip(torch_out(net, obs), -1, 1),
                               atol=1e-5)
    # a 2-column output with no action space reads as logits
    assert ModelModule.load_from_path(path).action_head == "argmax"
    assert ModelModule.load_from_path(path, action_head="identity").action_space.shape == (2,)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bare_onnx_single_output_column_is_identity(tmp_path):
    _onnx_file(mlp(1), tmp_path / "p.onnx")
    module = ModelModule.load_from_path(tmp_path / "p.onnx")
    assert module.action_head == "identity" and module.action_space.shape == (1,)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bare_onnx_extra_outputs_named_by_the_model(obs, tmp_path):
    net = ActorCritic(3)
    _onnx_file(net, tmp_path / "ac.onnx", output_names=("logits", "value"))
    module = ModelModule.load_from_path(tmp_path / "ac.onnx")
    assert module.metadata.extra_outputs == ("value",)
    _, data = module.step(obs)
    assert data["value"].shape == (64,)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bare_pt_in_memory_bytes_round_trip(obs, tmp_path):
    buffer = io.BytesIO()
    net = mlp(3)
    torch.jit.save(torch.jit.trace(net, (torch.zeros(2, 4),)), buffer)
    (tmp_path / "p.pt").write_bytes(buffer.getvalue())
    module = ModelModule.load_from_path(tmp_path / "p.pt", "cpu")
    assert module.model_bytes() == buffer.getvalue()


def test_metadata_json_round_trip():
    meta = ModelModule.from_torch(mlp(2), OBS_SPACE, spaces.Discrete(2)).metadata
    assert ModelMetadata.from_json(json.loads(json.dumps(meta.to_json()))) == meta
