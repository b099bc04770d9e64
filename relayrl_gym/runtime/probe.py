"""Measures an environment to pick the router mode: inline for cheap steps, threads for slow,
GIL-releasing ones."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relayrl_gym.runtime.worker import ActorThread

__all__ = ["ProbeResult", "probe_router_scale"]

#: Steps timed on the probe env (stops earlier once ``_PROBE_SECONDS`` are spent).
_PROBE_STEPS = 32
_PROBE_SECONDS = 0.25
#: Threads must win by this factor to be chosen: hand-off costs vary from run to run.
_MARGIN = 0.7


@dataclass(frozen=True)
class ProbeResult:
    """What the probe measured, and the router scale it chose."""

    step_seconds: float
    gil_free_fraction: float
    handoff_seconds: float
    scale: int

    def describe(self) -> str:
        return (f"step {self.step_seconds * 1e6:.0f} us, GIL free {self.gil_free_fraction:.0%} of "
                f"it, thread hand-off {self.handoff_seconds * 1e6:.0f} us -> router_scale="
                f"{self.scale}")


def _time_handoff(rounds: int = 20) -> float:
    thread = ActorThread("relayrl-probe")
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            thread.submit(int)
            thread.wait()
        return (time.perf_counter() - start) / rounds
    finally:
        thread.stop()


def _step_loop(env: Any, deadline_steps: int, seconds: float) -> tuple[float, float]:
    """Steps ``env``; returns the median step time (one preempted step does not sway it)
    and the time spent."""
    env.reset(seed=0)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < deadline_steps and time.perf_counter() - start < seconds:
        before = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        times.append(time.perf_counter() - before)
        if terminated or truncated:
            env.reset()
    return statistics.median(times), time.perf_counter() - start


def _spin(stop: threading.Event) -> int:
    count = 0
    while not stop.is_set():
        count += 1
    return count


def _spin_beside(work: Callable[[], Any]) -> float:
    """Spins a counting loop on another thread while ``work`` runs here: counts per second."""
    stop = threading.Event()
    counted: list[int] = []
    spinner = threading.Thread(target=lambda: counted.append(_spin(stop)),
                               name="relayrl-probe-spin")
    started = time.perf_counter()
    spinner.start()
    try:
        work()
    finally:
        stop.set()
        spinner.join()
    return counted[0] / (time.perf_counter() - started)


def probe_router_scale(env_fn: Callable[[], Any], num_actors: int) -> ProbeResult:
    """Times a throw-away copy of the env and predicts inline vs threaded vector-step time.

    Inline costs ``N * s``; threaded costs about ``N * s * (1 - f) + s * f + N * h`` for a step
    time ``s`` of which a fraction ``f`` runs without the GIL, and a hand-off ``h``. ``f`` is
    measured directly: a Python loop on another thread counts how far it gets while the env steps
    here (on the thread that made it), against how far it gets alone.
    """
    if num_actors < 2:  # nothing to run in parallel
        return ProbeResult(0.0, 0.0, 0.0, 0)
    handoff = _time_handoff()
    env = env_fn()
    try:
        _step_loop(env, 4, _PROBE_SECONDS)  # warm-up (imports, caches)
        step, elapsed = _step_loop(env, _PROBE_STEPS, _PROBE_SECONDS)
        if step < handoff / (1 - _MARGIN):  # a hand-off costs more than threads could win
            return ProbeResult(step, 0.0, handoff, 0)
        # The env stays on this thread (the one that made it); the spinner runs beside it.
        solo = _spin_beside(lambda: time.sleep(min(elapsed, _PROBE_SECONDS)))
        shared = _spin_beside(lambda: _step_loop(env, _PROBE_STEPS, _PROBE_SECONDS))
        # A step that holds the GIL throughout leaves the spinner half of the time (the two
        # threads alternate at each switch interval); one that never holds it leaves all of it.
        free = min(1.0, max(0.0, 2.0 * shared / solo - 1.0)) if solo > 0 else 0.0
    finally:
        env.close()
    inline = num_actors * step
    threaded = num_actors * step * (1 - free) + step * free + num_actors * handoff
    scale = num_actors if threaded < _MARGIN * inline else 0
    return ProbeResult(step, free, handoff, scale)
