"""ModelModules on the wire: a saved model directory as file frames, and the actor's side of the
model channel (ask for the current model, receive new ones, hand them to a hot-swap callback)."""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relayrl_gym.errors import ConfigError
from relayrl_gym.policies.module import ModelModule
from relayrl_gym.transport.protocol import Header, Kind, ProtocolViolation, encode

__all__ = ["DEFAULT_MAX_MODEL_BYTES", "ModelFeed", "as_model_module", "pack_model", "unpack_model"]

log = logging.getLogger(__name__)

#: The largest model (all files together) a subscriber accepts.
DEFAULT_MAX_MODEL_BYTES = 512 * 1024 * 1024

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,120}")  # used with fullmatch
_HELLO_EVERY = 1.0


def as_model_module(module: Any, what: str = "publish_model") -> Any:
    """``module`` if it is a ModelModule, else the ModelModule at that path.

    Raises:
        ConfigError: it is neither.
    """
    if hasattr(module, "save"):
        return module
    if not isinstance(module, str | bytes) and not hasattr(module, "__fspath__"):
        raise ConfigError(f"{what} takes a ModelModule or a path to one, got {module!r}")
    return ModelModule.load_from_path(module)


def pack_model(module: Any, version: int) -> list[bytes]:
    """The frames of a ``model`` message: a header naming the files, then their bytes. The
    saved ``metadata.json`` carries ``version``."""
    with tempfile.TemporaryDirectory(prefix="relayrl-model-") as tmp:
        folder = module.save(Path(tmp) / "model")
        meta_path = folder / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["version"] = int(version)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        payload = [(folder / name).read_bytes() for name in files]
    return [encode(Kind.MODEL, version=int(version), files=files), *payload]


def unpack_model(header: Header, frames: list[Any], into: Path, max_bytes: int) -> Path:
    """Writes the files of a ``model`` message to ``into``; raises `ProtocolViolation` when the
    message is malformed or larger than ``max_bytes``."""
    files = header.fields.get("files")
    if (not isinstance(files, list) or len(files) != len(frames) or
            not all(isinstance(f, str) and _FILE_NAME.fullmatch(f) for f in files) or
            "metadata.json" not in files):
        raise ProtocolViolation("model message must name its files (plain names, "
                                "metadata.json among them), one frame each")
    total = sum(len(f) for f in frames)
    if total > max_bytes:
        raise ProtocolViolation(f"model of {total} bytes is over the {max_bytes}-byte limit")
    into.mkdir(parents=True, exist_ok=True)
    for name, frame in zip(files, frames):
        (into / name).write_bytes(bytes(frame))
    return into


class ModelFeed:
    """The actor's side of the model channel, driven by the sender's I/O thread.

    Every second it says hello with the version it has (a subscription, a heartbeat, and the
    late joiner's request for the current model); a newer model is written to a temporary
    folder and handed, as that path, to ``update`` (``RelayRLAgent.update_model`` or a wrapped
    env's policy swap, both of which apply it between steps). A refused model is logged and
    not asked for again. ``version`` is the last version received (-1: none yet), ``running``
    the last one applied: hellos report both, so the publisher shows what each actor runs.

    >>> ModelFeed(lambda path: 0).version
    -1
    """

    def __init__(self, update: Callable[[str], int], max_bytes: int = DEFAULT_MAX_MODEL_BYTES
                 ) -> None:
        """Creates the feed.

        Args:
            update: hot-swaps the actors' model; gets the model folder's path.
            max_bytes: the largest model accepted.
        """
        self.update = update
        self.max_bytes = max_bytes
        self.version = -1
        self.running = -1
        self.received = 0
        self.refused = 0
        self.rejected = 0
        self._next_hello = 0.0

    def hello_due(self, now: float) -> bytes | None:
        """The hello frame when one is due."""
        if now < self._next_hello:
            return None
        self._next_hello = now + _HELLO_EVERY
        return encode(Kind.HELLO, have=self.running, seen=self.version)

    def handle(self, header: Header, frames: list[Any]) -> None:
        """A message from the publisher: applies a newer model."""
        if header.kind is not Kind.MODEL:
            return
        try:
            version = header.integer("version")
        except ProtocolViolation as err:
            self.rejected += 1
            log.warning("ignoring a malformed model message: %s", err)
            return
        if version <= self.version:
            return
        with tempfile.TemporaryDirectory(prefix="relayrl-model-") as tmp:
            try:
                folder = unpack_model(header, frames, Path(tmp) / "model", self.max_bytes)
                started = time.perf_counter()
                running = self.update(str(folder))
            except ProtocolViolation as err:
                self.rejected += 1
                log.warning("ignoring a malformed model message: %s", err)
                return
            except Exception as err:  # a refused model must never stop the I/O thread
                self.refused += 1
                log.warning("model version %d was refused (%s); the running model stays",
                            version, err)
            else:
                self.received += 1
                self.running = version
                log.info("model version %d running as %d (swap took %.1f ms)", version, running,
                         1e3 * (time.perf_counter() - started))
        self.version = version
        self._next_hello = 0.0  # tell the publisher at once
