"""ModelModule: an exported policy (ONNX or TorchScript) that turns observation batches into
actions."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from relayrl_gym.errors import ConfigError, ModelError
from relayrl_gym.policies.backends import ModelBackend, resolve_device
from relayrl_gym.policies.device import DeviceType
from relayrl_gym.policies.export import export_torch
from relayrl_gym.policies.heads import HEADS, make_head
from relayrl_gym.policies.infer import MODEL_SUFFIXES, infer_metadata, probe_batch
from relayrl_gym.policies.loading import load_backend
from relayrl_gym.policies.metadata import METADATA_FILE, ModelMetadata
from relayrl_gym.policies.sb3_export import export_sb3

if TYPE_CHECKING:
    from gymnasium import spaces

__all__ = ["ModelModule", "obs_shape_error"]


class ModelModule:
    """An exported policy: batched observations in, valid actions (and policy outputs) out.

    A ModelModule runs an ONNX model (onnxruntime) or a TorchScript module (torch) described by
    a ``ModelMetadata``; ``step`` casts the observations to the model's input dtype, runs the
    model once for the whole batch and reads actions with the metadata's action head, so every
    action it returns belongs to ``action_space``. It is safe to call ``step`` from several
    threads at once. Build one with ``load_from_path``, ``from_torch`` or ``from_sb3``; write it
    with ``save``.

    >>> import torch
    >>> from gymnasium import spaces
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    >>> module = ModelModule.from_torch(net, spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    >>> actions, data = module.step(np.zeros((3, 4)))
    >>> actions.shape, actions.dtype, data, module.version
    ((3,), dtype('int64'), {}, 0)
    """

    def __init__(
        self, backend: ModelBackend, metadata: ModelMetadata, model: bytes
    ) -> None:
        """Args:
        backend: the loaded model.
        metadata: what the model takes and gives (checked against it by ``validate``).
        model: the serialized model the backend loaded (``model_bytes``; written by ``save``).
        """
        self._backend = backend
        self._model = model
        self._rng = np.random.default_rng()
        self._set_metadata(metadata)

    def _set_metadata(self, metadata: ModelMetadata) -> None:
        self._metadata = metadata
        self._head = make_head(metadata.action_head, metadata.action_space)
        self._in_dtype = np.dtype(metadata.input_dtype)
        self._row_shape = metadata.row_shape
        self._ndim = len(metadata.input_shape)
        self._extra = metadata.extra_outputs
        self._run = self._backend.run

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def load_from_path(
        cls,
        path: str | os.PathLike[str],
        device: DeviceType | str = DeviceType.DEFAULT,
        *,
        observation_space: spaces.Space | None = None,
        action_space: spaces.Space | None = None,
        action_head: str | None = None,
        validate: bool = True,
    ) -> ModelModule:
        """Loads a model directory (``metadata.json`` + model file) or a bare model file.

        Args:
            path: a directory written by ``save``, or a ``.onnx`` / ``.pt`` file whose metadata
                is inferred (see ``relayrl_gym.policies.infer``).
            device: where to run the model; ``DEFAULT`` is the metadata's ``default_device``.
                CUDA or MPS that the runtime cannot use fall back to the CPU with a warning.
            observation_space: the observation space, overriding the metadata's (or the
                inferred one of a bare file).
            action_space: the action space, overriding the metadata's (or the inferred one).
            action_head: ``"identity"``, ``"argmax"`` or ``"sample"``, overriding the
                metadata's (e.g. ``"sample"`` to explore with a policy saved as ``"argmax"``).
            validate: run ``validate()`` (one forward pass) before returning.

        Raises:
            ModelError: the path holds no model, the model or metadata cannot be read, or they
                do not fit each other.
            MissingDependencyError: onnxruntime (``onnx`` extra) or torch (``torch`` extra) is
                not installed.
        """
        if action_head is not None and action_head not in HEADS:
            raise ConfigError(f"action_head must be one of {', '.join(HEADS)}, got "
                              f"{action_head!r}")
        root = Path(path)
        if root.is_dir():
            metadata = ModelMetadata.read(root)
            overrides: dict[str, Any] = {key: value for key, value in (
                ("observation_space", observation_space), ("action_space", action_space),
                ("action_head", action_head)) if value is not None}
            if overrides:
                metadata = dataclasses.replace(metadata, **overrides)
            model_file = root / metadata.model_file
            if not model_file.is_file():
                raise ModelError(f"{root / METADATA_FILE} names model_file "
                                 f"{metadata.model_file!r}, which is not in {root}")
            blob = _read(model_file)
            backend = load_backend(metadata.model_type, blob,
                                   resolve_device(device, metadata.default_device),
                                   str(model_file))
        elif root.is_file():
            model_type = MODEL_SUFFIXES.get(root.suffix.lower())
            if model_type is None:
                raise ModelError(f"{root} is not a model: expected a directory with "
                                 f"metadata.json or a file ending in {', '.join(MODEL_SUFFIXES)}")
            blob = _read(root)
            backend = load_backend(model_type, blob, resolve_device(device, "cpu"), str(root))
            metadata = infer_metadata(
                root, backend, observation_space=observation_space, action_space=action_space,
                action_head=action_head)
        else:
            raise ModelError(f"no model at {root}: expected a directory holding metadata.json "
                             f"and the model file, or a {' / '.join(MODEL_SUFFIXES)} file")
        if backend.fallback is not None:
            warnings.warn(backend.fallback, stacklevel=2)
        module = cls(backend, metadata, blob)
        if validate:
            module.validate()
        return module

    @classmethod
    def from_torch(cls, net: Any, observation_space: spaces.Space, action_space: spaces.Space,
                   path: str | os.PathLike[str] | None = None, **kwargs: Any) -> ModelModule:
        """Exports a torch ``nn.Module``; see ``relayrl_gym.policies.export.export_torch``."""
        return export_torch(net, observation_space, action_space, path=path, module_class=cls,
                            **kwargs)

    @classmethod
    def from_sb3(cls, model: Any, path: str | os.PathLike[str] | None = None,
                 **kwargs: Any) -> ModelModule:
        """Exports an SB3 model or policy; see ``relayrl_gym.policies.sb3_export.export_sb3``."""
        return export_sb3(model, path=path, module_class=cls, **kwargs)

    # -- acting ---------------------------------------------------------------------------------

    def step(
        self, obs: Any, mask: Any = None, *, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Acts on a batch of observations.

        Args:
            obs: observations with a leading batch axis, ``(batch, *observation_shape)``; cast
                to the model's input dtype.
            mask: for discrete action heads, ``(batch, n)`` allowed actions (bool, or 0/1 of
                any dtype); masked-out actions are never chosen and get no probability.
            rng: the generator the ``"sample"`` head draws from; by default the module's own,
                seeded by ``seed``.

        Returns:
            ``(actions, data)``: one action per row, members of ``action_space``, in its dtype;
            ``data`` maps ``log_prob`` (``"sample"`` head) and each extra output (e.g.
            ``value``) to an array with one entry per row; empty when there is nothing extra.
        """
        x = np.asarray(obs, dtype=self._in_dtype)
        if x.ndim != self._ndim or x.shape[1:] != self._row_shape:
            raise self._obs_error(x)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        outputs = self._run(x)
        actions, data = self._head(outputs[0], mask, self._rng if rng is None else rng)
        if self._extra:
            for name, value in zip(self._extra, outputs[1:]):
                data[name] = value[:, 0] if value.ndim == 2 and value.shape[1] == 1 else value
        return actions, data

    def step_many(
        self, obs: Any, sizes: Sequence[int], masks: Sequence[Any] | None = None,
        rngs: Sequence[np.random.Generator | None] | None = None,
    ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Acts for several requests with one model call: ``obs`` holds their rows one after
        the other (``sizes[i]`` rows for request ``i``); each request's actions are read with
        its own mask and generator, so the answer to a request is what ``step`` gives for its
        rows alone (``rng=rngs[i]``; None: the module's own generator).

        >>> import torch
        >>> from gymnasium import spaces
        >>> net = torch.nn.Linear(4, 2)
        >>> module = ModelModule.from_torch(net, spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
        >>> obs = np.random.default_rng(0).uniform(-1, 1, (5, 4))
        >>> parts = module.step_many(obs, [2, 3])
        >>> [a.tolist() for a, _ in parts] == [module.step(obs[:2])[0].tolist(),
        ...                                    module.step(obs[2:])[0].tolist()]
        True
        """
        x = np.asarray(obs, dtype=self._in_dtype)
        if x.ndim != self._ndim or x.shape[1:] != self._row_shape:
            raise self._obs_error(x)
        if sum(sizes) != len(x):
            raise ModelError(f"`sizes` add up to {sum(sizes)} rows; obs has {len(x)}")
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        outputs = self._run(x)
        extras = [value[:, 0] if value.ndim == 2 and value.shape[1] == 1 else value
                  for value in outputs[1:]]
        given = [m for m in masks if m is not None] if masks is not None else []
        if not (rngs and any(r is not None for r in rngs)) and len(given) in (0, len(sizes)):
            # The common case: one head call for the whole batch, then cut it.
            mask = np.concatenate([np.asarray(m) for m in given]) if given else None
            actions, data = self._head(outputs[0], mask, self._rng)
            bounds = np.cumsum([0, *sizes])
            parts = []
            for start, end in itertools.pairwise(bounds):
                part = {k: v[start:end] for k, v in data.items()}
                part.update((n, v[start:end]) for n, v in zip(self._extra, extras))
                parts.append((actions[start:end], part))
            return parts
        parts, start = [], 0
        for i, size in enumerate(sizes):
            end = start + size
            given_rng = rngs[i] if rngs is not None else None
            actions, data = self._head(outputs[0][start:end],
                                       None if masks is None else masks[i],
                                       self._rng if given_rng is None else given_rng)
            data.update((n, v[start:end]) for n, v in zip(self._extra, extras))
            parts.append((actions, data))
            start = end
        return parts

    def _obs_error(self, x: np.ndarray) -> ModelError:
        return obs_shape_error(x.shape, self._row_shape, self.observation_space)

    def seed(self, seed: int | None = None) -> None:
        """Reseeds the generator the ``"sample"`` head draws from when ``step`` gets no ``rng``."""
        self._rng = np.random.default_rng(seed)

    # -- checking and saving --------------------------------------------------------------------

    def validate(self) -> None:
        """Runs the model on two sampled observations and checks its outputs fit the metadata.

        Raises:
            ModelError: the model does not take the metadata's input, or its outputs do not have
                the metadata's count, shape or dtype, or the actions read from them are not in
                the action space.
        """
        meta = self._metadata
        signature = self._backend.signature
        if not signature.guessed and signature.input_shape is not None:
            declared = signature.input_shape
            if len(declared) != len(meta.input_shape) or any(
                    d is not None and d != m for d, m in zip(declared[1:], meta.input_shape[1:])):
                raise ModelError(f"the model takes inputs of shape {declared} (None: any size) "
                                 f"but its metadata says {meta.input_shape}: fix input_shape "
                                 "and observation_space in metadata.json")
            if signature.input_dtype not in (None, meta.input_dtype):
                raise ModelError(f"the model takes {signature.input_dtype} inputs but its "
                                 f"metadata says input_dtype {meta.input_dtype!r}")
        obs = probe_batch(meta.observation_space, 2).astype(self._in_dtype)
        try:
            outputs = self._run(obs)
        except ModelError as err:
            raise ModelError(f"validation failed: the model cannot run on a batch of two "
                             f"observations from {meta.observation_space}: {err}") from err
        self._check_outputs(outputs)
        actions, _ = self._head(outputs[0], None, np.random.default_rng(0))
        if not all(meta.action_space.contains(action) for action in actions):
            raise ModelError(f"validation failed: the model's actions {actions.tolist()} are not "
                             f"all in the action space {meta.action_space} (NaN outputs?)")

    def _check_outputs(self, outputs: Sequence[np.ndarray]) -> None:
        meta = self._metadata
        if len(outputs) != 1 + len(meta.extra_outputs):
            raise ModelError(
                f"validation failed: the model returns {len(outputs)} outputs but its metadata "
                f"expects {1 + len(meta.extra_outputs)} (the action output and extra_outputs "
                f"{list(meta.extra_outputs)}): fix extra_outputs in metadata.json")
        first = outputs[0]
        wanted = (2, *meta.output_shape[1:])
        if first.shape != wanted:
            raise ModelError(
                f"validation failed: the model's output has shape {first.shape} for a batch of 2 "
                f"but the metadata expects {wanted} (action head {meta.action_head!r}, action "
                f"space {meta.action_space}): the model was not exported for this action space")
        if first.dtype.name != meta.output_dtype:
            raise ModelError(f"validation failed: the model's output is {first.dtype.name} but "
                             f"its metadata says output_dtype {meta.output_dtype!r}")
        for name, value in zip(meta.extra_outputs, outputs[1:]):
            if value.ndim == 0 or value.shape[0] != 2:
                raise ModelError(f"validation failed: extra output {name!r} has shape "
                                 f"{value.shape} for a batch of 2; it needs one row per "
                                 "observation")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the model directory (model file + ``metadata.json``); returns its path.

        The directory is created if needed; files of the same names are replaced atomically.
        """
        root = Path(path)
        target = root / self._metadata.model_file
        try:
            root.mkdir(parents=True, exist_ok=True)
            _replace(target, self._model)
            _replace(root / METADATA_FILE,
                     (json.dumps(self._metadata.to_json(), indent=2) + "\n").encode())
        except OSError as err:
            raise ModelError(f"cannot save the model to {root}: {err}") from err
        return root

    def model_bytes(self) -> bytes:
        """The serialized model, as loaded (what ``save`` writes as ``model_file``)."""
        return self._model

    # -- description ----------------------------------------------------------------------------

    @property
    def metadata(self) -> ModelMetadata:
        """What the model takes and gives (``metadata.json``)."""
        return self._metadata

    @property
    def version(self) -> int:
        """The policy version actors report with their transitions; settable (an int >= 0)."""
        return self._metadata.version

    @version.setter
    def version(self, value: int) -> None:
        self._set_metadata(dataclasses.replace(self._metadata, version=value))

    @property
    def observation_space(self) -> spaces.Space:
        return self._metadata.observation_space

    @property
    def action_space(self) -> spaces.Space:
        return self._metadata.action_space

    @property
    def action_head(self) -> str:
        return self._metadata.action_head

    @property
    def device(self) -> DeviceType:
        """Where the model runs (CPU when CUDA / MPS was asked for but is unavailable)."""
        return self._backend.device

    def __repr__(self) -> str:
        meta = self._metadata
        return (f"ModelModule({meta.model_type}, version={meta.version}, head={meta.action_head!r}"
                f", observation_space={meta.observation_space}, action_space="
                f"{meta.action_space}, device={self.device.value})")


def obs_shape_error(shape: tuple[int, ...], row_shape: tuple[int, ...], space: Any,
                    where: str = "") -> ModelError:
    """The error for observations of ``shape`` given to a policy taking rows of ``row_shape``
    (``where``: said after the space, e.g. which server serves the policy).

    >>> print(obs_shape_error((3, 5), (4,), "Box(4,)"))
    obs has shape (3, 5), expected (batch, 4) for observation space Box(4,)
    """
    wanted = ", ".join(["batch", *map(str, row_shape)])
    hint = " (a single observation: add a batch axis, obs[None])" if shape == row_shape else ""
    return ModelError(f"obs has shape {shape}, expected ({wanted}) for observation space "
                      f"{space}{where}{hint}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ModelError(f"cannot read the model file {path}: {err}") from err


def _replace(target: Path, content: bytes) -> None:
    """Writes a file so that readers see the old or the new content, never a part."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        # mkstemp makes the file private (0600); a saved model is for others to read too.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
