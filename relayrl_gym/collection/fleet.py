"""`Fleet`: workers collecting on a Ray cluster, each a process running ``wrap(env, actors)``
recording its own run to a sink they share; placed by Ray, restarted by Ray when they die."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from relayrl_gym.collection.worker import FleetWorker, model_files
from relayrl_gym.errors import ConfigError, MissingDependencyError, StateError
from relayrl_gym.runtime.agent import new_run_id
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT, Sink, redact_url, url_scheme
from relayrl_gym.transport.inference.client import is_remote_policy

__all__ = ["Crash", "Fleet", "FleetSummary", "collect_with_fleet", "require_ray"]

_POLL = 0.5  # seconds between looks at the workers (progress, crashes)
_FLEET_OPTIONS = ("num_cpus", "num_gpus", "resources", "strategy", "ray_address", "ray_init",
                  "max_restarts", "shared_filesystem", "start_timeout")


def require_ray() -> Any:
    """The ``ray`` module, or an error naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise MissingDependencyError(
            'backend="ray" needs Ray: pip install "relayrl-gym[ray]"') from err
    return ray


@dataclass(frozen=True)
class Crash:
    """A worker process that died: its run, the steps it had reported, and what it may have
    lost (the rows of at most its last ``flush_interval`` seconds that were not yet written)."""

    worker: int
    run_id: str
    steps_reported: int
    lost_at_most_seconds: float


@dataclass(frozen=True)
class FleetSummary:
    """What a fleet collected: runs (one per worker start), counts, returns, restarts."""

    run_ids: tuple[str, ...]
    steps: int
    episodes: int
    mean_return: float
    std_return: float
    seconds: float
    workers: int
    restarts: int = 0
    crashes: tuple[Crash, ...] = ()
    #: Workers Ray could not restart any more (``max_restarts`` used up).
    lost_workers: tuple[int, ...] = ()
    sink: str = ""
    per_worker: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self) -> str:
        lines = [f"{self.workers} workers, {len(self.run_ids)} runs: {self.steps} steps, "
                 f"{self.episodes} episodes, return {self.mean_return:.2f} +/- "
                 f"{self.std_return:.2f}, {self.steps_per_second:.0f} steps/s"]
        if self.crashes:
            lines.append(f"{self.restarts} restarts: " + "; ".join(
                f"worker {c.worker} (run {c.run_id}) died after {c.steps_reported} reported "
                f"steps, losing at most its last {c.lost_at_most_seconds:g} s of rows"
                for c in self.crashes))
        if self.lost_workers:
            lines.append(f"workers {list(self.lost_workers)} died too often and were not "
                         "restarted")
        if self.sink:
            lines.append(f"data: {self.sink}")
        return "\n".join(lines)


def shareable_sink(sink: Any, nodes: int, shared_filesystem: bool) -> Any:
    """``sink`` as every worker can open it (directories made absolute), or `ConfigError`
    when workers cannot share it."""
    if sink is None:
        return None
    if isinstance(sink, list | tuple):
        return [shareable_sink(s, nodes, shared_filesystem) for s in sink]
    if isinstance(sink, Sink):
        raise ConfigError("a fleet's workers open their sinks themselves: give the sink as a "
                          "URL or a directory, not a Sink object")
    spec = str(sink)
    scheme = url_scheme(spec)
    if scheme == "sqlite":
        raise ConfigError(f"{redact_url(spec)} cannot be shared by a fleet's worker processes "
                          "(one SQLite file, on one host): record to PostgreSQL, a NATS stream "
                          "(nats://...), a ZMQ collector (zmq+tcp://...) or a directory")
    if scheme == "arrow":
        path = Path(spec[len("arrow://"):] if spec.startswith("arrow://") else spec).resolve()
        if nodes > 1 and not shared_filesystem:
            raise ConfigError(
                f"the directory {str(path)!r} is local to each of the {nodes} nodes of this "
                "Ray cluster: every node would keep its workers' runs to itself. Record to a "
                "NATS stream, a ZMQ collector or PostgreSQL, or pass shared_filesystem=True "
                "if the directory is on a filesystem every node shares")
        return str(path)
    return spec


