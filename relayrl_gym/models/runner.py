"""`PolicyRunner`: the one holder of a current policy and its version."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.policies.device import DeviceType
from relayrl_gym.policies.fitting import VersionCounter, fitting_model, model_data_type
from relayrl_gym.transport.inference.client import RemotePolicy, is_remote_policy

__all__ = ["PolicyRunner", "act_with"]


def act_with(model: Any, version: int, obs: Any, mask: Any = None
             ) -> tuple[Any, dict[str, Any], int]:
    """``(actions, data, version)`` from one batched call of ``model``: a served policy
    (`RemotePolicy`) answers with the version that computed the actions; a local one runs as
    ``version``."""
    if getattr(model, "remote", False):
        return model.step_versioned(obs, mask)
    actions, data = model.step(obs, mask)
    return actions, data, version


class PolicyRunner:
    """The ModelModule one role acts with (a wrapped env's copies, a client agent's actors, an
    agent of a game) and the version it runs as, swapped between steps by `update`.

    Every model it takes is checked first: the role's spaces and the extra outputs the run
    records (``data_type``, fixed by the first model). A model that does not fit is refused
    and the old one keeps running. Versions come from a `VersionCounter` (shared by runners
    whose rows go to one run): a model object keeps its version, a new one gets a higher one.

    A model may also be an inference server's URL (``zmq+tcp://HOST:PORT``): the runner then
    holds a `RemotePolicy` it opened (one per URL, however often it is given), closed by
    `close`. Rows acted by a served policy carry the version each answer names (`act_with`).
    """

    def __init__(self, model: Any, observation_space: spaces.Space | None = None,
                 action_space: spaces.Space | None = None, *, what: str = "model",
                 owner: str = "agent", device: DeviceType = DeviceType.DEFAULT,
                 data_type: pa.DataType | None = None,
                 versions: VersionCounter | None = None, replacing: bool = False) -> None:
        """Loads ``model`` (a ModelModule or a path to one) and checks it fits.

        Args:
            model: the first policy.
            observation_space: the role's observation space (None: the first model's).
            action_space: the role's action space (None: the first model's).
            what: how errors name the policy ("policy", "model", "policy of agent 'a'").
            owner: how errors name the role ("env", "agent").
            device: where a model given as a path is loaded.
            data_type: the extra outputs the run records (None: the first model's).
            versions: the version counter to share (None: one of its own).
            replacing: the model takes over from another policy (errors say the old one
                keeps running).

        Raises:
            ConfigError: the model does not fit.
        """
        self.what, self.owner, self.device = what, owner, device
        self._opened: list[RemotePolicy] = []
        module = self._fitting(model, observation_space, action_space, data_type,
                               replacing=replacing, device=device)
        #: The spaces every later model must have (the first model's when not given).
        self.observation_space = (observation_space if observation_space is not None
                                  else module.observation_space)
        self.action_space = action_space if action_space is not None else module.action_space
        #: The Arrow type of the policies' extra outputs (null: none).
        self.data_type: pa.DataType = (data_type if data_type is not None
                                       else model_data_type(module))
        self.versions = versions if versions is not None else VersionCounter()
        self._lock = threading.Lock()
        self.model = module
        self.version = self.versions.version_of(module)

    def _fitting(self, model: Any, observation_space: spaces.Space | None,
                 action_space: spaces.Space | None, data_type: pa.DataType | None, *,
                 replacing: bool, device: DeviceType) -> Any:
        opened = None
        if is_remote_policy(model):
            known = next((p for p in self._opened if p.url_given == model), None)
            model = known if known is not None else RemotePolicy(model)
            opened = None if known is not None else model
        try:
            module = fitting_model(model, observation_space, action_space, data_type,
                                   what=self.what, owner=self.owner, device=device,
                                   replacing=replacing)
        except BaseException:
            if opened is not None:
                opened.close()
            raise
        if opened is not None:
            self._opened.append(opened)
        return module

    @property
    def remote(self) -> bool:
        """Whether the current policy is served by an inference server (which follows new
        models itself: the actors' own model channel is not followed)."""
        return bool(getattr(self.model, "remote", False))

    def adopt(self, other: PolicyRunner) -> None:
        """Takes over the connections ``other`` opened (its model now runs here)."""
        self._opened.extend(other._opened)
        other._opened = []

    def close(self) -> None:
        """Closes the connections to inference servers this runner opened; idempotent."""
        opened, self._opened = self._opened, []
        for policy in opened:
            policy.close()

    def current(self) -> tuple[Any, int]:
        """The model and its version, read together (a swap may run on another thread)."""
        with self._lock:
            return self.model, self.version

    def checked(self, model: Any, device: DeviceType = DeviceType.DEFAULT) -> Any:
        """``model`` loaded (if a path, on ``device`` or the runner's) once it is known to
        fit in place of the current one; not swapped in."""
        return self._fitting(model, self.observation_space, self.action_space, self.data_type,
                             replacing=True,
                             device=device if device is not DeviceType.DEFAULT else self.device)

    def version_of(self, module: Any) -> int:
        """The version ``module`` runs as (for models run beside this one, e.g. by some
        actors only)."""
        with self._lock:
            return self.versions.version_of(module)

    def update(self, model: Any) -> int:
        """Checks ``model`` and swaps it in; returns the version it runs as."""
        return self.swap(self.checked(model))

    def swap(self, module: Any) -> int:
        """Swaps in ``module`` (already `checked`); returns the version it runs as."""
        with self._lock:
            self.version = self.versions.version_of(module)
            self.model = module
            return self.version
