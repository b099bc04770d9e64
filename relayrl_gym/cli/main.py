"""The ``relayrl-gym`` command: ``collect`` a recorded dataset, ``inspect`` one."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from relayrl_gym.errors import RelayRLError
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayrl-gym", description="Collect and inspect recorded RL experience.")
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

    inspect = commands.add_parser("inspect", help="print the summary of a recorded run")
    inspect.add_argument("path", help="a run directory (relayrl_runs/<run_id>) or a database "
                         "URL (sqlite:///runs.db, postgresql://...; ?run=<run_id> picks one)")
    return parser


def _inspect(path: str) -> None:
    from relayrl_gym.data.dataset import load
    from relayrl_gym.sinks.base import SQL_SCHEMES, url_scheme

    if url_scheme(path) in SQL_SCHEMES and "run=" not in path:
        from relayrl_gym.data.sql_reader import list_sql_runs

        runs = list_sql_runs(path)
        print(f"{len(runs)} runs in {path}")
        for run in runs:
            sep = "&" if "?" in path else "?"
            print(load(f"{path}{sep}run={run}").summary())
        return
    print(load(path).summary())


def _router_scale(text: str) -> int | str:
    return text if text == "auto" else int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "collect":
            from relayrl_gym.runtime.collect import collect

            sinks = args.sink or [DEFAULT_SINK_ROOT]
            summary = collect(args.env_id, actors=args.actors, steps=args.steps,
                              episodes=args.episodes, sink=sinks if len(sinks) > 1 else sinks[0],
                              seed=args.seed, progress=not args.no_progress, policy=args.policy,
                              router_scale=_router_scale(args.router_scale))
            print(summary)
        else:
            _inspect(args.path)
    except (RelayRLError, ValueError) as err:
        print(f"relayrl-gym {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
