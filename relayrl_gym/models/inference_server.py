"""`InferenceServer`: one batched policy serving many remote actors, hot-swapped between batches.

The SEED RL layout: actors send observation rows (`relayrl_gym.transport.inference.wire`), the
server gathers the requests of many clients into one batch (up to ``max_batch`` rows, or
when the oldest has waited ``max_wait_us``, or at once when every recently heard client is
waiting), runs one model call for it and answers each client with its actions, its extra
outputs and the model version that produced them.

Threads: one socket thread owns the ROUTER socket (receives, checks, batches, answers); model
threads (``workers``) take whole batches, read the current model from the `PolicyRunner`
once per batch, and hand the answers back through an in-process socket. A new model is
loaded and checked on the thread that offers it (`update_model`, a `ZMQModelSource` or
`NatsModelSource` following a learner) and swapped in between two batches: no request waits
for a load, and every answer names the version that computed it.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from typing import Any

import numpy as np
from gymnasium import spaces

from relayrl_gym.errors import ConfigError, StateError
from relayrl_gym.lifecycle import close_at_exit, forget_at_exit
from relayrl_gym.models.inference_backlog import Backlog, Pending
from relayrl_gym.models.inference_stats import InferenceStats
from relayrl_gym.models.nats_source import NatsModelSource
from relayrl_gym.models.runner import PolicyRunner
from relayrl_gym.models.zmq_source import ZMQModelSource
from relayrl_gym.policies.device import DeviceType
from relayrl_gym.transport._zmq import new_context, release_gc_thread, require_zmq
from relayrl_gym.transport.inference.endpoints import NatsEndpoint, ZmqEndpoint
from relayrl_gym.transport.inference.wire import (
    MAX_ROWS,
    Request,
    decode_request,
    encode_actions,
)
from relayrl_gym.transport.keys import client_keys, server_keys
from relayrl_gym.transport.nats.options import parse_nats_url
from relayrl_gym.transport.protocol import Kind, ProtocolViolation, decode_header, encode

__all__ = ["InferenceServer"]

log = logging.getLogger(__name__)

#: The largest message a client may send by default (observations of one request).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_IDLE_POLL_MS = 100
_NATS_START_WAIT = 5.0  # how long a NATS server's construction waits for its subscription


class InferenceServer:
    """Serves a ModelModule to many remote actors, batching their requests; hot-swappable.

    Clients are `RemotePolicy` objects, made for you wherever a policy is taken from a
    ``zmq+tcp://HOST:PORT`` URL (``wrap(env, policy=url)``, ``AgentBuilder().default_model(
    url)``, ``collect(policy=url)``, PettingZoo ``policies=``). Requests that do not fit the
    model (other observation shapes, a mask for a Box action space) and malformed messages
    are answered with an error naming the mismatch and counted; the server serves the others
    on. ``stats`` has the counters and percentiles; ``close()`` returns within seconds and
    leaves no thread behind.

    >>> import torch
    >>> from gymnasium import spaces
    >>> from relayrl_gym import ModelModule
    >>> from relayrl_gym.transport.inference.client import RemotePolicy
    >>> net = torch.nn.Linear(4, 2)
    >>> module = ModelModule.from_torch(net, spaces.Box(-1, 1, (4,)), spaces.Discrete(2))
    >>> with InferenceServer(module, bind="tcp://127.0.0.1:*") as server:
    ...     with RemotePolicy(server.url) as remote:
    ...         obs = np.zeros((3, 4), np.float32)
    ...         bool((remote.step(obs)[0] == module.step(obs)[0]).all()), remote.version
    (True, 0)
    """

    def __init__(self, model: Any, bind: str = "tcp://*:7780", *, models: str | None = None,
                 max_batch: int = 256, max_wait_us: int = 500, workers: int = 1,
                 device: DeviceType | str = DeviceType.DEFAULT,
                 curve_keys: str | os.PathLike[str] | None = None,
                 models_curve_keys: str | os.PathLike[str] | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        """Loads the model, binds the socket and starts serving.

        Args:
            model: a ModelModule or a path to one.
            bind: ``tcp://HOST:PORT`` (port ``*``: any free one; read `endpoint`).
            models: a learner's model channel to follow: ``tcp://HOST:PORT`` (a
                `TrainingServer`'s ``models=`` endpoint) or ``nats://HOST:PORT/STREAM`` (its
                model bucket); each newer model that fits is swapped in.
            max_batch: the most rows one model call takes (a larger request goes alone).
            max_wait_us: how long the oldest waiting request may wait for others to join its
                batch (microseconds). A batch goes at once when every client heard in the last
                second is waiting.
            workers: model threads (batches run at once; 1 suits one device).
            device: where a model given as a path (and each one received) is loaded: CPU,
                CUDA (falls back to the CPU with a warning where there is none), MPS.
            curve_keys: a key folder from ``relayrl-gym keygen``: only clients whose public
                key is in its ``authorized/`` folder get an answer (CurveZMQ).
            models_curve_keys: a client key folder for a ``models`` channel that requires
                CurveZMQ.
            max_message_bytes: larger requests are refused (ZMQ drops a client whose frame is
                over twice it).

        Raises:
            ConfigError: a bad argument, or a model that cannot be loaded.
            TransportError: the address cannot be bound.
        """
        for name, value, low in (("max_batch", max_batch, 1), ("max_wait_us", max_wait_us, 0),
                                 ("workers", workers, 1),
                                 ("max_message_bytes", max_message_bytes, 65536)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"`{name}` must be an int >= {low}, got {value!r}")
        zmq = require_zmq()
        self._zmq = zmq
        nats = bind.startswith(("nats://", "nats+tls://"))
        if nats and curve_keys is not None:
            raise ConfigError("`curve_keys` secures a tcp:// bind; over NATS, access is the NATS "
                              "server's (credentials in the URL)")
        device = DeviceType(device) if isinstance(device, str) else device
        self.runner = PolicyRunner(model, what="served model", owner="server", device=device)
        self.max_batch, self.max_wait = max_batch, max_wait_us / 1e6
        self.stats_counters = InferenceStats()
        self._space = self.runner.observation_space
        self._row_shape = tuple(self.runner.model.metadata.row_shape)
        self._discrete = isinstance(self.runner.action_space, spaces.Discrete)
        self._closed = False
        self._stop = threading.Event()
        self._jobs: queue.SimpleQueue[list[Pending] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[list[Pending], list[list[Any]], float, float]] = (
            queue.SimpleQueue())
        self._ctx = new_context()
        self._auth: Any = None
        self._endpoint: Any = None
        self.source: Any = None
        self._threads: list[threading.Thread] = []
        self._wake = f"inproc://relayrl-inference-{id(self)}"
        try:
            keys = None
            if curve_keys is not None:
                from zmq.auth.thread import ThreadAuthenticator

                keys = server_keys(curve_keys)
                self._auth = ThreadAuthenticator(self._ctx)
                self._auth.start()
                self._auth.configure_curve(domain="*", location=str(keys.authorized))
            self._endpoint = (
                NatsEndpoint(self._ctx, parse_nats_url(bind)) if nats else
                ZmqEndpoint(self._ctx, bind, keys, max_message_bytes))
            #: Where clients reach it (the bound ``tcp://`` address, or the NATS subject).
            self.endpoint = self._endpoint.endpoint
            self._max_message_bytes = max_message_bytes
            self._pull = self._ctx.socket(zmq.PULL)
            self._pull.setsockopt(zmq.LINGER, 0)
            self._pull.bind(self._wake)
            self._threads = [threading.Thread(target=self._serve, daemon=True,
                                              name="relayrl-inference-socket")]
            # One worker runs the model on the socket thread itself: no hand-off per batch
            # (requests keep arriving in ZMQ's queues meanwhile). More get threads of their own.
            self._inline = workers == 1
            self._threads += [threading.Thread(target=self._work, daemon=True,
                                               name=f"relayrl-inference-model-{i}")
                              for i in range(workers if workers > 1 else 0)]
            self._idle = workers
            for thread in self._threads:
                thread.start()
            if models is not None:
                self.source = self._follow(models, models_curve_keys)
            if nats and not self._endpoint.connected.wait(_NATS_START_WAIT):
                log.warning("serving %s once NATS is reachable (not yet: %s)", self.endpoint,
                            self._endpoint.problem)
        except BaseException:
            self._shutdown()
            raise
        self._exit_key = close_at_exit(self, InferenceServer.close)

    def _follow(self, models: str, keys_dir: str | os.PathLike[str] | None) -> Any:
        if models.startswith(("nats://", "nats+tls://")):
            return NatsModelSource(parse_nats_url(models), self.update_model,
                                   name="relayrl-inference-models")
        keys = client_keys(keys_dir) if keys_dir is not None else None
        return ZMQModelSource(models, self.update_model, keys=keys,
                              name="relayrl-inference-models")

    # -- public ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """A ``policy=`` URL for a client: ``zmq+tcp://127.0.0.1:PORT`` (this host), or the
        NATS URL bound (without its credentials)."""
        return str(self._endpoint.url)

    @property
    def version(self) -> int:
        """The version of the model answering now."""
        return self.runner.current()[1]

    @property
    def stats(self) -> dict[str, Any]:
        """`InferenceStats.snapshot`, with ``model_version``."""
        out = self.stats_counters.snapshot()
        out["model_version"] = self.version
        # Over NATS: requests dropped while the server was behind, answers not published.
        out["dropped"] = getattr(self._endpoint, "dropped", 0)
        out["unsent"] = getattr(self._endpoint, "unsent", 0)
        return out

    def update_model(self, model: Any) -> int:
        """Loads and checks ``model`` (a ModelModule or a path) beside the running one, then
        swaps it in between two batches; returns its version. A model whose spaces or extra
        outputs differ is refused (`ConfigError`) and the old one keeps serving."""
        if self._closed:
            raise StateError("the inference server is closed")
        version = self.runner.update(model)
        log.info("serving model version %d", version)
        return version

    def close(self, timeout: float = 5.0) -> None:
        """Stops serving and joins every thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        forget_at_exit(self._exit_key)
        self._shutdown(timeout)

    def __enter__(self) -> InferenceServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"InferenceServer(endpoint={self.endpoint!r}, version={self.version}, "
                f"max_batch={self.max_batch})")

    # -- the socket thread --------------------------------------------------------------------
    def _serve(self) -> None:
        zmq = require_zmq()
        endpoint = self._endpoint
        poller = zmq.Poller()
        for sock in endpoint.sockets:
            poller.register(sock, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        if endpoint.monitor is not None:
            poller.register(endpoint.monitor, zmq.POLLIN)
        answers = zmq.Poller()  # what is polled while the backlog is full: no new requests
        answers.register(self._pull, zmq.POLLIN)
        if endpoint.monitor is not None:
            answers.register(endpoint.monitor, zmq.POLLIN)
        backlog = Backlog()
        try:
            while not self._stop.is_set():
                timeout = 0 if endpoint.more else _IDLE_POLL_MS
                if backlog.pending and self._idle:
                    due = backlog.pending[0].arrived + self.max_wait - time.monotonic()
                    if 0 < due < 0.001:  # ZMQ polls in whole milliseconds
                        time.sleep(due)
                    timeout = max(0, min(timeout, int(due * 1000)))
                full = backlog.full
                events = dict((answers if full else poller).poll(timeout))
                if self._pull in events:
                    self._answer(backlog)
                if not full:
                    self._receive(backlog)
                if endpoint.monitor is not None and endpoint.monitor in events:
                    refused = endpoint.refused()
                    self.stats_counters.refused_auth += len(refused)
                    for line in refused:
                        log.warning("a client was refused: %s", line)
                self._dispatch(backlog)
        except Exception:  # a bug, not a client's doing: keep it visible
            log.exception("the inference server's socket thread stopped")
        finally:
            for _ in range(len(self._threads) - 1):
                self._jobs.put(None)

    def _receive(self, backlog: Backlog) -> None:
        for peer, reply_to, frames in self._endpoint.receive():
            now = time.monotonic()
            backlog.hear(peer, now)
            request_id: Any = 0
            try:
                if isinstance(frames, ProtocolViolation):
                    raise frames
                if not frames:
                    raise ProtocolViolation("a message needs a header frame")
                if sum(len(f) for f in frames) > self._max_message_bytes:
                    raise ProtocolViolation(f"the message is over the server's "
                                            f"{self._max_message_bytes}-byte limit; send "
                                            "fewer rows per request")
                header = decode_header(frames[0])
                request_id = header.fields.get("id", 0)
                if header.kind is Kind.INFO:
                    self._describe(peer, reply_to, header.integer("id"),
                                   header.fields.get("client"))
                    continue
                if header.kind is not Kind.ACT:
                    raise ProtocolViolation(f"the inference server takes info and act "
                                            f"requests, not {header.kind.value!r}")
                request = decode_request(header, frames[1:])
            except ProtocolViolation as err:
                self.stats_counters.failed(peer, malformed=True)
                self._refuse(reply_to, request_id, str(err))
                continue
            problem = self._misfit(request) or backlog.admit(Pending(peer, reply_to, request,
                                                                     now))
            if problem == "duplicate":  # sent again before its answer: it is coming
                self.stats_counters.duplicates += 1
            elif problem is not None:
                self.stats_counters.failed(peer, malformed=False)
                self._refuse(reply_to, request.id, problem)
            if backlog.full:
                return  # the rest waits in the transport's queues

    def _misfit(self, request: Request) -> str | None:
        """Why ``request`` does not fit the served model (None: it does)."""
        space = self._space
        obs = request.obs
        row_shape = self._row_shape
        if obs.shape[1:] != row_shape:
            return (f"observations of shape {obs.shape[1:]} do not fit the served model's "
                    f"observation space {space} (rows of shape {row_shape})")
        if obs.dtype.kind == "f" and isinstance(space, spaces.Box) and space.dtype.kind in "iub":
            return (f"observations of dtype {obs.dtype} do not fit the served model's "
                    f"observation space {space} (dtype {space.dtype})")
        if request.mask is not None:
            if not self._discrete:
                return (f"a mask was sent, but the served model's action space "
                        f"{self.runner.action_space} is not Discrete: send no mask")
            n = int(getattr(self.runner.action_space, "n", 0))
            if request.mask.shape[1] != n:
                return (f"the mask has {request.mask.shape[1]} columns; the served model's "
                        f"action space {self.runner.action_space} needs {n}")
            empty = np.flatnonzero(~request.mask.astype(np.bool_).any(axis=1))
            if len(empty):
                return (f"mask rows {empty[:10].tolist()} allow no action; every row needs "
                        "at least one allowed action")
        return None

    def _describe(self, peer: bytes, reply_to: Any, request_id: int, name: Any) -> None:
        self.stats_counters.client(peer, name if isinstance(name, str) else None)
        model, version = self.runner.current()
        self._endpoint.send(reply_to, [encode(Kind.DESCRIBED, id=request_id,
                                              metadata=model.metadata.to_json(),
                                              version=version, max_rows=MAX_ROWS)])

    def _refuse(self, reply_to: Any, request_id: Any, reason: str) -> None:
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            request_id = 0
        self._endpoint.send(reply_to, [encode(Kind.ERROR, id=request_id, reason=reason[:1000])])

    def _dispatch(self, backlog: Backlog) -> None:
        while self._idle and backlog.ready(time.monotonic(), self.max_batch, self.max_wait):
            job = backlog.take(self.max_batch)
            self.stats_counters.batch(sum(len(p.request.obs) for p in job))
            if self._inline:
                started = time.monotonic()
                replies = self._run(job)
                self._deliver(job, replies, started, time.monotonic(), backlog)
            else:
                self._idle -= 1
                self._jobs.put(job)

    def _answer(self, backlog: Backlog) -> None:
        zmq = self._zmq
        while True:  # one wake-up per batch done
            try:
                self._pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._idle += 1
            self._deliver(*self._done.get(), backlog)

    def _deliver(self, job: list[Pending], replies: list[list[Any]], started: float,
                 ended: float, backlog: Backlog) -> None:
        # Counted first: a client that has its answer finds it in the statistics.
        self.stats_counters.answered(
            [(item.peer, len(item.request.obs), started - item.arrived) for item in job],
            model=ended - started)
        for item, frames in zip(job, replies):
            self._endpoint.send(item.reply_to, frames)
            backlog.done(item)

    # -- the model threads ----------------------------------------------------------------------
    def _work(self) -> None:
        zmq = require_zmq()
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(self._wake)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                started = time.monotonic()
                replies = self._run(job)
                self._done.put((job, replies, started, time.monotonic()))
                try:
                    push.send(b"")
                except zmq.ContextTerminated:  # closed meanwhile: nobody to answer
                    return
        finally:
            push.close(0)

    def _run(self, job: list[Pending]) -> list[list[Any]]:
        """The answers to the requests of one batch, all computed by one model version."""
        model, version = self.runner.current()
        requests = [item.request for item in job]
        try:
            if len(requests) == 1 and len(requests[0].obs) > self.max_batch:
                parts = [self._run_long(model, requests[0])]
            else:
                parts = _step_many(model, requests)
        except Exception as err:
            if len(requests) == 1:
                return [self._failed(requests[0], err)]
            # One request's rows may be what fails (NaN observations): each alone, so that
            # only its own client gets the error.
            answers = []
            for request in requests:
                try:
                    ((actions, data),) = _step_many(model, [request])
                except Exception as own:
                    answers.append(self._failed(request, own))
                else:
                    answers.append(encode_actions(request.id, version, actions, data))
            return answers
        return [encode_actions(r.id, version, actions, data)
                for r, (actions, data) in zip(requests, parts)]

    def _run_long(self, model: Any, request: Request) -> tuple[np.ndarray, dict[str, Any]]:
        """A request of more than ``max_batch`` rows, in model calls of ``max_batch`` rows
        (the server closing stops between two)."""
        rng = None if request.seed is None else np.random.default_rng(request.seed)
        outputs = []
        for start in range(0, len(request.obs), self.max_batch):
            if self._stop.is_set():
                raise StateError("the inference server is closing")
            end = start + self.max_batch
            mask = None if request.mask is None else request.mask[start:end]
            outputs.append(model.step(request.obs[start:end], mask, rng=rng))
        actions = np.concatenate([a for a, _ in outputs])
        data = {key: np.concatenate([d[key] for _, d in outputs]) for key in outputs[0][1]}
        return actions, data

    def _failed(self, request: Request, err: Exception) -> list[Any]:
        self.stats_counters.model_errors += 1
        log.warning("the served model failed on a request of %d rows: %s", len(request.obs),
                    err)
        return [encode(Kind.ERROR, id=request.id,
                       reason=f"the served model failed on this request: {err}"[:1000])]

    # -- closing ------------------------------------------------------------------------------
    def _shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self.source is not None:
            self.source.close(timeout)
        if getattr(self, "runner", None) is not None:
            self.runner.close()  # a RemotePolicy it serves on: its call in flight stops
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._auth is not None:
            self._auth.stop()
        running = [t.name for t in self._threads if t.is_alive()]
        if running:  # a model call outlasting the timeout: its sockets stay theirs until it ends
            log.warning("closing the inference server while %s still run a model call; they "
                        "end with it", ", ".join(running))
            return
        if self._endpoint is not None:
            self._endpoint.close()
        if getattr(self, "_pull", None) is not None:
            self._pull.close(0)
        self._ctx.term()
        release_gc_thread()


def _step_many(model: Any, requests: list[Request]
               ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """One model call for the rows of ``requests``, each answered as ``step`` answers its rows
    alone (`ModelModule.step_many`); a policy object without ``step_many`` (a `RemotePolicy`
    served on) gets one ``step`` on the whole batch, cut into the requests' parts."""
    sizes = [len(r.obs) for r in requests]
    obs = requests[0].obs if len(requests) == 1 else np.concatenate([r.obs for r in requests])
    masks = [r.mask for r in requests]
    given = any(m is not None for m in masks)
    if hasattr(model, "step_many"):
        rngs = [None if r.seed is None else np.random.default_rng(r.seed) for r in requests]
        return list(model.step_many(obs, sizes, masks=masks if given else None, rngs=rngs))
    mask = None
    if given:
        n = next(m.shape[1] for m in masks if m is not None)
        mask = np.concatenate([np.ones((size, n), np.bool_) if m is None else m
                               for m, size in zip(masks, sizes)])
    actions, data = model.step(obs, mask)
    bounds = np.cumsum([0, *sizes])
    return [(actions[a:b], {k: np.asarray(v)[a:b] for k, v in data.items()})
            for a, b in itertools.pairwise(bounds)]
