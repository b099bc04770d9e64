"""ModelModules over NATS JetStream: the learner's `NatsModelPublisher` and the layout that
actors (`relayrl_gym.models.nats_source.NatsModelSource`) read.

Layout, for the stream ``STREAM`` of a `NatsTarget` (see `model_buckets`):

    object store ``STREAM_models``  one object per file of each version, named
                                    ``v<version>/<file name>`` (``v7/metadata.json``,
                                    ``v7/model.onnx``); the current version's and the one
                                    before's are kept (a reader may still be downloading it),
                                    older ones are deleted
    key-value ``STREAM_model``      key ``current``: JSON ``{"version": N, "files": [names],
                                    "sizes": [bytes]}`` (a `ModelManifest`), written only once
                                    every object of version N is stored, so a reader never
                                    sees a half-uploaded version

A reader watches ``current`` (a watch delivers the value the key holds first: a late joiner
gets the current model at once), downloads the files it names (`fetch_model`) and checks them
as the ZMQ model channel does (`unpack_model`: plain file names, ``metadata.json`` among them,
the size limit). The files are those `pack_model` writes: ``metadata.json`` carries the version.
Versions only go up: ``current`` is replaced by compare-and-set on its revision, with
``max(module.version, current + 1)``, so a restarted learner, or two, keep counting up.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from relayrl_gym.errors import ConfigError, StateError, TransportError
from relayrl_gym.transport.models import as_model_module, pack_model
from relayrl_gym.transport.nats.link import NatsLink, require_nats
from relayrl_gym.transport.nats.options import NatsTarget
from relayrl_gym.transport.protocol import Header, Kind, ProtocolViolation, decode_header

__all__ = ["CURRENT_KEY", "MAX_MANIFEST_BYTES", "ModelBuckets", "ModelManifest",
           "NatsModelPublisher", "fetch_model", "model_buckets", "object_name"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The key of the key-value bucket that names the current version.
CURRENT_KEY = "current"
#: The largest ``current`` value a reader parses (and the bucket's value limit).
MAX_MANIFEST_BYTES = 64 * 1024
_MAX_FILES = 256
_OBJECT_NAME = re.compile(r"v(\d+)/(.+)", re.DOTALL)  # used with fullmatch
_RACE_TRIES = 5  # another learner replaced `current` while this one uploaded: count up again


class ModelBuckets(NamedTuple):
    """The JetStream buckets of one stream's models."""

    objects: str  #: the object store holding the files
    current: str  #: the key-value bucket whose ``current`` key names the version


def model_buckets(stream: str) -> ModelBuckets:
    """The buckets of ``stream``'s models.

    >>> model_buckets("relayrl")
    ModelBuckets(objects='relayrl_models', current='relayrl_model')
    """
    return ModelBuckets(f"{stream}_models", f"{stream}_model")


def object_name(version: int, file: str) -> str:
    """The object holding ``file`` of model ``version``.

    >>> object_name(7, "metadata.json")
    'v7/metadata.json'
    """
    return f"v{int(version)}/{file}"


