"""A simulated two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``) running a
fleet; prints what it saw as JSON. Run by test_fleet_cluster.py in a process of its own."""

from __future__ import annotations

import json
import sys
import tempfile

import ray
from ray.cluster_utils import Cluster

import relayrl_gym
from relayrl_gym.errors import ConfigError


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    out: dict = {"nodes": len([n for n in ray.nodes() if n["Alive"]])}
    sink = tempfile.mkdtemp()
    try:
        try:
            relayrl_gym.Fleet("CartPole-v1", workers=2, sink=sink).start()
        except ConfigError as err:
            out["refused"] = str(err)
        fleet = relayrl_gym.Fleet("CartPole-v1", workers=2, actors=2, sink=sink,
                                  shared_filesystem=True)  # one machine: it is shared
        summary = fleet.run(steps=600)
        out["placed_on"] = sorted({p["node"] for p in fleet.placements.values()})
        out["steps"], out["runs"] = summary.steps, len(summary.run_ids)
        out["rows"] = len(relayrl_gym.load(sink))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
