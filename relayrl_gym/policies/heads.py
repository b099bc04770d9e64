"""Action heads: how a model's raw output batch becomes a batch of valid actions.

A head is chosen by name in the model's metadata (``action_head``):

- ``"identity"`` (Box): the output is the action (a mean, a squashed action); it is clipped to
  the Box bounds and cast to the space dtype.
- ``"argmax"`` (Discrete): the output is one logit (or Q-value) per action; the action is the
  best unmasked one, offset by the space's ``start``.
- ``"sample"`` (Discrete): the output is logits; the action is drawn from their softmax over the
  unmasked actions, and ``data["log_prob"]`` records the log-probability of the drawn action.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from gymnasium import spaces

from relayrl_gym.errors import ConfigError, ModelError

__all__ = [
    "HEADS",
    "HEAD_OUTPUTS",
    "ActionHead",
    "ArgmaxHead",
    "IdentityHead",
    "SampleHead",
    "head_output_shape",
    "make_head",
]

HEADS = ("identity", "argmax", "sample")
"""The action head names a model's metadata may use."""

HEAD_OUTPUTS = {"identity": (), "argmax": (), "sample": ("log_prob",)}
"""What each head adds to a step's ``data`` (beside the model's own extra outputs)."""


class ActionHead(Protocol):
    """Turns a raw output batch into ``(actions, data)``; ``data`` holds per-row arrays.

    >>> head: ActionHead = make_head("argmax", spaces.Discrete(2))
    >>> head(np.array([[0.0, 1.0]]), None, np.random.default_rng(0))
    (array([1]), {})
    """

    def __call__(
        self, raw: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...


class IdentityHead:
    """Reads a Box action straight from the output, clipped to the bounds, in the space dtype.

    >>> head = IdentityHead(spaces.Box(-1.0, 1.0, (2,)))
    >>> head(np.array([[0.5, 3.0]]), None, np.random.default_rng(0))
    (array([[0.5, 1. ]], dtype=float32), {})
    """

    def __init__(self, space: spaces.Box) -> None:
        """Args:
        space: the action space; actions are clipped to its ``low`` / ``high``.
        """
        self._shape = (-1, *space.shape)
        self._dtype = space.dtype
        self._low = space.low
        self._high = space.high
        self._bounded = bool(np.isfinite(space.low).any() or np.isfinite(space.high).any())

    def __call__(
        self, raw: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if mask is not None:
            raise ModelError(
                "an action mask was passed to a model with a continuous (Box) action space; "
                "masks select among discrete actions: pass mask=None"
            )
        actions = raw.reshape(self._shape)
        if self._bounded:
            actions = np.clip(actions, self._low, self._high)
        return actions.astype(self._dtype, copy=False), {}


def _checked_logits(raw: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The logits to choose from: masked-out actions at -inf; NaN or +inf logits, or rows whose
    allowed actions are all -inf, are a `ModelError` (they name no action to take)."""
    logits = raw if mask is None else _masked(raw, mask)
    if mask is None and np.isfinite(logits).all():  # the usual case: one cheap check
        return logits
    bad = np.isnan(logits).any(axis=1) | np.isposinf(logits).any(axis=1)
    bad |= ~np.isfinite(logits).any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        raise ModelError(f"the model's logits in rows {rows} are NaN, +inf, or -inf for every "
                         "allowed action, so they name no action; check the observations "
                         "(NaN in, NaN out) and the model")
    return logits


def _masked(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Logits with masked-out actions set to -inf; checks the mask's shape and rows."""
    mask = np.asarray(mask)
    if mask.shape != logits.shape:
        raise ModelError(
            f"mask has shape {mask.shape}, expected {logits.shape} (one row per observation, "
            f"one column per action); pass a bool array with True for allowed actions"
        )
    if mask.dtype != np.bool_:
        mask = mask != 0
    allowed = mask.any(axis=1)
    if not allowed.all():
        rows = np.flatnonzero(~allowed).tolist()
        raise ModelError(
            f"mask rows {rows} allow no action; every row must allow at least one action "
            "(True / 1 for allowed)"
        )
    return np.where(mask, logits, -np.inf)


class _DiscreteHead:
    """What the discrete heads share: the action offset and dtype of their space."""

    def __init__(self, space: spaces.Discrete) -> None:
        """Args:
        space: the action space; actions are offset by its ``start``.
        """
        self._start = int(space.start)
        self._dtype = space.dtype


class ArgmaxHead(_DiscreteHead):
    """Picks the highest logit (or Q-value) of each row among the allowed actions.

    >>> head = ArgmaxHead(spaces.Discrete(3, start=1))
    >>> head(np.array([[0.1, 2.0, 0.3]]), np.array([[1, 0, 1]]), np.random.default_rng(0))
    (array([3]), {})
    """

    def __call__(
        self, raw: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        actions = _checked_logits(raw, mask).argmax(axis=1)
        if self._start:
            actions += self._start
        return actions.astype(self._dtype, copy=False), {}


class SampleHead(_DiscreteHead):
    """Draws each row's action from the softmax of its allowed logits, recording its log-prob.

    ``data["log_prob"]`` is float32, one entry per row.

    Sampling is the Gumbel-max trick with the caller's numpy ``Generator``: the same seed and
    logits give the same actions whatever backend produced the logits.

    >>> head = SampleHead(spaces.Discrete(2))
    >>> actions, data = head(np.array([[0.0, 0.0]]), None, np.random.default_rng(0))
    >>> data["log_prob"].round(4)
    array([-0.6931], dtype=float32)
    """

    def __call__(
        self, raw: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        logits = _checked_logits(raw, mask)
        index = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
        top = logits.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        log_prob = logits[np.arange(len(index)), index] - log_norm
        if self._start:
            index += self._start
        return index.astype(self._dtype, copy=False), {"log_prob": log_prob.astype(np.float32)}


def _check_head(name: str, space: spaces.Space) -> None:
    if name not in HEADS:
        raise ConfigError(f"unknown action head {name!r}; expected one of {', '.join(HEADS)}")
    wanted = spaces.Box if name == "identity" else spaces.Discrete
    if not isinstance(space, wanted):
        raise ConfigError(
            f"action head {name!r} needs a {wanted.__name__} action space, got {space}; use "
            + ("'identity' for Box" if isinstance(space, spaces.Box)
               else "'argmax' or 'sample' for Discrete" if isinstance(space, spaces.Discrete)
               else "a Box or Discrete action space (others are not supported yet)")
        )


def make_head(name: str, space: spaces.Space) -> ActionHead:
    """The head called ``name`` for ``space``; a clear error if they do not go together.

    >>> make_head("argmax", spaces.Discrete(2))  # doctest: +ELLIPSIS
    <...ArgmaxHead object at ...>
    """
    _check_head(name, space)
    if isinstance(space, spaces.Box):
        return IdentityHead(space)
    if isinstance(space, spaces.Discrete):
        return ArgmaxHead(space) if name == "argmax" else SampleHead(space)
    raise ConfigError(f"no action head for {space}")  # unreachable: _check_head rejected it


def head_output_shape(name: str, space: spaces.Space) -> tuple[int, ...]:
    """The per-row shape of the model output that head ``name`` reads for ``space``.

    >>> head_output_shape("sample", spaces.Discrete(4)), head_output_shape(
    ...     "identity", spaces.Box(0, 1, (2, 3)))
    ((4,), (2, 3))
    """
    _check_head(name, space)
    if isinstance(space, spaces.Discrete):
        return (int(space.n),)
    return tuple(space.shape)  # type: ignore[arg-type]
