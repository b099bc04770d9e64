"""Inference server vs local policies (issue #21): many actor processes acting through one
batched `InferenceServer`, against each process running its own ModelModule.

Setup: ``--clients`` actor processes (default 8), each ``relayrl_gym.wrap(ENV, actors=N,
policy=..., sink=None)`` looping ``obs, *_ = envs.step(envs.act())``. Two workloads:

- cartpole-mlp: CartPole-v1, ``--envs`` copies per client (default 8), an MLP 4 -> 64 -> 64 -> 2
  (tanh; ONNX, argmax head);
- atari-cnn: a synthetic Atari-like env defined here (uint8 84x84x4 frames cycled from 16
  pre-drawn ones, Discrete(6), 1000-step episodes: almost free, so the policy dominates),
  ``--cnn-envs`` copies per client (default 4), the Nature-CNN (conv 32 8x8/4, 64 4x4/2,
  64 3x3/1, FC 512, 6 outputs; ONNX, argmax head) on the frames scaled to [0, 1].

Two modes per workload, interleaved over ``--rounds`` (server, local, server, local, ...):

- server: one `InferenceServer` (``max_batch``/``max_wait_us`` from ``--max-batch`` /
  ``--max-wait-us``, the model on ``--device``) and every client using
  ``policy="zmq+tcp://127.0.0.1:PORT"``;
- local: every client loading the model directory itself (``policy=MODEL_DIR``; CPU).

The server runs in this (the parent) process, one fresh server per round so its counters are
that round's. It is fair: during a run the parent does nothing but wait on a queue (blocked,
no CPU, no GIL held), so the server's socket and model threads have the process to
themselves, as under ``relayrl-gym serve-policy`` (same class, same threads); in both modes the
clients are the same processes (a pool spawned once, so imports are paid once) and the machine
runs the same number of busy processes plus, in server mode, the server. Running it here also
reads ``server.stats`` and ``server.runner.model.device`` directly instead of parsing lines.
(Checked once on the 2-core machine: clients of a ``serve-policy`` subprocess got the same
steps/s and latencies as of the in-parent server, within 5%, interleaved over 3 rounds.)

A round of one mode: each client builds its wrapped env (connecting to the server or loading
the model), resets it and takes ``--warmup`` steps, then all start together and step for
``--seconds``; nothing before that start is timed. Reported per mode (median over rounds):
total env steps/s (the sum over clients of env steps / their own elapsed time), the latency
of ``envs.act()`` as the clients saw it (p50 / p99 over every call of every client: for the
server, the round trip; for local, the model call), and for the server its mean batch (rows
per model call during the timed window; counters read before the start and after the end),
the batch size histogram, and its own wait / model-call percentiles (those include warm-up
requests). ONNX sessions use ``RELAYRL_GYM_ONNX_THREADS`` intra-op threads (default 1) in
clients and server alike; ``--server-threads N`` gives the server N instead.

On a 2-core machine 8 clients already saturate the CPU, so the server competes with them for
cores; batching pays where one model call on many rows costs much less than many calls on
few rows (a large model, a GPU: ``--device cuda``).

Run: python benchmarks/inference_server.py [--clients 8] [--envs 8] [--cnn-envs 4]
     [--seconds 5] [--rounds 3] [--device cpu] [--max-batch 256] [--max-wait-us 500]
     [--server-threads N] [--workloads cartpole-mlp,atari-cnn] [--latency] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import relayrl_gym
from relayrl_gym.policies.onnx_backend import CPU_THREADS_ENV

TIMEOUT = 120.0  # seconds the parent waits for a client's answer before giving up


class SyntheticAtari(gym.Env):
    """Atari-shaped and nearly free: uint8 84x84x4 frames cycled from 16 pre-drawn ones,
    Discrete(6) actions, reward 0, truncated after 1000 steps."""

    observation_space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
    action_space = gym.spaces.Discrete(6)
    _frames: np.ndarray | None = None

    def __init__(self) -> None:
        if SyntheticAtari._frames is None:
            SyntheticAtari._frames = np.random.default_rng(0).integers(
                0, 256, (16, 84, 84, 4), dtype=np.uint8)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._frames[0], {}

    def step(self, action):
        self._t += 1
        return self._frames[self._t % 16], 0.0, False, self._t >= 1000, {}


ENVS: dict[str, Any] = {"CartPole-v1": "CartPole-v1", "synthetic-atari": SyntheticAtari}


# -- the models (the parent only: clients never import torch) ----------------------------------
def export_mlp(path: Path) -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, 2))
    env = gym.make("CartPole-v1")
    relayrl_gym.ModelModule.from_torch(net, env.observation_space, env.action_space, path=path)
    env.close()


def export_cnn(path: Path) -> None:
    import torch
    from torch import nn

    class NatureCNN(nn.Module):
        def __init__(self, actions: int) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2),
                nn.ReLU(), nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(),
                nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, actions))

        def forward(self, obs: torch.Tensor) -> torch.Tensor:  # (B, 84, 84, 4), float
            return self.net(obs.permute(0, 3, 1, 2) / 255.0)

    torch.manual_seed(0)
    relayrl_gym.ModelModule.from_torch(NatureCNN(6), SyntheticAtari.observation_space,
                                       SyntheticAtari.action_space, path=path)


# -- the client processes --------------------------------------------------------------------
def client(index: int, commands: Any, results: Any) -> None:
    """One actor process: per command ``(env, envs, policy, warmup)`` builds the wrapped env,
    warms up, says ready, waits for ``(start, deadline)`` (time.monotonic, shared by every
    process), steps until the deadline timing each ``act()``, and reports."""
    while True:
        command = commands.get()
        if command is None:
            return
        env_name, actors, policy, warmup = command
        try:
            envs = relayrl_gym.wrap(ENVS[env_name], actors=actors, policy=policy, sink=None)
            envs.reset(seed=index)
            for _ in range(warmup):
                envs.step(envs.act())
            results.put(("ready", index))
            start, deadline = commands.get()
            latencies: list[int] = []
            clock = time.perf_counter_ns
            while time.monotonic() < start:
                time.sleep(0.0005)
            began, steps = time.perf_counter(), 0
            while time.monotonic() < deadline:
                t0 = clock()
                actions = envs.act()
                latencies.append(clock() - t0)
                envs.step(actions)
                steps += 1
            elapsed = time.perf_counter() - began
            envs.close()
            results.put(("done", index, steps * actors, elapsed,
                         np.asarray(latencies, np.int64)))
        except Exception:
            results.put(("error", index, traceback.format_exc()))
            # Unblock: the parent stops everything on the first error.
            return


class Pool:
    """``n`` client processes (spawned: no fork of a parent holding ZMQ and ONNX state)."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=client, args=(i, q, self.results), daemon=True)
                      for i, q in enumerate(self.commands)]
        for proc in self.procs:
            proc.start()

    def _gather(self, kind: str) -> list[tuple[Any, ...]]:
        got = []
        while len(got) < len(self.procs):
            try:
                item = self.results.get(timeout=TIMEOUT)
            except queue.Empty:
                raise RuntimeError(f"no {kind!r} from the clients within {TIMEOUT:g} s") from None
            if item[0] == "error":
                raise RuntimeError(f"client {item[1]} failed:\n{item[2]}")
            got.append(item)
        return got

    def run(self, env: str, actors: int, policy: str, seconds: float, warmup: int,
            on_ready: Any = None) -> dict[str, float]:
        for q in self.commands:
            q.put((env, actors, policy, warmup))
        self._gather("ready")
        if on_ready is not None:
            on_ready()
        start = time.monotonic() + 0.05
        for q in self.commands:
            q.put((start, start + seconds))
        done = self._gather("done")
        latencies = np.concatenate([d[4] for d in done]) / 1e3
        p50, p99 = np.percentile(latencies, [50, 99])
        return {"rate": sum(d[2] / d[3] for d in done), "p50": float(p50), "p99": float(p99),
                "acts": float(len(latencies))}

    def close(self) -> None:
        for q in self.commands:
            q.put(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()


# -- one round of each mode --------------------------------------------------------------------
def run_server(pool: Pool, args: argparse.Namespace, model_dir: Path, env: str, actors: int,
               devices: set[str]) -> dict[str, Any]:
    with relayrl_gym.InferenceServer(model_dir, bind="tcp://127.0.0.1:*",
                                     max_batch=args.max_batch, max_wait_us=args.max_wait_us,
                                     device=args.device) as server:
        devices.add(server.runner.model.device.value)
        before: dict[str, Any] = {}
        result: dict[str, Any] = pool.run(env, actors, server.url, args.seconds, args.warmup,
                                          on_ready=lambda: before.update(server.stats))
        after = server.stats
    batches = after["batches"] - before["batches"]
    result["mean_batch"] = (after["rows"] - before["rows"]) / batches if batches else 0.0
    result["batch_sizes"] = dict(Counter(after["batch_sizes"]) - Counter(before["batch_sizes"]))
    result["wait_us"], result["model_us"] = after["wait_us"], after["model_us"]
    return result


def run_local(pool: Pool, args: argparse.Namespace, model_dir: Path, env: str, actors: int
              ) -> dict[str, Any]:
    return pool.run(env, actors, str(model_dir), args.seconds, args.warmup)


def _echo(port: int) -> None:
    """A raw ZMQ ROUTER answering every message with itself (the transport's floor)."""
    import zmq

    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(f"tcp://127.0.0.1:{port}")
    while True:
        sock.send_multipart(sock.recv_multipart())


def latency(model_dir: Path, rounds: int, calls: int) -> None:
    """One client, 8 CartPole rows a call: `RemotePolicy.step` to a `serve-policy` process,
    against a raw DEALER/ROUTER echo of the same request frames to another process, and a
    local `ModelModule.step`; interleaved rounds, medians of the per-round means."""
    import socket
    import subprocess

    import zmq

    from relayrl_gym.transport.inference.client import RemotePolicy
    from relayrl_gym.transport.inference.wire import encode_request

    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    server_port, echo_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "relayrl_gym.cli.main", "serve-policy", str(model_dir),
         "--bind", f"tcp://127.0.0.1:{server_port}", "--stats-every", "0"],
        stdout=subprocess.PIPE, text=True)
    server.stdout.readline()
    echo = mp.get_context("spawn").Process(target=_echo, args=(echo_port,), daemon=True)
    echo.start()
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    local = relayrl_gym.ModelModule.load_from_path(model_dir)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.connect(f"tcp://127.0.0.1:{echo_port}")
    frames = [bytes(f) for f in encode_request(1, obs)]

    def echo_call() -> None:
        raw.send_multipart(frames)
        raw.recv_multipart()

    try:
        with RemotePolicy(f"zmq+tcp://127.0.0.1:{server_port}") as remote:
            candidates = {"RemotePolicy.step": lambda: remote.step(obs),
                          "raw ZMQ echo": echo_call,
                          "local ModelModule.step": lambda: local.step(obs)}
            means: dict[str, list[float]] = {name: [] for name in candidates}
            for _ in range(rounds):
                for name, call in candidates.items():
                    for _ in range(200):
                        call()
                    start = time.perf_counter()
                    for _ in range(calls):
                        call()
                    means[name].append((time.perf_counter() - start) / calls * 1e6)
    finally:
        raw.close(0)
        ctx.term()
        server.terminate()
        server.wait(10)
        echo.terminate()
    print("\none client, 8 rows a call (median of per-round means):")
    for name, values in means.items():
        print(f"  {name:24s} {statistics.median(values):8.1f} us")


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="actor processes")
    parser.add_argument("--envs", type=int, default=8, help="CartPole copies per client")
    parser.add_argument("--cnn-envs", type=int, default=4,
                        help="synthetic Atari copies per client")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per client")
    parser.add_argument("--device", default="cpu", choices=["default", "cpu", "cuda", "mps"],
                        help="the server's device (cuda falls back to the CPU with a warning)")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-wait-us", type=int, default=500)
    parser.add_argument("--server-threads", type=int, default=None,
                        help=f"ONNX intra-op threads of the server ({CPU_THREADS_ENV}; default: "
                        "as the clients, 1 unless that variable says otherwise)")
    parser.add_argument("--workloads", default="cartpole-mlp,atari-cnn",
                        help="comma-separated: cartpole-mlp, atari-cnn")
    parser.add_argument("--latency", action="store_true",
                        help="also time one client's round trip against a raw ZMQ echo")
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 1 s, 5 warm-up steps (about 30 s)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup = 2, 1.0, 5
    workloads = {"cartpole-mlp": ("CartPole-v1", args.envs, export_mlp),
                 "atari-cnn": ("synthetic-atari", args.cnn_envs, export_cnn)}
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(chosen) - set(workloads))
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; known: {', '.join(workloads)}")

    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="relayrl-inference-bench-"))
    pool = Pool(args.clients)  # spawned before --server-threads changes this process's env
    if args.server_threads is not None:
        os.environ[CPU_THREADS_ENV] = str(args.server_threads)
    for name in chosen:
        workloads[name][2](work / name)
    print(f"{args.clients} clients, {os.cpu_count()} CPUs, {args.rounds} rounds of "
          f"{args.seconds:g} s per mode; server max_batch={args.max_batch} "
          f"max_wait_us={args.max_wait_us} device={args.device}", flush=True)
    devices: set[str] = set()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"server": [], "local": []} for name in chosen}
    try:
        for i in range(args.rounds):
            for name in chosen:
                env, actors, _ = workloads[name]
                model_dir = work / name
                for mode in ("server", "local"):
                    if mode == "server":
                        r = run_server(pool, args, model_dir, env, actors, devices)
                        extra = (f"  mean batch {r['mean_batch']:.1f}  "
                                 f"batches {r['batch_sizes']}")
                    else:
                        r = run_local(pool, args, model_dir, env, actors)
                        extra = ""
                    results[name][mode].append(r)
                    print(f"  round {i + 1} {name:12s} {mode:6s} {r['rate']:9,.0f} steps/s  "
                          f"act p50 {r['p50']:7,.0f} us  p99 {r['p99']:7,.0f} us{extra}",
                          flush=True)
    finally:
        pool.close()

    print(f"\nserver device: {', '.join(sorted(devices))} (asked: {args.device}); local "
          f"clients: cpu; median of {args.rounds} rounds, {time.perf_counter() - began:.0f} s "
          "in all")
    print(f"{'workload':13s} {'mode':6s} {'envs':>10s} {'steps/s':>9s} {'ratio':>6s} "
          f"{'act p50 us':>10s} {'act p99 us':>10s} {'mean batch':>10s} "
          f"{'srv wait p50/p99 us':>19s} {'model p50/p99 us':>17s}")
    lines = []
    for name in chosen:
        _, actors, _ = workloads[name]
        local_rate = median_of(results[name]["local"], "rate")
        for mode in ("server", "local"):
            rounds = results[name][mode]
            rate = median_of(rounds, "rate")
            batch = wait = model = "-"
            if mode == "server":
                batch = f"{median_of(rounds, 'mean_batch'):.1f}"
                last = rounds[-1]
                wait = f"{last['wait_us']['p50']:.0f}/{last['wait_us']['p99']:.0f}"
                model = f"{last['model_us']['p50']:.0f}/{last['model_us']['p99']:.0f}"
            print(f"{name:13s} {mode:6s} {f'{args.clients}x{actors}':>10s} {rate:9,.0f} "
                  f"{rate / local_rate:5.2f}x {median_of(rounds, 'p50'):10,.0f} "
                  f"{median_of(rounds, 'p99'):10,.0f} {batch:>10s} {wait:>19s} {model:>17s}")
        server = results[name]["server"]
        rate = median_of(server, "rate")
        lines.append(f"{name}: server {rate / local_rate:.2f}x local ({rate:,.0f} vs "
                     f"{local_rate:,.0f} steps/s), latency p50 {median_of(server, 'p50'):,.0f} "
                     f"us p99 {median_of(server, 'p99'):,.0f} us, mean batch "
                     f"{median_of(server, 'mean_batch'):.1f}")
    print()
    for line in lines:
        print(line)
    if args.latency:
        export_mlp(work / "latency")
        latency(work / "latency", args.rounds, 500 if args.quick else 3000)


if __name__ == "__main__":
    sys.exit(main())
