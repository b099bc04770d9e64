"""Batched inference: ModelModule.step on 64 rows vs one raw onnxruntime call on the same batch.

A CartPole-sized ONNX MLP (4 -> 64 -> 64 -> 2, argmax head). Candidates, in interleaved rounds:
- raw onnxruntime: one ``InferenceSession.run`` on the 64-row batch, as a user writes it
  (default session options; the anchor of the target);
- raw onnxruntime, 1 thread: the same with the session options ModelModule uses on the CPU
  (one intra-op thread, ``RELAYRL_GYM_ONNX_THREADS``), to show the overhead apart from the
  faster session;
- ModelModule.step: the same batch through ``step`` (cast and shape check, run, argmax);
- 64 x step(1 row): what acting for 64 actors costs without batching;
- agent.request_action for 64 actors sharing the module (recording to Arrow: every call also
  completes and records the previous step's 64 transitions);
- agent.request_action for 1 actor vs a raw 1-row call (the single-actor overhead).
Target (DESIGN.md): request_action for 64 actors <= 2x the raw call, and >= 10x faster than 64
separate calls.
Run: python benchmarks/inference.py [--calls 2000] [--rounds 11]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from gymnasium import spaces

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave, steps_per_second

from relayrl_gym.policies import ModelModule
from relayrl_gym.runtime.builder import AgentBuilder

BATCH = 64


def seconds_per_call(call: Callable[[], object], calls: int) -> float:
    return 1.0 / steps_per_second(lambda _: call(), calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, 2))
    directory = Path(tempfile.mkdtemp(prefix="relayrl-bench-")) / "policy"
    module = ModelModule.from_torch(net, spaces.Box(-5, 5, (4,), np.float32), spaces.Discrete(2),
                                    path=directory)
    session = ort.InferenceSession(str(directory / module.metadata.model_file),
                                   providers=["CPUExecutionProvider"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session_1t = ort.InferenceSession(str(directory / module.metadata.model_file), options,
                                      providers=["CPUExecutionProvider"])
    obs = np.random.default_rng(0).normal(size=(BATCH, 4)).astype(np.float32)
    rows = [obs[i : i + 1] for i in range(BATCH)]
    assert (module.step(obs)[0] == session.run(None, {"obs": obs})[0].argmax(1)).all()

    def singles() -> None:
        for row in rows:
            module.step(row)

    agent, params = (AgentBuilder().actor_count(BATCH).default_model(module)
                     .sink(str(directory.parent / "runs")).build())
    agent.start(params)
    ids = agent.get_actor_ids()
    solo = agent.new_actor()
    one = obs[:1]

    candidates: dict[str, Callable[[], object]] = {
        "raw onnxruntime run (64 rows)": lambda: session.run(None, {"obs": obs}),
        "raw onnxruntime, 1 thread (64 rows)": lambda: session_1t.run(None, {"obs": obs}),
        "ModelModule.step (64 rows)": lambda: module.step(obs),
        "64 x ModelModule.step (1 row)": singles,
        "agent.request_action (64 actors)": lambda: agent.request_action(ids, obs, reward=1.0),
        "raw onnxruntime run (1 row)": lambda: session.run(None, {"obs": one}),
        "agent.request_action (1 actor)": lambda: agent.request_action([solo], one, reward=1.0),
    }
    for call in candidates.values():  # warm-up
        seconds_per_call(call, 200)
    runs = {name: (lambda call=call: seconds_per_call(call, args.calls))
            for name, call in candidates.items()}
    med = interleave(runs, args.rounds)
    base = med["raw onnxruntime run (64 rows)"]
    print(f"MLP 4-64-64-2 (ONNX, CPU), batch {BATCH}, {args.calls} calls x {args.rounds} rounds "
          "(median time per call)")
    for name, seconds in med.items():
        print(f"  {name:36} {seconds * 1e6:9.1f} us   {seconds / base:6.2f}x")
    print(f"step overhead over raw (64 rows): {med['ModelModule.step (64 rows)'] / base:.2f}x; "
          f"64 single-row steps: {med['64 x ModelModule.step (1 row)'] / base:.1f}x")
    request = med["agent.request_action (64 actors)"]
    print(f"request_action, 64 actors: {request / base:.2f}x the raw 64-row call (target <= 2x); "
          f"{med['64 x ModelModule.step (1 row)'] / request:.1f}x faster than 64 separate calls "
          "(target >= 10x)")
    same = med["raw onnxruntime, 1 thread (64 rows)"]
    print(f"  against the raw call with ModelModule's session options: {request / same:.2f}x "
          f"(request_action costs {(request - same) * 1e6:.1f} us over that model run)")
    single = med["agent.request_action (1 actor)"] - med["raw onnxruntime run (1 row)"]
    print(f"request_action, 1 actor: {single * 1e6:.1f} us over the raw 1-row call")
    agent.shutdown()


if __name__ == "__main__":
    main()
