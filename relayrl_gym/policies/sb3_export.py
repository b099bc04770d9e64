"""From a Stable-Baselines3 model to a ModelModule: train with SB3, deploy in actors.

The SB3 policy is wrapped in a small ``nn.Module`` that computes what ``predict`` decides from,
then exported with ``export_torch``:

- PPO / A2C (``ActorCriticPolicy``): Discrete -> the action logits (``argmax`` head, or
  ``sample`` with ``deterministic=False``, recording ``log_prob``); Box -> the mean action
  (``identity`` head: clipped to the bounds as ``predict`` does; squashed gSDE means are
  tanh'ed and rescaled). The critic's value is the extra output ``value``.
- DQN: the Q-values (``argmax`` head).
- SAC / TD3 (and DDPG): the deterministic action, tanh-squashed and rescaled to the bounds.

Observations go through the policy's own preprocessing (``extract_features``: float cast,
image scaling, one-hot), so the exported model takes raw observations as the env gives them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from gymnasium import spaces

from relayrl_gym.errors import ConfigError
from relayrl_gym.policies.backends import import_optional
from relayrl_gym.policies.device import DeviceType
from relayrl_gym.policies.export import export_torch

if TYPE_CHECKING:
    from relayrl_gym.policies.module import ModelModule

__all__ = ["export_sb3", "sb3_policy_net"]


def _unscale(torch: Any, action_space: spaces.Box, device: Any) -> tuple[Any, Any]:
    low = torch.as_tensor(action_space.low, dtype=torch.float32, device=device)
    return low, torch.as_tensor(action_space.high, dtype=torch.float32, device=device) - low


def sb3_policy_net(policy: Any, deterministic: bool = True) -> tuple[Any, str, tuple[str, ...]]:
    """``(net, action_head, extra_outputs)`` for an SB3 policy; see the module docstring."""
    torch: Any = import_optional("torch", "sb3")
    import_optional("stable_baselines3", "sb3")
    from stable_baselines3.common import distributions as dist
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy
    from stable_baselines3.sac.policies import SACPolicy
    from stable_baselines3.td3.policies import TD3Policy

    action_space = policy.action_space
    continuous = isinstance(action_space, spaces.Box)
    if continuous and not deterministic:
        raise ConfigError("stochastic continuous actions are not supported yet: export with "
                          "deterministic=True (the mean action)")
    device = policy.device

    if isinstance(policy, ActorCriticPolicy):
        kinds = (dist.CategoricalDistribution, dist.DiagGaussianDistribution,
                 dist.StateDependentNoiseDistribution)
        if not isinstance(policy.action_dist, kinds):
            kind = type(policy.action_dist).__name__
            raise ConfigError(f"cannot export an SB3 policy with {kind}; supported: Discrete "
                              "and Box action spaces")
        squash = continuous and policy.squash_output
        low, span = _unscale(torch, action_space, device) if squash else (None, None)

        class ActorCritic(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.policy = policy

            def forward(self, obs: Any) -> Any:
                features = self.policy.extract_features(obs)
                if self.policy.share_features_extractor:
                    latent_pi, latent_vf = self.policy.mlp_extractor(features)
                else:
                    latent_pi = self.policy.mlp_extractor.forward_actor(features[0])
                    latent_vf = self.policy.mlp_extractor.forward_critic(features[1])
                out = self.policy.action_net(latent_pi)
                if squash:
                    out = low + 0.5 * (torch.tanh(out) + 1.0) * span
                return out, self.policy.value_net(latent_vf)

        head = "identity" if continuous else ("argmax" if deterministic else "sample")
        return ActorCritic(), head, ("value",)

    if isinstance(policy, DQNPolicy):
        if not deterministic:
            raise ConfigError("a DQN policy acts greedily on its Q-values: export it with "
                              "deterministic=True (epsilon-greedy exploration is not exported)")

        class QValues(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.q_net = policy.q_net

            def forward(self, obs: Any) -> Any:
                return self.q_net(obs)

        return QValues(), "argmax", ()

    if isinstance(policy, (SACPolicy, TD3Policy)):
        low, span = _unscale(torch, action_space, device)
        sac = isinstance(policy, SACPolicy)

        class SquashedActor(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.actor = policy.actor

            def forward(self, obs: Any) -> Any:
                # SAC's mode is tanh(mean); TD3's actor ends in tanh already.
                action = (torch.tanh(self.actor.get_action_dist_params(obs)[0]) if sac
                          else self.actor(obs))
                return low + 0.5 * (action + 1.0) * span

        return SquashedActor(), "identity", ()

    raise ConfigError(f"cannot export {type(policy).__name__}: from_sb3 supports PPO, A2C, DQN, "
                      "SAC, TD3 and DDPG policies (ActorCriticPolicy, DQNPolicy, SACPolicy, "
                      "TD3Policy)")


def export_sb3(
    model: Any,
    *,
    path: str | os.PathLike[str] | None = None,
    format: str = "onnx",
    deterministic: bool = True,
    version: int = 0,
    device: DeviceType | str = DeviceType.DEFAULT,
    module_class: type[ModelModule],
) -> ModelModule:
    """Exports an SB3 model (or its ``.policy``) as a ModelModule.

    Its ``step(obs)`` gives the actions of ``model.predict(obs, deterministic=True)``.

    Args:
        model: a trained SB3 algorithm (PPO, A2C, DQN, SAC, TD3, DDPG) or its policy.
        path: if given, the directory the module is saved to.
        format: ``"onnx"`` or ``"torchscript"``.
        deterministic: True for the actions ``predict(..., deterministic=True)`` takes; False
            (discrete actor-critic policies only) samples from the logits and records
            ``log_prob``.
        version: the policy version the module reports.
        device: the module's ``default_device`` and where it runs (``DEFAULT``: the CPU).
        module_class: the ModelModule class to build (`ModelModule.from_sb3` passes its own).

    Raises:
        ConfigError: the policy kind, its action distribution or the options are not supported.
        MissingDependencyError: stable-baselines3 / torch (``sb3`` extra) are not installed.
    """
    import_optional("stable_baselines3", "sb3")
    from stable_baselines3.common.policies import BasePolicy

    policy = getattr(model, "policy", model)
    if not isinstance(policy, BasePolicy):
        raise ConfigError(f"from_sb3 takes a Stable-Baselines3 model or policy, got "
                          f"{type(model).__name__}; for a plain torch module use from_torch")
    training = policy.training
    policy.set_training_mode(False)
    try:
        net, head, extra = sb3_policy_net(policy, deterministic)
        return export_torch(net, policy.observation_space, policy.action_space, path=path,
                            format=format, action_head=head, extra_outputs=extra,
                            version=version, device=device, cast_input=False,
                            module_class=module_class)
    finally:
        policy.set_training_mode(training)
