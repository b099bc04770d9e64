"""``relayrl-gym serve-policy``: an `InferenceServer` from the command line, printing its
counters."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from relayrl_gym.models.inference_server import InferenceServer
from relayrl_gym.policies.onnx_backend import CPU_THREADS_ENV

__all__ = ["add_parser", "serve_policy"]


def add_parser(commands: Any) -> None:
    """Adds the ``serve-policy`` command to ``commands`` (argparse sub-parsers)."""
    serve = commands.add_parser(
        "serve-policy", help="serve a ModelModule to remote actors (policy=zmq+tcp://HOST:PORT), "
        "batching their requests; follows a learner's models")
    serve.add_argument("model", help="a ModelModule directory, or a .onnx / .pt file")
    serve.add_argument("--bind", default="tcp://0.0.0.0:7780",
                       help="where actors connect (default tcp://0.0.0.0:7780; port * = any free)")
    serve.add_argument("--models", default=None, metavar="URL",
                       help="follow a learner's models: its model endpoint tcp://HOST:PORT "
                       "(serve --models), or nats://HOST:PORT/STREAM")
    serve.add_argument("--models-curve-keys", default=None, metavar="DIR",
                       help="client key folder for a --models endpoint that requires CurveZMQ")
    serve.add_argument("--max-batch", type=int, default=256, metavar="ROWS",
                       help="most rows per model call (default 256)")
    serve.add_argument("--max-wait-us", type=int, default=500, metavar="US",
                       help="how long a request may wait for others to join its batch (default "
                       "500 microseconds)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="model threads (default 1)")
    serve.add_argument("--threads", type=int, default=None, metavar="N",
                       help="onnxruntime intra-op threads of the model (default: "
                       "RELAYRL_GYM_ONNX_THREADS, else 1; 0 = one per core)")
    serve.add_argument("--device", default="default", choices=["default", "cpu", "cuda", "mps"],
                       help="where the model runs (cuda falls back to the CPU with a warning "
                       "where there is none)")
    serve.add_argument("--curve-keys", default=None, metavar="DIR",
                       help="key folder from `relayrl-gym keygen`: require CurveZMQ keys")
    serve.add_argument("--stats-every", type=float, default=30.0, metavar="S",
                       help="seconds between counter lines on stdout (0 = none)")


def serve_policy(args: argparse.Namespace) -> None:
    """Runs the server until SIGINT / SIGTERM."""
    if args.threads is not None:  # read when the model's session is made, here and for updates
        os.environ[CPU_THREADS_ENV] = str(args.threads)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with InferenceServer(args.model, bind=args.bind, models=args.models,
                         max_batch=args.max_batch, max_wait_us=args.max_wait_us,
                         workers=args.workers, device=args.device,
                         curve_keys=args.curve_keys,
                         models_curve_keys=args.models_curve_keys) as server:
        model = server.runner.model
        print(f"relayrl-gym serve-policy: serving version {server.version} on {server.endpoint} "
              f"({model.metadata.model_type}, {model.device.value}), models from "
              f"{args.models or '-'}", flush=True)
        every = args.stats_every if args.stats_every > 0 else None
        while not stop.wait(every):
            print(stats_line(server.stats), flush=True)
    print("relayrl-gym serve-policy: stopped", flush=True)


def stats_line(stats: dict[str, Any]) -> str:
    """One line of counters.

    >>> from relayrl_gym.models.inference_stats import InferenceStats
    >>> stats_line({**InferenceStats().snapshot(), "model_version": 3})  # doctest: +ELLIPSIS
    'version=3 clients=0 requests=0 requests/s=0.0 rows/s=0.0 mean_batch=0.0 wait_us=0.0/0.0 ...'
    """
    wait, model = stats["wait_us"], stats["model_us"]
    sizes = ",".join(f"{k}:{v}" for k, v in stats["batch_sizes"].items()) or "-"
    return (f"version={stats['model_version']} clients={len(stats['clients'])} "
            f"requests={stats['requests']} requests/s={stats['requests_per_s']} "
            f"rows/s={stats['rows_per_s']} mean_batch={stats['mean_batch']} "
            f"wait_us={wait['p50']}/{wait['p99']} model_us={model['p50']}/{model['p99']} "
            f"batches={sizes} refused={stats['refused']} malformed={stats['malformed']} "
            f"model_errors={stats['model_errors']}")
