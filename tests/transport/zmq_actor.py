"""An actor process for the transport tests: steps a wrapped CartPole that records to a ZMQ sink
(and, optionally, to a local Arrow copy written first), then reports as JSON on stdout.

Run as ``python zmq_actor.py --url zmq+tcp://... [--local DIR] [--steps N | --forever]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--local", default=None)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--forever", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--policy", default=None)
    parser.add_argument("--wait-version", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)

    import relayrl_gym

    sinks = [args.local, args.url] if args.local else args.url
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sinks, flush_interval=0.05,
                            policy=args.policy, router_scale=0)
    print(json.dumps({"run_id": envs.run_id}), flush=True)
    envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    versions = set()
    deadline = time.monotonic() + args.timeout
    step = 0
    while args.forever or step < args.steps or (
            args.wait_version is not None and
            min(envs.agent.get_model_version()) < args.wait_version and
            time.monotonic() < deadline):
        actions = envs.act() if args.policy else envs.action_space.sample()
        envs.step(actions)
        versions.update(envs.agent.get_model_version())
        step += 1
        if args.sleep:
            time.sleep(args.sleep)
    final = envs.agent.get_model_version() if args.policy else []
    envs.close()
    print(json.dumps({"run_id": envs.run_id, "steps": step, "versions": sorted(versions),
                      "final_versions": final}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
