"""Distributed REINFORCE on CartPole: one learner process, two actor processes, over ZMQ.

The learner runs a `relayrl_gym.TrainingServer`: actors stream every transition to it
(``sink="zmq+tcp://..."``), it writes them once to an Arrow directory, and it trains a small
torch policy on the complete episodes of the current model version. Each update is exported as a
ModelModule and published; the actors (``wrap(..., policy=...)``) hot-swap it between steps and
record which version chose each action. The learner prints the mean return per version: it rises.

With ``--inference`` the actors hold no model: the learner also runs a
`relayrl_gym.InferenceServer` that follows its published models, and the actors act through it
(``policy="zmq+tcp://..."``, the SEED RL layout); the rows carry the version that answered.

Run: python examples/zmq_learner.py [--versions 30] [--episodes 16] [--inference] [--short]
(the actors are started by the learner: ``--actor URL`` is their entry point).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import relayrl_gym
from relayrl_gym.policies import ModelModule


@dataclass
class Args:
    versions: int = 30
    """model versions to train and publish"""
    episodes: int = 16
    """complete episodes of the current version per update"""
    learning_rate: float = 0.02
    """Adam step size"""
    gamma: float = 0.99
    """discount factor"""
    actors: int = 2
    """actor processes"""
    envs_per_actor: int = 4
    """CartPole copies in each actor process"""
    sink: str = ""
    """where the collector writes (default: a temporary directory)"""
    seed: int = 0
    """seed of the policy and the actors"""
    inference: bool = False
    """actors act through an inference server that follows the published models"""


def policy_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))


def export(net: torch.nn.Module, folder: Path, version: int) -> ModelModule:
    env = gym.make("CartPole-v1")
    module = ModelModule.from_torch(net, env.observation_space, env.action_space, path=folder,
                                    format="onnx", action_head="sample")
    module.version = version
    return module


def run_actor(url: str, policy: str, stop_file: str, seed: int, envs_per_actor: int) -> None:
    """An actor process: steps its envs with whatever policy version it has, until told."""
    envs = relayrl_gym.wrap("CartPole-v1", actors=envs_per_actor, sink=url, policy=policy,
                            flush_interval=0.05)
    envs.reset(seed=seed)
    steps = 0
    while not Path(stop_file).exists():
        envs.step(envs.act())
        steps += 1
    version = envs.agent.get_model_version()[0]
    envs.close()
    print(f"actor {envs.run_id}: {steps * envs_per_actor} transitions, ended on model "
          f"version {version}", flush=True)


class Episodes:
    """Rebuilds complete episodes of one model version from the streamed batches."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str, int], list[tuple[np.ndarray, int, float, int]]] = {}

    def add(self, batch, version: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Adds a batch; returns the episodes it completed that ``version`` played alone."""
        obs = batch.column("obs").flatten().to_numpy().reshape(-1, 4)
        cols = {name: batch.column(name).to_pylist() for name in (
            "run_id", "actor_id", "episode_id", "action", "reward", "terminated", "truncated",
            "model_version")}
        done = []
        for i in range(batch.num_rows):
            key = (cols["run_id"][i], cols["actor_id"][i], cols["episode_id"][i])
            rows = self.open.setdefault(key, [])
            rows.append((obs[i], cols["action"][i], cols["reward"][i], cols["model_version"][i]))
            if cols["terminated"][i] or cols["truncated"][i]:
                del self.open[key]
                if all(r[3] == version for r in rows):
                    done.append((np.stack([r[0] for r in rows]),
                                 np.array([r[1] for r in rows]),
                                 np.array([r[2] for r in rows], np.float32)))
        return done


def reinforce(net, optimizer, episodes, gamma: float) -> None:
    losses = []
    for obs, actions, rewards in episodes:
        returns = np.zeros_like(rewards)
        running = 0.0
        for t in range(len(rewards) - 1, -1, -1):
            running = rewards[t] + gamma * running
            returns[t] = running
        returns = (returns - returns.mean()) / (returns.std() + 1e-8)
        logits = net(torch.as_tensor(obs))
        logp = torch.log_softmax(logits, -1)[torch.arange(len(actions)),
                                             torch.as_tensor(actions)]
        losses.append(-(logp * torch.as_tensor(returns)).sum())
    optimizer.zero_grad()
    (torch.stack(losses).sum() / len(episodes)).backward()
    optimizer.step()


def learn(args: Args) -> list[float]:
    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="zmq-learner-"))
    sink = args.sink or str(work / "runs")
    net = policy_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
    stop_file = work / "stop"
    returns: list[float] = []
    with relayrl_gym.TrainingServer(bind="tcp://127.0.0.1:*", sink=sink,
                                    models="tcp://127.0.0.1:*") as server:
        start = export(net, work / "model-0", version=0)
        version = server.publish_model(start)
        policy = str(work / "model-0")
        inference = None
        if args.inference:  # one batched policy for every actor, swapped as models arrive
            inference = relayrl_gym.InferenceServer(start, bind="tcp://127.0.0.1:*",
                                                    models=server.models_endpoint)
            policy = inference.url
        actors = [subprocess.Popen([sys.executable, __file__, "--actor", server.sink_url,
                                    "--policy", policy, "--stop-file",
                                    str(stop_file), "--seed", str(args.seed + 100 * i),
                                    "--envs-per-actor", str(args.envs_per_actor)])
                  for i in range(args.actors)]
        episodes = Episodes()
        batch_of: list = []
        started = time.perf_counter()
        for batch in server.trajectories(timeout=60):
            batch_of.extend(episodes.add(batch, version))
            if len(batch_of) < args.episodes:
                continue
            used, batch_of = batch_of[:args.episodes], []
            mean = float(np.mean([ep[2].sum() for ep in used]))
            returns.append(mean)
            print(f"version {version:3d}: mean return {mean:7.1f} over {len(used)} episodes "
                  f"({time.perf_counter() - started:5.1f} s)", flush=True)
            if len(returns) >= args.versions:
                break
            reinforce(net, optimizer, used, args.gamma)
            version = server.publish_model(export(net, work / f"model-{version + 1}",
                                                  version + 1))
        stop_file.touch()
        for proc in actors:
            proc.wait(timeout=60)
        if inference is not None:
            served = inference.stats
            print(f"inference server: {served['requests']} requests, mean batch "
                  f"{served['mean_batch']} rows, {served['model_version']} the last version")
            inference.close()
        stats = server.stats
    print(f"collector: {stats['rows']} transitions from {stats['senders']} actors, "
          f"{stats['duplicates']} duplicates dropped, written to {sink}")
    first, last = np.mean(returns[:3]), np.mean(returns[-3:])
    print(f"mean return rose from {first:.1f} (first 3 versions) to {last:.1f} (last 3)")
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(Args):
        if field.type == "bool" or isinstance(field.default, bool):
            parser.add_argument(f"--{field.name.replace('_', '-')}", action="store_true")
            continue
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                            default=field.default)
    parser.add_argument("--short", action="store_true", help="a quick run (for the tests)")
    parser.add_argument("--actor", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--policy", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stop-file", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.actor:
        run_actor(ns.actor, ns.policy, ns.stop_file, ns.seed, ns.envs_per_actor)
        return
    args = Args(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(Args)})
    if ns.short:
        args = dataclasses.replace(args, versions=25, episodes=12)
    learn(args)


if __name__ == "__main__":
    main()