@dataclass(frozen=True)
class ModelManifest:
    """The value of the ``current`` key: a version and its files, with their sizes.

    >>> manifest = ModelManifest(3, ("metadata.json", "model.onnx"), (210, 4096))
    >>> ModelManifest.decode(manifest.encode()) == manifest, manifest.total
    (True, 4306)
    >>> ModelManifest.decode(b'{"version": 3}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    relayrl_gym.transport.protocol.ProtocolViolation: the model announcement must name ...
    """

    version: int
    files: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def total(self) -> int:
        """The bytes of all the files."""
        return sum(self.sizes)

    def encode(self) -> bytes:
        return json.dumps({"version": self.version, "files": list(self.files),
                           "sizes": list(self.sizes)}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ModelManifest:
        """Parses a ``current`` value; raises `ProtocolViolation` saying what is wrong."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ProtocolViolation(f"the model announcement of {len(raw)} bytes is over the "
                                    f"{MAX_MANIFEST_BYTES}-byte limit")
        try:
            doc = json.loads(bytes(raw))
        except (ValueError, UnicodeDecodeError) as err:
            raise ProtocolViolation(f"the model announcement is not JSON: {err}") from err
        except RecursionError as err:
            raise ProtocolViolation("the model announcement nests too deeply") from err
        if not isinstance(doc, dict):
            raise ProtocolViolation("the model announcement must be a JSON object")
        version = Header(Kind.MODEL, doc).integer("version")
        files, sizes = doc.get("files"), doc.get("sizes")
        if not (isinstance(files, list) and isinstance(sizes, list) and
                0 < len(files) == len(sizes) <= _MAX_FILES and
                all(isinstance(f, str) for f in files) and len(set(files)) == len(files) and
                all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes)):
            raise ProtocolViolation(f"the model announcement must name its files (1 to "
                                    f"{_MAX_FILES} distinct names) and their sizes in bytes, "
                                    "one each")
        return cls(version, tuple(files), tuple(sizes))

    def header(self) -> Header:
        """The header `unpack_model` checks the downloaded files against."""
        return Header(Kind.MODEL, {"version": self.version, "files": list(self.files)})


def _errors() -> Any:
    require_nats()
    import nats.js.errors

    return nats.js.errors


async def fetch_model(nc: Any, buckets: ModelBuckets, manifest: ModelManifest,
                      max_bytes: int) -> list[bytes] | None:
    """The bytes of ``manifest``'s files, in its order; None when they are no longer in the
    bucket (a newer version replaced them while this one was on its way).

    Raises:
        ProtocolViolation: the objects do not match the manifest (sizes, checksums, links to
            other buckets), or they are larger than ``max_bytes``.
    """
    errors = _errors()
    try:
        store = await nc.jetstream().object_store(buckets.objects)
    except errors.BucketNotFoundError:
        return None
    frames, total = [], 0
    for file, size in zip(manifest.files, manifest.sizes):
        name = object_name(manifest.version, file)
        try:
            info = await store.get_info(name)
            if info.is_link():
                raise ProtocolViolation(f"model object {name!r} is a link to another bucket")
            total += info.size or 0
            if (info.size or 0) != size:
                raise ProtocolViolation(f"model object {name!r} holds {info.size} bytes, the "
                                        f"announcement says {size}")
            if total > max_bytes:
                raise ProtocolViolation(f"model version {manifest.version} is over the "
                                        f"{max_bytes}-byte limit")
            sink = io.BytesIO()
            await store.get(name, writeinto=sink)
        except (errors.ObjectNotFoundError, errors.ObjectDeletedError):
            return None
        except (errors.DigestMismatchError, errors.BadObjectMetaError) as err:
            raise ProtocolViolation(f"model object {name!r} is corrupt ({type(err).__name__})"
                                    ) from err
        if sink.tell() != size:
            raise ProtocolViolation(f"model object {name!r} gave {sink.tell()} bytes, the "
                                    f"announcement says {size}")
        frames.append(sink.getvalue())
    return frames


class NatsModelPublisher:
    """The learner's side: publishes ModelModule versions into a stream's model buckets.

    The buckets are created when missing (with the target's ``replicas``). `publish` uploads
    a version's files, then points ``current`` at it (see the module's docstring for the
    layout); versions only go up, across restarts and learners. Errors of NATS come as
    `TransportError` saying what failed and how to fix it.

    >>> from relayrl_gym.transport.nats.options import parse_nats_url
    >>> publisher = NatsModelPublisher(parse_nats_url("nats://127.0.0.1:4222/relayrl"))
    >>> version = publisher.publish("policy_dir")  # doctest: +SKIP
    >>> publisher.close()
    """

    def __init__(self, target: NatsTarget, *, link: NatsLink | None = None,
                 timeout: float = 60.0) -> None:
        """Connects (in the background: the first `publish` waits for the connection).

        Args:
            target: the NATS servers, credentials and stream (its name names the buckets).
            link: a connection to share (e.g. a NATS consumer's); None: one of its own,
                closed by `close`.
            timeout: the longest one NATS operation (connecting, uploading one file) may take.
        """
        if not timeout > 0:
            raise ConfigError(f"`timeout` must be > 0 seconds, got {timeout!r}")
        self.target = target
        self.buckets = model_buckets(target.stream)
        self._timeout = float(timeout)
        self._own_link = link is None
        self._link = link if link is not None else NatsLink(
            target, "relayrl-nats-model-publisher")
        self._version = 0
        self._stores: tuple[Any, Any] | None = None  # (key-value, object store) handles
        self._lock = threading.Lock()
        self._closed = False

    @property
    def version(self) -> int:
        """The last version published (0: none yet)."""
        return self._version

    def publish(self, module: Any) -> int:
        """Makes ``module`` (a ModelModule or a path to one) the current model; returns its
        version, ``max(module.version, current + 1)``.

        Raises:
            TransportError: NATS could not be reached or refused the upload.
        """
        module = as_model_module(module, "publish")
        with self._lock:
            if self._closed:
                raise StateError("the NATS model publisher is closed: make a new one")
            try:
                return self._publish(module)
            except BaseException:
                self._stores = None  # a deleted bucket, a new connection: look them up again
                raise

    def close(self, timeout: float = 5.0) -> None:
        """Closes its own connection (not a shared one); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._own_link:
            self._link.close(timeout)

    # -- on the caller's thread -------------------------------------------------------------
    def _publish(self, module: Any) -> int:
        errors = _errors()
        if not self._link.wait_connected(self._timeout):
            raise TransportError(f"cannot publish a model: NATS at {self.target.display} is "
                                 f"not reachable within {self._timeout} s "
                                 f"({self._link.problem})")
        if self._stores is None:
            self._stores = self._call(self._open(), "create the model buckets")
        kv, store = self._stores
        for _ in range(_RACE_TRIES):
            previous, revision = self._call(self._read_current(kv),
                                            "read the current model version")
            version = max(int(module.version), (previous or 0) + 1, self._version + 1)
            frames = pack_model(module, version)
            files = decode_header(frames[0]).fields["files"]
            for file, data in zip(files, frames[1:]):
                self._call(store.put(object_name(version, file), data),
                           f"upload {file!r} of model version {version}")
            manifest = ModelManifest(version, tuple(files), tuple(len(f) for f in frames[1:]))
            try:
                self._call(kv.update(CURRENT_KEY, manifest.encode(), last=revision),
                           f"make model version {version} current")
            except TransportError as err:
                if isinstance(err.__cause__, errors.KeyWrongLastSequenceError):
                    log.info("another learner published while version %d uploaded; counting "
                             "up from its version", version)
                    continue
                raise
            self._version = version
            self._prune(store, keep_from=previous if previous is not None else version)
            log.info("published model version %d to %s (%d bytes)", version,
                     self.target.display, manifest.total)
            return version
        raise TransportError(f"cannot publish a model to {self.target.display}: `current` in "
                             f"{self.buckets.current!r} changed {_RACE_TRIES} times while "
                             "uploading; is another learner publishing in a loop?")

    def _prune(self, store: Any, keep_from: int) -> None:
        try:
            self._call(self._delete_older(store, keep_from), "delete old model versions")
        except TransportError as err:  # the new version is out: old files only cost space
            log.warning("%s", err)

    def _call(self, coro: Coroutine[Any, Any, T], doing: str) -> T:
        try:
            return self._link.call(coro, self._timeout)
        except ProtocolViolation:
            raise
        except Exception as err:
            raise self._failure(err, doing) from err

    def _failure(self, err: Exception, doing: str) -> TransportError:
        said = str(err) or type(err).__name__
        problem = self._link.problem
        if "permission" in f"{said} {problem}".lower():
            objects, current = self.buckets
            return TransportError(
                f"cannot {doing}: the NATS user lacks publish rights on the model buckets "
                f"{objects!r} and {current!r} at {self.target.display} (the server said: "
                f"{problem or said}); allow it to publish to $JS.API.>, $O.{objects}.> and "
                f"$KV.{current}.>, or create the buckets with an account that may")
        extra = f" ({problem})" if problem and problem not in said else ""
        if "replicas" in said.lower():
            extra += (f"; `replicas={self.target.replicas}` needs a NATS cluster of at least "
                      "that many servers")
        return TransportError(f"cannot {doing} at NATS {self.target.display}: "
                              f"{type(err).__name__}: {said}{extra}")

    # -- on the link's loop -----------------------------------------------------------------
    async def _open(self) -> tuple[Any, Any]:
        errors = _errors()
        js = self._link.nc.jetstream()
        objects, current = self.buckets
        try:
            kv = await js.key_value(current)
        except errors.BucketNotFoundError:
            kv = await js.create_key_value(
                bucket=current, history=1, replicas=self.target.replicas,
                max_value_size=MAX_MANIFEST_BYTES,
                description=f"relayrl-gym: the current model of {objects!r}")
        try:
            store = await js.object_store(objects)
        except errors.BucketNotFoundError:
            store = await js.create_object_store(
                bucket=objects, replicas=self.target.replicas,
                description="relayrl-gym: model versions, v<version>/<file>")
        return kv, store

    async def _read_current(self, kv: Any) -> tuple[int | None, int]:
        """The current version (None: none, or unreadable) and the key's revision."""
        errors = _errors()
        try:
            entry = await kv.get(CURRENT_KEY)
        except errors.KeyNotFoundError as err:  # never written, or deleted: its tombstone
            return None, err.entry.revision if err.entry is not None else 0
        try:
            return ModelManifest.decode(entry.value or b"").version, entry.revision
        except ProtocolViolation as err:
            log.warning("the current model in %r is unreadable (%s); publishing over it",
                        self.buckets.current, err)
            return None, entry.revision

    async def _delete_older(self, store: Any, keep_from: int) -> None:
        errors = _errors()
        try:
            infos = await store.list(ignore_deletes=True)
        except errors.NotFoundError:
            return
        for info in infos:
            match = _OBJECT_NAME.fullmatch(info.name or "")
            if match and int(match.group(1)) < keep_from:
                await store.delete(info.name)
