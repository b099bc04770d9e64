"""`FleetWorker`: what runs in each worker process of a `Fleet` (a Ray actor): the same engine as
``wrap`` in one process (actors, router, recorder, model sources), driven by a
`CollectionLoop`, its own run recorded to the fleet's sink."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from relayrl_gym.collection.loop import CollectionLoop, split_policy
from relayrl_gym.transport.models import as_model_module
from relayrl_gym.wrap import wrap

__all__ = ["FleetWorker", "model_files", "write_model_files"]


def model_files(module: Any) -> dict[str, bytes]:
    """A ModelModule (or a path to one) as its saved files, to ship to worker processes."""
    module = as_model_module(module, "a fleet")
    with tempfile.TemporaryDirectory(prefix="relayrl-fleet-model-") as tmp:
        folder = Path(module.save(Path(tmp) / "model"))
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def write_model_files(files: dict[str, bytes], into: Path) -> Path:
    """Writes shipped model files into a new folder under ``into``; returns the folder."""
    folder = Path(tempfile.mkdtemp(prefix="model-", dir=into))
    for name, data in files.items():
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"a shipped model file must be a plain name, got {name!r}")
        (folder / name).write_bytes(data)
    return folder


class FleetWorker:
    """One worker: ``open`` builds its wrapped env (its own run: ``run_id``), ``run`` drives it
    until a number of transitions or episodes or `stop`, ``stats`` may be asked meanwhile (a
    threaded Ray actor), ``update_model`` swaps a model in between two steps, ``close``
    flushes and closes. A Ray actor restarted after its process died starts again at
    ``open``, as a new run.
    """

    def __init__(self, index: int, env: Any, actors: int, sink: Any,
                 policy: dict[str, bytes] | Any | None, seed: int | None,
                 wrap_kwargs: dict[str, Any]) -> None:
        self.index = index
        self._env, self._actors, self._sink = env, actors, sink
        self._policy, self._seed, self._wrap_kwargs = policy, seed, wrap_kwargs
        self._tmp = Path(tempfile.mkdtemp(prefix=f"relayrl-fleet-w{index}-"))
        self._stop = threading.Event()
        self._idle = threading.Event()  # no `run` going on
        self._idle.set()
        self._envs: Any = None
        self._loop: CollectionLoop | None = None
        self._started = 0.0
        self.run_id = ""

    def open(self, run_id: str) -> dict[str, Any]:
        """Builds the env and its actors, recording as ``run_id``; what and where it is."""
        policy = self._policy
        if isinstance(policy, dict):
            policy = write_model_files(policy, self._tmp)
        module, function = split_policy(policy)
        self._envs = wrap(self._env, self._actors, sink=self._sink, policy=module,
                          run_id=run_id, **self._wrap_kwargs)
        self.run_id = run_id
        self._loop = CollectionLoop(self._envs, function, seed=self._seed,
                                    uses_module=module is not None)
        self._stop.clear()
        self._started = time.perf_counter()
        return {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                "node": _node_id(),
                "run_path": str(self._envs.run_path) if self._envs.run_path else None}

    def run(self, steps: int | None = None, episodes: int | None = None) -> dict[str, Any]:
        """Collects until ``steps`` transitions or ``episodes`` episodes (this run's), or
        `stop`; returns `stats`."""
        if self._loop is None:
            raise RuntimeError("FleetWorker.run() before open()")
        self._idle.clear()
        try:
            self._loop.run(steps=steps, episodes=episodes, stop=self._stop)
        finally:
            self._idle.set()
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """This run's counters: steps, episodes, the sum and sum of squares of their returns,
        the mean of the last 100, steps/s, the model version each actor runs."""
        loop = self._loop
        steps, returns = loop.snapshot() if loop is not None else (0, [])
        elapsed = time.perf_counter() - self._started if loop is not None else 0.0
        try:
            versions = [int(v) for v in self._envs.agent.get_model_version()]
        except Exception:  # not open, or closed meanwhile
            versions = []
        recent = returns[-100:]
        return {"run_id": self.run_id, "steps": steps, "episodes": len(returns),
                "return_sum": float(sum(returns)),
                "return_sq": float(sum(r * r for r in returns)),
                "mean_return": sum(recent) / len(recent) if recent else float("nan"),
                "steps_per_second": steps / elapsed if elapsed > 0 else 0.0,
                "model_versions": versions, "pid": os.getpid()}

    def update_model(self, files: dict[str, bytes]) -> int:
        """Swaps in a shipped model between two steps; returns the version it runs as."""
        if self._envs is None:
            raise RuntimeError("FleetWorker.update_model() before open()")
        return int(self._envs.agent.update_model(str(write_model_files(files, self._tmp))))

    def stop(self) -> None:
        """Ends `run` after the step it is taking."""
        self._stop.set()

    def close(self) -> dict[str, Any]:
        """Stops, flushes every recorded row to the sink and closes; the final `stats`."""
        self._stop.set()
        self._idle.wait(60)  # the step in flight is counted in what close reports
        final = self.stats()
        if self._envs is not None:
            self._envs.close()
        return final

    def pid(self) -> int:
        return os.getpid()


def _node_id() -> str:
    """The Ray node this worker runs on ("" outside Ray)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return ""
