"""`TrainingServer`: the learner's end of the transport: a ZMQ collector and model publisher, or a
NATS JetStream consumer and model bucket."""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pyarrow as pa

from relayrl_gym.errors import ConfigError, StateError, TransportError
from relayrl_gym.lifecycle import close_at_exit, forget_at_exit
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT, Sink, redact_url, url_scheme
from relayrl_gym.transport._zmq import new_context, release_gc_thread, require_zmq
from relayrl_gym.transport.collector.publisher import DEFAULT_PEER_TIMEOUT, ModelPublisher
from relayrl_gym.transport.collector.receiver import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RUN_IDLE_TIMEOUT,
    Collector,
    Limits,
)
from relayrl_gym.transport.collector.run_store import ArrowRunStore, SinkRunStore
from relayrl_gym.transport.keys import server_keys
from relayrl_gym.transport.nats.consumer import NatsCollector
from relayrl_gym.transport.nats.models import NatsModelPublisher
from relayrl_gym.transport.nats.options import parse_nats_url
from relayrl_gym.transport.protocol import MIN_MESSAGE_LIMIT

__all__ = ["TrainingServer"]

log = logging.getLogger(__name__)

_LEARNER_QUEUE_BYTES = 256 * 1024 * 1024


class TrainingServer:
    """Receives trajectories from remote actors, writes them once, and publishes models.

    Actors stream with ``sink="zmq+tcp://HOST:PORT"``; every batch they send is written once to
    ``sink`` (a directory: one Arrow run directory per actor run, exactly once even across a
    ``kill -9`` of this process; or a SQL URL) and acknowledged only then. A learner iterates
    `trajectories` and calls `publish_model`; actors hot-swap each new version between steps.
    ``stats`` counts received batches and rows, duplicates, rejected messages, per sender.
    ``close()`` returns within seconds and leaves no thread behind.

    >>> import tempfile
    >>> with TrainingServer(bind="tcp://127.0.0.1:*", sink=tempfile.mkdtemp()) as server:
    ...     server.endpoint.startswith("tcp://127.0.0.1:"), server.stats["received"]
    (True, 0)
    """

    def __init__(self, bind: str = "tcp://*:7776", sink: Any = DEFAULT_SINK_ROOT,
                 models: str | None = None, curve_keys: str | os.PathLike[str] | None = None, *,
                 source: str | None = None, durable: str | None = None,
                 state_dir: str | os.PathLike[str] | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 learner_queue: int = 1024, compression: str | None = "lz4",
                 fsync: bool = False,
                 run_idle_timeout: float | None = DEFAULT_RUN_IDLE_TIMEOUT,
                 peer_timeout: float = DEFAULT_PEER_TIMEOUT,
                 limits: Limits | None = None) -> None:
        """Binds the sockets and starts serving.

        Args:
            bind: where actors send data, ``tcp://HOST:PORT`` (port ``*``: any free port; read
                `endpoint`).
            sink: a directory (or ``arrow://DIR``) or a database URL (``sqlite:///runs.db``,
                ``postgresql://...``).
            models: where actors get models, e.g. ``tcp://*:50051``; None: no publishing.
            curve_keys: a key folder from ``relayrl-gym keygen``: only clients whose public
                key is in its ``authorized/`` folder get in (CurveZMQ); None: no encryption.
            state_dir: where de-duplication state of a database sink is kept (default
                ``relayrl_runs/_collector``); a directory sink keeps it in each run.
            max_message_bytes: larger messages are refused (senders split big batches).
            learner_queue: batches `trajectories` may hold for a slow learner (and at most
                256 MiB of them); past it the oldest are dropped from the learner's view (never
                from the dataset) and counted as ``learner_dropped``.
            compression: Arrow IPC compression of a directory sink's files: "lz4" (default;
                about as fast as none, files ~4x smaller), "zstd" or None.
            fsync: ``fsync`` each commit of a directory sink (survives power loss).
            run_idle_timeout: seconds without a message of a run before its files are
                completed and its state let go (default 600; None: never). A sender that
                comes back continues the same run, each batch still written once (a database
                sink continues it as ``<run_id>+r<N>``, as after a restart of this server).
            peer_timeout: seconds without a hello before an actor on the model channel is
                forgotten (default 30; actors say hello every second).
            limits: runs and senders one peer (a CURVE key, else a connection) and all peers
                may hold open (default `Limits()`: 16 and 64 per peer, 128 and 4096 in all).
            source: ``nats://HOST:PORT/STREAM``: consume that JetStream stream instead of
                binding a ZMQ socket (``bind``, ``models``, ``curve_keys`` and ``limits`` are
                then unused: models go to the stream's model bucket, access is NATS's).
            durable: the NATS consumer's name (default ``relayrl``; also ``?durable=`` in
                ``source``): each name gets every batch. Servers of one name share the
                batches with ``?partition=I/N`` in ``source`` (N a power of two up to 32;
                server I takes runs of partition I modulo N).
        """
        self._nats = source is not None
        if not self._nats:
            require_zmq()  # a clear error before anything is opened
        elif durable is None:
            durable = "relayrl"
        if isinstance(sink, Sink):
            raise ConfigError("TrainingServer needs a sink spec it can open per run (a "
                              "directory or a database URL), not a Sink object")
        if max_message_bytes < MIN_MESSAGE_LIMIT:
            raise ConfigError(f"`max_message_bytes` must be >= {MIN_MESSAGE_LIMIT} (2 MiB), "
                              f"got {max_message_bytes}")
        if learner_queue < 1:
            raise ConfigError(f"`learner_queue` must be >= 1, got {learner_queue}")
        self._sink_spec = str(sink)
        self._state_dir = Path(state_dir) if state_dir is not None else Path(
            DEFAULT_SINK_ROOT, "_collector")
        if compression not in (None, "lz4", "zstd"):
            raise ConfigError(f"`compression` must be 'lz4', 'zstd' or None, got {compression!r}")
        self._compression = compression
        self._fsync = fsync
        self._queue: collections.deque[tuple[str, pa.RecordBatch]] = collections.deque()
        self._queue_max = learner_queue
        self._queue_bytes = 0
        self._arrived = threading.Condition()
        self._listening = False
        self._closed = False
        self._auth: Any = None
        self.publisher: Any = None
        #: The `Collector` (ZMQ) or `NatsCollector` (``source=``).
        self.collector: Any = None
        self._source = source
        if source is not None:
            self._ctx = None
            self._start_nats(source, str(durable), run_idle_timeout)
            return
        self._ctx = new_context()
        keys = None
        try:
            if curve_keys is not None:
                from zmq.auth.thread import ThreadAuthenticator


                keys = server_keys(curve_keys)
                self._auth = ThreadAuthenticator(self._ctx)
                self._auth.start()
                self._auth.configure_curve(domain="*", location=str(keys.authorized))
            if models is not None:
                self.publisher = ModelPublisher(self._ctx, models, keys=keys,
                                                peer_timeout=peer_timeout)
            self.collector = Collector(
                self._ctx, bind, self._open_store, keys=keys,
                max_message_bytes=max_message_bytes,
                models_endpoint=self.publisher.endpoint if self.publisher else None,
                on_batches=self._arrive, run_idle_timeout=run_idle_timeout, limits=limits)
        except BaseException:
            self._shutdown()
            raise
        self._exit_key = close_at_exit(self, TrainingServer.close)

    def _start_nats(self, source: str, durable: str, run_idle_timeout: float | None) -> None:
        target = parse_nats_url(source)
        durable = target.option("durable", durable)
        share = target.option("partition", "0/1")
        index, _, count = share.partition("/")
        if not (index.isdigit() and count.isdigit()):
            raise ConfigError(f"`partition` in the NATS URL must be I/N (this server's share "
                              f"of N, e.g. 0/2 and 1/2), got {share!r}")
        try:
            self.collector = NatsCollector(target, self._open_store, durable=durable,
                                           on_batches=self._arrive,
                                           run_idle_timeout=run_idle_timeout,
                                           partition=(int(index), int(count)))
            self.publisher = NatsModelPublisher(target, link=self.collector.link)
        except BaseException:
            self._shutdown()
            raise
        self._exit_key = close_at_exit(self, TrainingServer.close)

    # -- public ------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The data endpoint actually bound (give actors ``zmq+tcp://HOST:PORT``), or the
        NATS stream consumed (servers and stream)."""
        if self._nats:
            return str(self.collector.target.address)
        return str(self.collector.endpoint)

    @property
    def models_endpoint(self) -> str | None:
        if self._nats:
            return None
        return self.publisher.endpoint if self.publisher is not None else None

    @property
    def sink_url(self) -> str:
        """A sink URL for an actor on this host: ``zmq+tcp://127.0.0.1:PORT``, or the
        ``nats://`` source as given (credentials included)."""
        if self._source is not None:  # the options of a consumer are not a sink's
            base, _, query = self._source.partition("?")
            kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
                    if k not in ("durable", "partition")]
            return f"{base}?{urlencode(kept)}" if kept else base
        return "zmq+tcp://" + self.endpoint[len("tcp://"):].replace("0.0.0.0", "127.0.0.1")

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: ``received`` (batches), ``rows``, ``duplicates``, ``rejected``,
        ``out_of_order``, ``sink_errors``, ``learner_dropped``, ``runs_idle_closed``,
        ``open_runs``, ``senders``, ``per_sender``, and ``model_version`` / ``actors`` (model
        channel peers and the version each runs) / ``actors_dropped`` (forgotten after
        ``peer_timeout``)."""
        out = (self.collector.snapshot() if self._nats else
               self.collector.stats.snapshot())
        out["open_runs"] = len(self.collector.open_runs)
        out["model_version"] = self.publisher.version if self.publisher else None
        out["actors"] = getattr(self.publisher, "peers", {})
        out["actors_dropped"] = getattr(self.publisher, "dropped", 0)
        out["model_rejected"] = getattr(self.publisher, "rejected", 0)
        return out

    def trajectories(self, timeout: float | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches as they are committed, from every actor (``run_id`` and
        ``actor_id`` are columns). Stops when the server closes, or after ``timeout`` seconds
        without a batch. Only batches committed after this call are seen."""
        self._listening = True
        return self._iterate(timeout)

    def _iterate(self, timeout: float | None) -> Iterator[pa.RecordBatch]:
        while True:
            with self._arrived:
                if not self._arrived.wait_for(lambda: self._queue or self._closed, timeout):
                    return
                if not self._queue:
                    return
                _, batch = self._queue.popleft()
                self._queue_bytes -= batch.nbytes
            yield batch

    def publish_model(self, module: Any) -> int:
        """Publishes a ModelModule (or a path to one) to every actor; returns its version."""
        if self._closed:
            raise StateError("the server is closed")
        if self.publisher is None:
            raise ConfigError("this server publishes no models; create it with "
                              "models='tcp://*:50051' (serve --models ...)")
        return int(self.publisher.publish(module))

    def wait_for_rows(self, rows: int, timeout: float = 30.0) -> bool:
        """Waits until ``rows`` rows in all have been committed; True if they were."""
        deadline = time.monotonic() + timeout
        while self.collector.stats.snapshot()["rows"] < rows:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stops serving, completes the runs' files, joins every thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        forget_at_exit(self._exit_key)
        with self._arrived:
            self._arrived.notify_all()
        self._shutdown(timeout)

    def __enter__(self) -> TrainingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrainingServer(endpoint={self.endpoint!r}, sink={redact_url(self._sink_spec)!r})"

    # -- internals ---------------------------------------------------------------------------
    def _shutdown(self, timeout: float = 5.0) -> None:
        for part in (self.publisher, getattr(self, "collector", None)):
            if part is not None:
                part.close(timeout)
        if self._auth is not None:
            self._auth.stop()
        if self._ctx is not None:
            self._ctx.term()
            release_gc_thread()

    def _open_store(self, run_id: str, schema: pa.Schema) -> Any:
        spec = self._sink_spec
        if url_scheme(spec) == "arrow":
            root = spec[len("arrow://"):] if spec.startswith("arrow://") else spec
            return ArrowRunStore(root, run_id, schema, compression=self._compression,
                                 fsync=self._fsync)
        if url_scheme(spec) in ("zmq", "nats"):
            raise TransportError(f"a collector writes to a directory or a database, not to "
                                 f"another {url_scheme(spec).upper()} sink")
        return SinkRunStore(spec, self._state_dir, run_id, schema)

    def _arrive(self, batches: list[tuple[str, pa.RecordBatch]]) -> None:
        if not self._listening:
            return
        with self._arrived:
            self._queue.extend(batches)
            self._queue_bytes += sum(b.nbytes for _, b in batches)
            dropped = 0
            while len(self._queue) > 1 and (len(self._queue) > self._queue_max or
                                            self._queue_bytes > _LEARNER_QUEUE_BYTES):
                self._queue_bytes -= self._queue.popleft()[1].nbytes
                dropped += 1
            if dropped:
                self.collector.stats.learner_dropped += dropped
                log.warning("the learner is behind: %d batches dropped from its view (they "
                            "are in the dataset)", dropped)
            self._arrived.notify_all()
