"""ModelModule.step: the actions and policy outputs of ONNX and TorchScript exports agree with
the torch module they came from."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import torch
from gymnasium import spaces
from policy_nets import FORMATS, OBS_SPACE, ActorCritic, mlp, torch_out

from relayrl_gym.policies import ModelModule
from relayrl_gym.policies.device import DeviceType

DISCRETE = [spaces.Discrete(3), spaces.Discrete(3, start=-1), spaces.Discrete(5, start=10)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("space", DISCRETE, ids=str)
def test_argmax_equals_torch(fmt, space, obs):
    net = mlp(int(space.n))
    module = ModelModule.from_torch(net, OBS_SPACE, space, format=fmt)
    actions, data = module.step(obs)
    expected = torch_out(net, obs).argmax(axis=1) + space.start
    np.testing.assert_array_equal(actions, expected)
    assert actions.dtype == space.dtype and data == {}
    assert all(space.contains(a) for a in actions)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_actions_clipped_to_bounds(fmt, dtype, obs):
    space = spaces.Box(np.array([-1.0, 0.0], dtype), np.array([1.0, 0.5], dtype), dtype=dtype)
    net = mlp(2, scale=20.0)  # large outputs: most rows hit a bound
    module = ModelModule.from_torch(net, OBS_SPACE, space, format=fmt)
    assert module.action_head == "identity"
    actions, data = module.step(obs)
    raw = torch_out(net, obs)
    assert (raw < space.low).any() and (raw > space.high).any()
    np.testing.assert_allclose(actions, np.clip(raw, space.low, space.high), atol=1e-5)
    assert actions.dtype == dtype and actions.shape == (64, 2) and data == {}
    assert all(space.contains(a) for a in actions)


@pytest.mark.parametrize("fmt", FORMATS)
def test_box_action_shape_2d(fmt, obs):
    space = spaces.Box(-1.0, 1.0, (2, 3), np.float32)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x).reshape(-1, 2, 3)

    module = ModelModule.from_torch(Net(), OBS_SPACE, space, format=fmt)
    actions, _ = module.step(obs)
    assert actions.shape == (64, 2, 3) and all(space.contains(a) for a in actions)


def test_sample_same_seed_same_actions_across_backends(obs):
    space = spaces.Discrete(4, start=1)
    net = mlp(4)
    onnx = ModelModule.from_torch(net, OBS_SPACE, space, action_head="sample")
    script = ModelModule.from_torch(net, OBS_SPACE, space, format="torchscript",
                                    action_head="sample")
    a1, d1 = onnx.step(obs, rng=np.random.default_rng(7))
    a2, d2 = script.step(obs, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a1, a2)
    logits = torch.as_tensor(torch_out(net, obs))
    expected = torch.distributions.Categorical(logits=logits).log_prob(torch.as_tensor(a1 - 1))
    np.testing.assert_allclose(d1["log_prob"], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(d2["log_prob"], expected.numpy(), atol=1e-5)
    assert d1["log_prob"].shape == (64,) and d1["log_prob"].dtype == np.float32
    # seed() seeds the module's own generator
    onnx.seed(3)
    first = onnx.step(obs)[0]
    onnx.seed(3)
    np.testing.assert_array_equal(onnx.step(obs)[0], first)


def test_sample_follows_softmax():
    net = mlp(3, scale=0.5)
    module = ModelModule.from_torch(net, OBS_SPACE, spaces.Discrete(3), action_head="sample")
    row = np.full((20_000, 4), 0.5, np.float32)
    actions, _ = module.step(row, rng=np.random.default_rng(0))
    probs = torch.softmax(torch.as_tensor(torch_out(net, row[:1])), dim=1).numpy()[0]
    np.testing.assert_allclose(np.bincount(actions, minlength=3) / len(row), probs, atol=0.015)


MASK_DTYPES = [np.bool_, np.int8, np.uint8, np.int64, np.float32]


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("fmt", FORMATS)
def test_masks(mask_dtype, fmt, obs):
    space = spaces.Discrete(4, start=2)
    net = mlp(4)
    allowed = np.random.default_rng(1).random((64, 4)) < 0.5
    allowed[np.arange(64), np.arange(64) % 4] = True  # at least one allowed per row
    mask = allowed.astype(mask_dtype)
    logits = torch_out(net, obs)
    masked = np.where(allowed, logits, -np.inf)

    argmax = ModelModule.from_torch(net, OBS_SPACE, space, format=fmt)
    actions, _ = argmax.step(obs, mask)
    np.testing.assert_array_equal(actions, masked.argmax(axis=1) + 2)

    sample = ModelModule.from_torch(net, OBS_SPACE, space, format=fmt, action_head="sample")
    for seed in range(5):
        actions, data = sample.step(obs, mask, rng=np.random.default_rng(seed))
        assert allowed[np.arange(64), actions - 2].all()
        dist = torch.distributions.Categorical(logits=torch.as_tensor(masked))
        expected = dist.log_prob(torch.as_tensor(actions - 2)).numpy()
        np.testing.assert_allclose(data["log_prob"], expected, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_extra_outputs_land_in_data(fmt, obs):
    net = ActorCritic(3)
    module = ModelModule.from_torch(net, OBS_SPACE, spaces.Discrete(3), format=fmt,
                                    action_head="sample", extra_outputs=("value",))
    _, data = module.step(obs, rng=np.random.default_rng(0))
    with torch.no_grad():
        _, value = net(torch.as_tensor(obs))
    assert set(data) == {"log_prob", "value"}
    assert data["value"].shape == (64,)
    np.testing.assert_allclose(data["value"], value.numpy()[:, 0], atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_obs_cast_to_input_dtype(fmt, obs):
    net = mlp(2)
    module = ModelModule.from_torch(net, spaces.Box(-3.0, 3.0, (4,), np.float64),
                                    spaces.Discrete(2), format=fmt)
    assert module.metadata.input_dtype == "float64"  # cast to float32 inside the graph
    expected = torch_out(net, obs).argmax(axis=1)
    for batch in (obs.astype(np.float64), obs, obs.tolist(), np.asfortranarray(obs)):
        np.testing.assert_array_equal(module.step(batch)[0], expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_discrete_observations(fmt):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(6, 8), torch.nn.Linear(8, 3))
    module = ModelModule.from_torch(net, spaces.Discrete(6), spaces.Discrete(3), format=fmt)
    states = np.arange(6)
    with torch.no_grad():
        expected = net(torch.as_tensor(states)).argmax(dim=1).numpy()
    np.testing.assert_array_equal(module.step(states)[0], expected)


def test_concurrent_steps_give_the_same_actions(obs):
    module = ModelModule.from_torch(mlp(3), OBS_SPACE, spaces.Discrete(3))
    expected = module.step(obs)[0]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: module.step(obs)[0], range(64)))
    assert all((r == expected).all() for r in results)


def test_version_and_attributes():
    module = ModelModule.from_torch(mlp(2), OBS_SPACE, spaces.Discrete(2), version=4)
    assert module.version == 4 and module.metadata.version == 4
    module.version = 5
    assert module.version == 5
    assert module.device is DeviceType.CPU
    assert module.observation_space == OBS_SPACE and module.action_space == spaces.Discrete(2)
    assert "version=5" in repr(module)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unavailable_cuda_falls_back_to_cpu(fmt, obs, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    path = tmp_path / "m"
    with pytest.warns(UserWarning, match="CUDA was asked for .* running on the CPU"):
        module = ModelModule.from_torch(mlp(2), OBS_SPACE, spaces.Discrete(2), format=fmt,
                                        path=path, device="cuda")
    assert module.device is DeviceType.CPU and module.metadata.default_device == "cuda"
    with pytest.warns(UserWarning, match="CUDA was asked for"):
        loaded = ModelModule.load_from_path(path)  # default_device "cuda" from the metadata
    assert loaded.device is DeviceType.CPU
    np.testing.assert_array_equal(loaded.step(obs)[0], module.step(obs)[0])
    with pytest.warns(UserWarning, match="MPS was asked for"):
        assert ModelModule.load_from_path(path, DeviceType.MPS).device is DeviceType.CPU


@pytest.mark.parametrize("fmt", FORMATS)
def test_huge_box_bounds_do_not_break_validation(fmt):
    """CartPole's velocity bounds are float32's max: probing with them would overflow to NaN."""
    cartpole_obs = spaces.Box(np.array([-4.8, -3.4e38, -0.42, -3.4e38], np.float32),
                              np.array([4.8, 3.4e38, 0.42, 3.4e38], np.float32))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    module = ModelModule.from_torch(net, cartpole_obs, spaces.Box(-1.0, 1.0, (1,)), format=fmt)
    assert module.step(np.zeros((2, 4)))[0].shape == (2, 1)
