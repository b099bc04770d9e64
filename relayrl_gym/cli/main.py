"""The ``relayrl-gym`` command: ``collect`` a recorded dataset, ``inspect``, ``export`` (Minari,
Parquet) and ``plot`` datasets, ``serve`` remote actors (collector and model publisher),
``serve-policy`` a model to remote actors, ``resend`` a ZMQ sink's spill, ``keygen`` CurveZMQ
keys."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym

from relayrl_gym.cli.serve_policy import add_parser, serve_policy
from relayrl_gym.data.dataset import Dataset, load
from relayrl_gym.data.discover import find_runs
from relayrl_gym.errors import ConfigError, RelayRLError
from relayrl_gym.recording.spill_resend import resend_sink_spill
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT, redact_url, url_scheme
from relayrl_gym.transport.collector.receiver import Limits
from relayrl_gym.transport.keys import generate_keys
from relayrl_gym.transport.nats.inspect import describe_stream
from relayrl_gym.transport.sender.spill import SPILL_INDEX
from relayrl_gym.transport.server import TrainingServer
from relayrl_gym.transport.spill import resend

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayrl-gym", description="Collect, inspect and serve recorded RL experience.")
    commands = parser.add_subparsers(dest="command", required=True)

    collect = commands.add_parser("collect", help="run actors on an env and record every step")
    collect.add_argument("env_id", help="a Gymnasium env id, e.g. CartPole-v1")
    collect.add_argument("--actors", type=int, default=4, help="env copies (default 4)")
    stop = collect.add_mutually_exclusive_group(required=True)
    stop.add_argument("--steps", type=int, help="transitions to record (summed over actors)")
    stop.add_argument("--episodes", type=int, help="finished episodes to record")
    collect.add_argument("--sink", action="append", default=None,
                         help=f"directory or URL; repeat for several (default {DEFAULT_SINK_ROOT})")
    collect.add_argument("--seed", type=int, default=None, help="seed for envs and actions")
    collect.add_argument("--policy", default=None,
                         help="a ModelModule directory or .onnx/.pt file (default: random actions)")
    collect.add_argument("--router-scale", default="auto",
                         help="'auto', 0 (inline) or threads stepping at once")
    collect.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    collect.add_argument("--workers", type=int, default=None, metavar="N",
                         help="worker processes on Ray, each with --actors env copies and a run "
                         "of its own (extra ray); --steps/--episodes are shared among them")
    collect.add_argument("--ray", default=None, metavar="ADDRESS",
                         help="with --workers: the Ray cluster to join ('auto': the running "
                         "one; default: start a local one)")
    collect.add_argument("--tensorboard", default=None, metavar="DIR",
                         help="write episode returns, lengths and steps/s as TensorBoard "
                         "scalars to DIR (extra tensorboard)")

    inspect = commands.add_parser("inspect", help="print the summary of a recorded run")
    inspect.add_argument("path", help="a run directory (relayrl_runs/<run_id>), a database "
                         "URL (sqlite:///runs.db, postgresql://...; ?run=<run_id> picks one), "
                         "or a NATS stream (nats://HOST:PORT/STREAM: its messages, consumers "
                         "and their lag)")

    export = commands.add_parser("export", help="write recorded runs as a Minari dataset or as "
                                 "Parquet files (Hugging Face Hub layout)")
    export.add_argument("paths", nargs="+", help="run directories, folders of runs, globs or a "
                        "database URL (as relayrl_gym.load takes them)")
    export.add_argument("--to", required=True, help="minari:<dataset_id> (e.g. "
                        "minari:relayrl/cartpole-random-v0) or parquet:<new folder>")
    export.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    plot = commands.add_parser("plot", help="plot episode returns against steps, and episode "
                               "lengths, of recorded runs")
    plot.add_argument("paths", nargs="+", help="run directories, folders of runs, globs or a "
                      "database URL")
    plot.add_argument("-o", "--output", default="returns.png",
                      help="image file; its suffix picks the format (default returns.png)")
    plot.add_argument("--by", default="model_version",
                      choices=["model_version", "agent", "run", "none"],
                      help="one line per model version (default), agent or run, or one line")
    plot.add_argument("--window", type=int, default=20,
                      help="episodes in the rolling mean (default 20)")

    serve = commands.add_parser("serve", help="collect trajectories streamed by remote actors "
                                "(sink=zmq+tcp://HOST:PORT, or a NATS stream with --source) "
                                "and publish models to them")
    serve.add_argument("--source", default=None, metavar="NATS_URL",
                       help="consume a NATS JetStream stream (nats://HOST:PORT/STREAM) instead "
                       "of binding a ZMQ socket; --bind, --models and --curve-keys are unused")
    serve.add_argument("--durable", default="relayrl",
                       help="with --source: the consumer's name; each name gets every batch "
                       "(default relayrl)")
    serve.add_argument("--partition", default=None, metavar="I/N",
                       help="with --source: this server's share of the batches of its durable "
                       "name, I of N servers (N a power of two up to 32): run `serve "
                       "--partition 0/2` and `serve --partition 1/2` to share a stream")
    serve.add_argument("--bind", default="tcp://0.0.0.0:7776",
                       help="data endpoint (default tcp://0.0.0.0:7776; port * = any free)")
    serve.add_argument("--sink", default=DEFAULT_SINK_ROOT,
                       help=f"directory or database URL to write (default {DEFAULT_SINK_ROOT})")
    serve.add_argument("--models", default=None,
                       help="model endpoint actors get models from, e.g. tcp://0.0.0.0:50051")
    serve.add_argument("--curve-keys", default=None,
                       help="key folder from `relayrl-gym keygen`: require CurveZMQ keys")
    serve.add_argument("--compression", default="lz4", choices=["lz4", "zstd", "none"],
                       help="compression of the Arrow files written (default lz4)")
    serve.add_argument("--publish", default=None,
                       help="a ModelModule directory or file to publish at start")
    for flag, default, meaning in (
            ("--max-runs-per-peer", 16, "runs one peer (CURVE key, else connection) may have open"),
            ("--max-senders-per-peer", 64, "senders one peer may have"),
            ("--max-open-runs", 128, "runs open at once (the least recently heard is closed)"),
            ("--max-senders", 4096, "senders of all open runs")):
        serve.add_argument(flag, type=int, default=default, metavar="N",
                           help=f"{meaning} (default {default})")
    serve.add_argument("--stats-every", type=float, default=30.0,
                       help="seconds between counter lines on stdout (0 = none)")
    serve.add_argument("--tensorboard", default=None, metavar="DIR",
                       help="write the returns and lengths of the episodes received, and "
                       "rows/s, as TensorBoard scalars to DIR (extra tensorboard)")

    add_parser(commands)

    resend = commands.add_parser("resend", help="send a spill to its sink: a ZMQ sink's "
                                 "close-time spill to the collector (which keeps each batch "
                                 "once), or a failing sink's spill to the sink given with --to")
    resend.add_argument("spill", help="the spilled run directory the sink's error named "
                        "(SPILL_DIR/<run_id> or SPILL_DIR/sink<i>-<Sink>/<run_id>)")
    resend.add_argument("--to", default=None, metavar="ADDRESS",
                        help="a ZMQ spill: the collector, tcp://HOST:PORT (default: the one the "
                        "sink sent to); a failing sink's spill: its sink, a URL or directory "
                        "(required)")
    resend.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="seconds to wait for every acknowledgement (default 60)")
    resend.add_argument("--curve-keys", default=None, metavar="DIR",
                        help="client key folder, for a collector that requires CurveZMQ")
    resend.add_argument("--keep", action="store_true",
                        help="keep the spill once the collector has every batch")

    keygen = commands.add_parser("keygen", help="create CurveZMQ keys for serve --curve-keys")
    keygen.add_argument("dir", help="key folder (the server keypair is kept if present)")
    keygen.add_argument("--client", action="append", default=None,
                        help="client name to create a keypair for (repeatable; default actor)")
    return parser


def _serve(args: argparse.Namespace) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    source = args.source
    if source and args.partition:
        source += ("&" if "?" in source else "?") + f"partition={args.partition}"
    with TrainingServer(bind=args.bind, sink=args.sink, models=args.models,
                        curve_keys=args.curve_keys, source=source,
                        durable=args.durable if args.source else None,
                        compression=None if args.compression == "none" else args.compression,
                        limits=Limits(args.max_runs_per_peer, args.max_senders_per_peer,
                                      args.max_open_runs, args.max_senders)) as server:
        if args.publish:
            server.publish_model(args.publish)
        watcher = _watch(server, args.tensorboard) if args.tensorboard else None
        if args.source:
            print(f"relayrl-gym serve: consuming {server.endpoint} as "
                  f"{server.collector.durable!r}, "
                  f"models in its model bucket, writing {redact_url(args.sink)}", flush=True)
        else:
            print(f"relayrl-gym serve: listening on {server.endpoint}, models on "
                  f"{server.models_endpoint or '-'}, writing {redact_url(args.sink)}",
                  flush=True)
        every = args.stats_every if args.stats_every > 0 else None
        while not stop.wait(every):
            stats = server.stats
            keys = ("senders", "received", "rows", "duplicates", "rejected", *(
                ("gaps", "redelivered", "elsewhere") if args.source else
                ("refused_auth", "refused_limits", "runs_evicted")))
            print(" ".join(f"{k}={stats[k]}" for k in keys), flush=True)
    if watcher is not None:
        watcher.join(timeout=10)  # its stream ends with the server
    print("relayrl-gym serve: stopped", flush=True)


def _watch(server: TrainingServer, logdir: str) -> threading.Thread:
    """A thread writing the episodes the server receives as TensorBoard scalars."""
    from relayrl_gym.data.scalars import EpisodeStream, TensorBoardScalars

    board, stream = TensorBoardScalars(logdir), EpisodeStream()
    batches = server.trajectories()

    def run() -> None:
        rows = 0
        try:
            for batch in batches:
                rows += batch.num_rows
                board.finished(stream.feed(batch.select(list(EpisodeStream.COLUMNS))), rows)
                board.steps(rows)
        finally:
            board.close()

    thread = threading.Thread(target=run, name="relayrl-tensorboard", daemon=True)
    thread.start()
    return thread


def _keygen(args: argparse.Namespace) -> None:
    root = generate_keys(args.dir, args.client or ["actor"])
    print(f"server keys in {root} (serve --curve-keys {root}); client key folders:")
    for name in args.client or ["actor"]:
        print(f"  {root / 'clients' / name}  (sink URL: zmq+tcp://HOST:PORT?curve=<this folder>)")


def _resend(args: argparse.Namespace) -> None:
    if (Path(args.spill) / SPILL_INDEX).exists() or args.to is None:  # a ZMQ sink's own spill
        result: object = resend(args.spill, args.to, timeout=args.timeout,
                                curve_keys=args.curve_keys, remove=not args.keep)
    else:  # a failing sink's spill (SPILL_DIR/sink<i>-<Sink>/<run_id>), to the sink named
        result = resend_sink_spill(args.spill, args.to, remove=not args.keep)
    print(f"relayrl-gym resend: {result}")


def _inspect(path: str) -> None:
    if url_scheme(path) == "nats":
        print(describe_stream(path))
        return
    runs = find_runs(path, same_spaces=False)  # a folder may hold runs of several envs
    if len(runs) > 1:
        print(f"{len(runs)} runs in {path}")
    for run in runs:
        print(Dataset([run], source=path).summary())


def _export(args: argparse.Namespace) -> None:
    kind, sep, target = args.to.partition(":")
    if not sep or kind not in ("minari", "parquet") or not target:
        raise ConfigError(f"--to must be minari:<dataset_id> or parquet:<folder>, got "
                          f"{args.to!r}")
    ds = load(args.paths if len(args.paths) > 1 else args.paths[0])
    if kind == "parquet":
        folder = ds.export_parquet(target, progress=not args.no_progress)
        print(f"relayrl-gym export: {len(ds)} transitions of {len(ds.run_ids)} run(s) written "
              f"to {folder}")
    else:
        ids = ds.export_minari(target, progress=not args.no_progress)
        print(f"relayrl-gym export: Minari dataset(s) {', '.join(ids)} written; read with "
              "minari.load_dataset(id)")


def _plot(args: argparse.Namespace) -> None:
    ds = load(args.paths if len(args.paths) > 1 else args.paths[0])
    ds.plot(args.output, by=None if args.by == "none" else args.by, window=args.window)
    print(f"relayrl-gym plot: {args.output} written")


def _router_scale(text: str) -> int | str:
    return text if text == "auto" else int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "collect":
            from relayrl_gym.collect import collect

            sinks = args.sink or [DEFAULT_SINK_ROOT]
            fleet = {} if args.workers is None else {
                "workers": args.workers, "backend": "ray", "ray_address": args.ray}
            if args.workers is None and args.ray is not None:
                raise ConfigError("--ray needs --workers N (the worker processes to place)")
            summary = collect(args.env_id, actors=args.actors, steps=args.steps,
                              episodes=args.episodes, sink=sinks if len(sinks) > 1 else sinks[0],
                              seed=args.seed, progress=not args.no_progress, policy=args.policy,
                              router_scale=_router_scale(args.router_scale),
                              tensorboard=args.tensorboard, **fleet)
            print(summary)
        elif args.command == "serve":
            _serve(args)
        elif args.command == "serve-policy":
            serve_policy(args)
        elif args.command == "keygen":
            _keygen(args)
        elif args.command == "resend":
            _resend(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "plot":
            _plot(args)
        else:
            _inspect(args.path)
    except (RelayRLError, ValueError, gym.error.Error) as err:
        print(f"relayrl-gym {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
