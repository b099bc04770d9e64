"""Where new models come from over NATS: a learner's `NatsModelPublisher`, on a path of its own.

A `NatsModelSource` has its own connection (a `NatsLink` and its loop thread) and a thread of
its own: the loop watches the ``current`` key of the stream's model bucket (see
`relayrl_gym.transport.nats.models` for the layout), the thread downloads each newer version,
checks it and hands its folder to ``update`` (`RelayRLAgent.update_model`, a
`PolicyRunner.update`), which swaps it in between two steps. Nothing rides the data path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relayrl_gym.errors import ConfigError, TransportError
from relayrl_gym.transport.models import DEFAULT_MAX_MODEL_BYTES, unpack_model
from relayrl_gym.transport.nats.link import NatsLink, require_nats
from relayrl_gym.transport.nats.models import (
    CURRENT_KEY,
    ModelManifest,
    fetch_model,
    model_buckets,
)
from relayrl_gym.transport.nats.options import NatsTarget
from relayrl_gym.transport.protocol import ProtocolViolation

__all__ = ["NatsModelSource"]

log = logging.getLogger(__name__)

_WAIT = 0.25  # how often the thread looks at its stop flag
_RETRY_FIRST, _RETRY_MAX = 0.25, 1.0  # a bucket not there yet; a download that failed


class NatsModelSource:
    """Follows the models a learner publishes to a NATS stream and hands each newer one to
    ``update``.

    It survives a learner that has not published yet (the buckets do not exist: it keeps
    looking) and reconnections (it watches again; the watch delivers the current value
    first, which is also how a late joiner gets the current model at once). Versions it has
    seen are never fetched again. ``version`` is the last version applied (-1: none yet);
    ``received`` / ``refused`` / ``rejected`` count models applied, models ``update`` refused
    (they did not fit: the old one keeps running, and the refused one is not retried) and
    malformed announcements or files. ``close()`` stops both threads; idempotent.

    >>> from relayrl_gym.transport.nats.options import parse_nats_url
    >>> source = NatsModelSource(parse_nats_url("nats://127.0.0.1:4222/relayrl"),
    ...                          update=lambda path: 0)
    >>> source.version
    -1
    >>> source.close()
    """

    def __init__(self, target: NatsTarget, update: Callable[[str], int], *,
                 max_bytes: int = DEFAULT_MAX_MODEL_BYTES, name: str = "relayrl-nats-models",
                 timeout: float = 120.0) -> None:
        """Starts following.

        Args:
            target: the NATS servers, credentials and stream (its name names the buckets).
            update: hot-swaps the model; gets the model folder's path, returns the version
                it runs as.
            max_bytes: the largest model (all files together) accepted.
            name: the thread's name (the connection's thread is ``NAME-link``).
            timeout: the longest the download of one version may take before it is retried.
        """
        require_nats()
        if not max_bytes > 0:
            raise ConfigError(f"`max_bytes` must be > 0, got {max_bytes!r}")
        if not timeout > 0:
            raise ConfigError(f"`timeout` must be > 0 seconds, got {timeout!r}")
        self.target = target
        self.buckets = model_buckets(target.stream)
        self._update = update
        self._max_bytes = int(max_bytes)
        self._timeout = float(timeout)
        self._version = -1
        self._received = self._refused = self._rejected = 0
        self._seen = -1  # the newest version handled: applied, refused or malformed
        self._pending: bytes | None = None  # the newest `current` value not handled yet
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._closed = False
        self._watching: asyncio.Task[None] | None = None  # on the link's loop
        self._link = NatsLink(target, f"{name}-link", on_connect=self._on_connect)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def version(self) -> int:
        return self._version

    @property
    def received(self) -> int:
        return self._received

    @property
    def refused(self) -> int:
        return self._refused

    @property
    def rejected(self) -> int:
        return self._rejected

    def close(self, timeout: float = 10.0) -> None:
        """Stops following (a download on its way is dropped); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        if threading.current_thread() is not self._thread:  # not from inside `update`
            self._thread.join(timeout / 2)  # within _WAIT, unless `update` is swapping a model
        self._link.close(max(0.1, deadline - time.monotonic()))

    # -- on the link's loop: watching `current` ---------------------------------------------
    async def _on_connect(self, nc: Any) -> None:
        """After each (re)connection: watch again (a server restarted without its consumers,
        a watch that missed values while the connection was down)."""
        if self._watching is not None:
            self._watching.cancel()
        self._watching = asyncio.get_running_loop().create_task(self._watch(nc))

    async def _watch(self, nc: Any) -> None:
        import nats.js.errors

        js = nc.jetstream()
        delay, said = _RETRY_FIRST, ""
        while True:
            try:
                kv = await js.key_value(self.buckets.current)
                watcher = await kv.watch(CURRENT_KEY)
            except nats.js.errors.BucketNotFoundError:
                pass  # no learner has published yet
            except Exception as err:  # timed out, disconnected: the next connection watches
                text = f"{type(err).__name__}: {err}"
                if text != said:
                    log.warning("cannot watch the models of %s yet (%s); retrying",
                                self.target.display, text)
                said = text
            else:
                log.debug("watching %s for models", self.buckets.current)
                try:
                    async for entry in watcher:
                        if entry is not None and entry.operation not in ("DEL", "PURGE"):
                            self._offer(bytes(entry.value or b""))
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)

    def _offer(self, value: bytes) -> None:
        with self._wake:
            self._pending = value  # only the newest matters: an older one is skipped
            self._wake.notify()

    # -- on the source's thread: fetching and swapping --------------------------------------
    def _run(self) -> None:
        retry = _RETRY_FIRST
        try:
            while not self._stop.is_set():
                with self._wake:
                    if self._pending is None:
                        self._wake.wait(_WAIT)
                    raw, self._pending = self._pending, None
                if raw is None:
                    continue
                if self._handle(raw):
                    retry = _RETRY_FIRST
                    continue
                with self._wake:  # put it back, unless a newer one came meanwhile
                    if self._pending is None:
                        self._pending = raw
                self._stop.wait(retry)
                retry = min(retry * 2, _RETRY_MAX)
        except Exception:  # a bug, not the learner's doing: keep it visible
            log.exception("the NATS model source stopped")

    def _handle(self, raw: bytes) -> bool:
        """Applies the model ``raw`` announces when it is newer; False when it should be
        tried again (the download failed)."""
        try:
            manifest = ModelManifest.decode(raw)
            if manifest.version <= self._seen:
                return True
            if manifest.total > self._max_bytes:
                raise ProtocolViolation(f"model version {manifest.version} of "
                                        f"{manifest.total} bytes is over the "
                                        f"{self._max_bytes}-byte limit")
        except ProtocolViolation as err:
            self._rejected += 1
            log.warning("ignoring a malformed model announcement in %r: %s",
                        self.buckets.current, err)
            return True
        try:
            frames = self._fetch(manifest)
        except ProtocolViolation as err:
            self._seen = manifest.version
            self._rejected += 1
            log.warning("ignoring malformed model version %d: %s", manifest.version, err)
            return True
        except (Exception, concurrent.futures.CancelledError) as err:  # down, slow: retried
            if not self._stop.is_set():
                log.warning("could not download model version %d from %s (%s: %s); retrying",
                            manifest.version, self.target.display, type(err).__name__, err)
            return False
        self._seen = manifest.version
        if frames is None:
            log.warning("model version %d is no longer in %r (replaced while on its way); "
                        "waiting for the next one", manifest.version, self.buckets.objects)
            return True
        self._apply(manifest, frames)
        return True

    def _fetch(self, manifest: ModelManifest) -> list[bytes] | None:
        """Runs `fetch_model` on the link's loop; gives up at ``timeout`` or on `close`."""
        future = self._link.submit(fetch_model(self._link.nc, self.buckets, manifest,
                                               self._max_bytes))
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return future.result(_WAIT)
            except concurrent.futures.TimeoutError:
                if self._stop.is_set() or time.monotonic() >= deadline:
                    future.cancel()
                    why = self._link.problem or "connected, but slow"
                    raise TransportError(f"model version {manifest.version} did not arrive "
                                         f"within {self._timeout} s ({why})") from None

    def _apply(self, manifest: ModelManifest, frames: list[bytes]) -> None:
        with tempfile.TemporaryDirectory(prefix="relayrl-model-") as tmp:
            try:
                folder = unpack_model(manifest.header(), frames, Path(tmp) / "model",
                                      self._max_bytes)
            except ProtocolViolation as err:
                self._rejected += 1
                log.warning("ignoring malformed model version %d: %s", manifest.version, err)
                return
            started = time.perf_counter()
            try:
                running = self._update(str(folder))
            except Exception as err:  # a refused model must never stop the source
                self._refused += 1
                log.warning("model version %d was refused (%s); the running model stays",
                            manifest.version, err)
                return
        self._received += 1
        self._version = manifest.version
        log.info("model version %d running as %d (swap took %.1f ms)", manifest.version,
                 running, 1e3 * (time.perf_counter() - started))