class Fleet:
    """Workers collecting at once, each a Ray actor running ``wrap(env, actors, sink=...)``.

    Each worker records a run of its own (``<run id>-w<i>``; a restarted worker a new one,
    ``-w<i>r<n>``) to ``sink``, which they share: a NATS stream, a ZMQ collector, PostgreSQL,
    or a directory (one run directory per worker). Workers are placed by Ray (``strategy``:
    ``"SPREAD"`` by default; a placement group strategy may be given), each with ``num_cpus``,
    ``num_gpus`` and custom ``resources``. A worker whose process dies is restarted by Ray (up
    to ``max_restarts`` times) and goes on as a new run: what it had written is kept, what it
    had not flushed yet (at most its last flush interval) is lost, and nothing is recorded
    twice; the summary lists each crash.

    With a policy (a ModelModule or a path: shipped to the workers as files; an inference
    server's ``zmq+tcp://`` URL: each worker asks it), each worker
    follows the model channel of its sink like any wrapped env (a learner's
    ``publish_model`` reaches every worker); `update_model` swaps a model in on every worker.

    ``run(steps=...)`` collects a number of transitions (shared among the workers) and stops;
    ``start()`` runs them until `stop` (`stats` meanwhile, `scale` to add or remove workers).
    ``stop()`` flushes and closes every worker and returns the `FleetSummary`.
    """

    def __init__(self, env: Any, policy: Any = None, *, workers: int = 2, actors: int = 4,
                 sink: Any = DEFAULT_SINK_ROOT, seed: int | None = None,
                 backend: str = "ray", num_cpus: float = 1, num_gpus: float = 0,
                 resources: dict[str, float] | None = None, strategy: Any = "SPREAD",
                 ray_address: str | None = None, ray_init: dict[str, Any] | None = None,
                 max_restarts: int = 3, shared_filesystem: bool = False,
                 start_timeout: float = 120.0, **wrap_kwargs: Any) -> None:
        """Describes the fleet; nothing starts before `start` or `run`.

        Args:
            env: a Gymnasium env id, or a picklable callable making the env (it is made in
                each worker process).
            policy: a ModelModule, a path to one, or a picklable function ``obs -> actions``;
                None: random actions.
            workers: worker processes.
            actors: env copies per worker.
            sink: what the workers record to (shareable: see the class).
            seed: worker i's env j gets ``seed + i * actors + j``.
            backend: ``"ray"`` (the only one).
            num_cpus: CPUs Ray reserves for each worker.
            num_gpus: GPUs Ray reserves for each worker.
            resources: custom Ray resources each worker needs.
            strategy: Ray's scheduling strategy for the workers.
            ray_address: the Ray cluster to join (``"auto"``: the running one; None: a local
                one is started unless Ray is initialized already).
            ray_init: more keyword arguments for ``ray.init``.
            max_restarts: times Ray restarts a worker whose process died.
            shared_filesystem: a directory sink is on a filesystem every node shares.
            start_timeout: seconds a worker may take to be placed and build its envs.
            **wrap_kwargs: passed to each worker's `relayrl_gym.wrap`.
        """
        if backend != "ray":
            raise ConfigError(f"a Fleet runs on Ray: `backend` must be 'ray', got {backend!r}")
        for name, value in (("workers", workers), ("actors", actors)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{name}` must be an int >= 1, got {value!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or \
                max_restarts < 0:
            raise ConfigError(f"`max_restarts` must be an int >= 0, got {max_restarts!r}")
        self.env, self.actors, self.seed = env, actors, seed
        self.workers_wanted = workers
        self.sink = sink
        self.policy = policy
        self.max_restarts = max_restarts
        self.shared_filesystem = shared_filesystem
        self.start_timeout = float(start_timeout)
        self.wrap_kwargs = wrap_kwargs
        self.flush_interval = float(wrap_kwargs.get("flush_interval", 1.0))
        self._options = {"num_cpus": num_cpus, "num_gpus": num_gpus,
                         "resources": resources or {}, "scheduling_strategy": strategy,
                         "max_restarts": max_restarts, "max_task_retries": 0,
                         "max_concurrency": 4}
        self._ray_address, self._ray_init = ray_address, dict(ray_init or {})
        self._ray: Any = None
        self._base = new_run_id(env if isinstance(env, str) else None)
        self._handles: dict[int, Any] = {}
        #: Where each worker's current run is: ``run_id``, ``pid``, ``host``, Ray ``node``.
        self.placements: dict[int, dict[str, Any]] = {}
        self._runs: dict[int, str] = {}
        self._starts: dict[int, int] = {}
        self._last: dict[int, dict[str, Any]] = {}
        self._finals: list[dict[str, Any]] = []
        self._crashes: list[Crash] = []
        self._lost: list[int] = []
        self._next = 0
        self._started_at = 0.0
        self._sink: Any = None
        self._policy: Any = None
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Fleet:
        """Starts the workers, collecting until `stop`."""
        self._open()
        for index in list(self._handles):
            self._handles[index].run.remote()  # until stop: its end is not waited for
        return self

    def run(self, steps: int | None = None, episodes: int | None = None,
            progress: bool = False) -> FleetSummary:
        """Collects ``steps`` transitions or ``episodes`` episodes in all (shared among the
        workers), then stops (every worker flushed and closed) and returns the summary. A
        Ctrl-C stops the fleet the same way, then goes on."""
        if steps is None and episodes is None:
            raise ConfigError("pass `steps=` or `episodes=` to say when collection stops")
        self._open()
        shares = _shares(steps if steps is not None else episodes, len(self._handles))
        key = "steps" if steps is not None else "episodes"
        bar = tqdm(total=steps or episodes, unit="step" if steps else "episode",
                   disable=not progress, dynamic_ncols=True)
        try:
            self._supervise(dict(zip(self._handles, shares)), key, bar)
        finally:
            bar.close()
        return self.stop()

    def stop(self) -> FleetSummary:
        """Stops every worker after its current step, flushes and closes it; the summary."""
        if self._stopped:
            raise StateError("the fleet is stopped already")
        self._stopped = True
        if self._ray is None:
            return self._summary()
        ray = self._ray
        for handle in self._handles.values():
            with contextlib.suppress(Exception):
                handle.stop.remote()
        closing = {i: h.close.remote() for i, h in self._handles.items()}
        for index, ref in closing.items():
            try:
                self._finals.append(ray.get(ref, timeout=60))
            except Exception:  # died meanwhile: what it reported last
                if index in self._last:
                    self._finals.append(self._last[index])
        for handle in self._handles.values():
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        self._handles.clear()
        return self._summary()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._stopped:
            self.stop()

    # -- while running --------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """Per worker (``workers``: steps, episodes, mean return, steps/s, model versions,
        run) and in all (``steps``, ``episodes``, ``steps_per_second``, ``restarts``)."""
        if self._ray is None:
            return {"workers": {}, "steps": 0, "episodes": 0, "steps_per_second": 0.0,
                    "restarts": 0}
        self._poll()
        per = dict(self._last)
        return {"workers": per,
                "steps": sum(s["steps"] for s in per.values()) + self._done("steps"),
                "episodes": sum(s["episodes"] for s in per.values()) + self._done("episodes"),
                "steps_per_second": sum(s["steps_per_second"] for s in per.values()),
                "restarts": len(self._crashes)}

    def scale(self, workers: int) -> None:
        """Adds workers (collecting until `stop`) or stops and closes the last ones."""
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"`workers` must be an int >= 1, got {workers!r}")
        self._check_running()
        while len(self._handles) < workers:
            index = self._add_worker()
            self._handles[index].run.remote()
        while len(self._handles) > workers:
            index = max(self._handles)
            handle = self._handles.pop(index)
            handle.stop.remote()
            self._finals.append(self._ray.get(handle.close.remote(), timeout=60))
            self._last.pop(index, None)
            self._ray.kill(handle, no_restart=True)

    def update_model(self, module: Any) -> list[int]:
        """Swaps ``module`` (a ModelModule or a path to one) in on every worker between two
        steps; the version each runs it as."""
        self._check_running()
        files = model_files(module)
        return [int(v) for v in self._ray.get([h.update_model.remote(files)
                                               for h in self._handles.values()], timeout=120)]

    # -- internals ----------------------------------------------------------------------------
    def _check_running(self) -> None:
        if self._ray is None or self._stopped:
            raise StateError("the fleet is not running: call start() first")

    def _open(self) -> None:
        if self._stopped:
            raise StateError("the fleet is stopped; make a new one")
        if self._ray is not None:
            return
        ray = require_ray()
        if not ray.is_initialized():
            ray.init(address=self._ray_address, **{"log_to_driver": False,
                                                  **self._ray_init})
        self._ray = ray
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        self._sink = shareable_sink(self.sink, nodes, self.shared_filesystem)
        policy = self.policy
        if policy is not None and not is_remote_policy(policy) and (
                isinstance(policy, str | os.PathLike) or hasattr(policy, "save")):
            policy = model_files(policy)  # loaded in each worker from its own copy
        self._policy = policy
        self._remote = ray.remote(**self._options)(FleetWorker)
        self._started_at = time.perf_counter()
        for _ in range(self.workers_wanted):
            self._add_worker()

    def _add_worker(self) -> int:
        index = self._next
        self._next += 1
        seed = None if self.seed is None else self.seed + index * self.actors
        handle = self._remote.remote(index, self.env, self.actors, self._sink, self._policy,
                                     seed, self.wrap_kwargs)
        self._handles[index] = handle
        self._starts[index] = 0
        self._open_worker(index)
        return index

    def _open_worker(self, index: int) -> None:
        run_id = f"{self._base}-w{index}" + (f"r{self._starts[index]}"
                                              if self._starts[index] else "")
        try:
            self.placements[index] = self._ray.get(self._handles[index].open.remote(run_id),
                                                   timeout=self.start_timeout)
        except self._ray.exceptions.RayTaskError as err:  # the env or policy failed there
            self._abort()
            raise err.as_instanceof_cause() from None
        except self._ray.exceptions.GetTimeoutError:
            self._abort()
            needs = {k: v for k, v in self._options.items()
                     if k in ("num_cpus", "num_gpus", "resources") and v}
            raise StateError(
                f"worker {index} did not start within {self.start_timeout:g} s: the Ray "
                f"cluster has no room for another worker asking {needs} (it has "
                f"{self._ray.cluster_resources()}). Lower num_cpus or workers, add "
                "nodes, or give start_timeout= more time") from None
        self._runs[index] = run_id

    def _abort(self) -> None:
        for handle in self._handles.values():
            with contextlib.suppress(Exception):
                self._ray.kill(handle, no_restart=True)
        self._handles.clear()
        self._stopped = True

    def _poll(self) -> None:
        """Asks every worker for its counters (a dead one keeps its last answer)."""
        refs = {h.stats.remote(): i for i, h in self._handles.items()}
        ready, _ = self._ray.wait(list(refs), num_returns=len(refs), timeout=2.0)
        for ref in ready:
            index = refs[ref]
            with contextlib.suppress(Exception):
                stats = self._ray.get(ref)
                # A restarted worker answers before it is opened again: not its run's counters.
                if stats.get("run_id") == self._runs.get(index):
                    self._last[index] = stats

    def _done(self, key: str) -> int:
        """``key`` summed over the runs that ended (closed or crashed)."""
        return sum(int(f[key]) for f in self._finals)

    def _supervise(self, shares: dict[int, int], key: str, bar: Any) -> None:
        """Runs each worker to its share, restarting the ones that die, until all are done."""
        ray = self._ray
        calls = {i: self._handles[i].run.remote(**{key: shares[i]}) for i in shares}
        owner = {ref: i for i, ref in calls.items()}
        shown = 0
        try:
            while owner:
                ready, _ = ray.wait(list(owner), num_returns=1, timeout=_POLL)
                self._poll()
                total = sum(int(self._last.get(i, {}).get(key, 0)) for i in self._handles) + \
                    self._done(key)
                bar.update(max(total - shown, 0))
                shown = max(total, shown)
                for ref in ready:
                    index = owner.pop(ref)
                    try:
                        self._last[index] = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        again = self._restarted(index, shares, key)
                        if again is not None:
                            owner[again] = index
                    except ray.exceptions.RayTaskError as err:
                        self._abort()
                        raise err.as_instanceof_cause() from None
        except KeyboardInterrupt:
            pass  # `run` stops the fleet (every worker flushed) and returns its summary

    def _restarted(self, index: int, shares: dict[int, int], key: str) -> Any:
        """A worker died mid-run: counts the crash, opens its restarted actor as a new run
        and gives it the rest of its share; None when Ray gave up on it."""
        last = self._last.pop(index, None) or {"steps": 0, "episodes": 0, "return_sum": 0.0,
                                               "return_sq": 0.0}
        self._crashes.append(Crash(index, self._runs.get(index, "?"), int(last["steps"]),
                                   self.flush_interval))
        self._finals.append({**last, "run_id": self._runs.get(index, "?"), "crashed": True})
        shares[index] = max(shares[index] - int(last[key]), 0)
        self._starts[index] += 1
        if self._starts[index] > self.max_restarts:
            self._lost.append(index)
            self._handles.pop(index, None)
            return None
        try:
            self._open_worker(index)
        except self._ray.exceptions.RayActorError:
            self._lost.append(index)
            self._handles.pop(index, None)
            return None
        if shares[index] == 0:
            return None
        return self._handles[index].run.remote(**{key: shares[index]})

    def _summary(self) -> FleetSummary:
        count = self._done("episodes")
        total = sum(float(f.get("return_sum", 0.0)) for f in self._finals)
        squares = sum(float(f.get("return_sq", 0.0)) for f in self._finals)
        mean = total / count if count else math.nan
        std = math.sqrt(max(squares / count - mean * mean, 0.0)) if count else math.nan
        sink = self._sink if isinstance(self._sink, str) else ""
        return FleetSummary(
            run_ids=tuple(dict.fromkeys(f["run_id"] for f in self._finals if f.get("run_id"))),
            steps=self._done("steps"), episodes=count, mean_return=mean,
            std_return=std, seconds=time.perf_counter() - self._started_at,
            workers=self._next, restarts=len(self._crashes), crashes=tuple(self._crashes),
            lost_workers=tuple(self._lost), sink=redact_url(sink),
            per_worker=tuple(self._finals))


def _shares(total: int | None, workers: int) -> list[int]:
    """``total`` split as evenly as it goes among ``workers``."""
    assert total is not None
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def collect_with_fleet(env: Any, policy: Any, *, actors: int, steps: int | None,
                       episodes: int | None, sink: Any, seed: int | None, progress: bool,
                       workers: int, **kwargs: Any) -> FleetSummary:
    """`relayrl_gym.collect` with ``workers`` / ``backend="ray"``: a `Fleet` run to the
    totals."""
    options = {k: kwargs.pop(k) for k in _FLEET_OPTIONS if k in kwargs}
    fleet = Fleet(env, policy, workers=workers, actors=actors, sink=sink, seed=seed,
                  **options, **kwargs)
    return fleet.run(steps=steps, episodes=episodes, progress=progress)
