"""ZMQ transport throughput: ZMQSink -> collector process -> Arrow directory, against raw pyzmq
PUSH/PULL moving the same bytes between two processes over loopback.

Target (DESIGN.md and the transport issue): >= 0.8x the raw PUSH/PULL throughput. The payload is
real recorded CartPole transitions in the writer's batches (``--batch-rows``, default 8192). The
sink's time runs from the first ``write`` to the collector's acknowledgement of the last batch,
so it includes serializing, the JSON headers, the collector's checks and Arrow writing, its
commit state and the acknowledgements. The anchor sends each batch's IPC bytes with PUSH and
stops when the PULL process has received them all.

Run: python benchmarks/zmq_throughput.py [--rows 400000] [--rounds 5] [--batch-rows 8192]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave

import relayrl_gym
from relayrl_gym.transport import ZMQSink


def recorded_batches(rows: int, batch_rows: int, workdir: Path
                     ) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=workdir, router_scale=0)
    envs.reset(seed=0)
    while envs.agent.recorder.rows_recorded < rows:
        envs.step(envs.action_space.sample())
    envs.close()
    table = relayrl_gym.load(envs.run_path).table.slice(0, rows)
    # Each batch in its own buffers, as the writer builds them (a slice of a table would make
    # serializing copy and trim every column).
    batches = [pa.ipc.read_record_batch(pa.py_buffer(
        pa.record_batch(b.columns, schema=table.schema).serialize().to_pybytes()), table.schema)
        for b in table.to_batches(max_chunksize=batch_rows)]
    return table.schema, batches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_receiver(data_port: int, done_port: int) -> None:
    """The anchor's PULL process: per round, counts the announced messages, then says done."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{data_port}")
    done = ctx.socket(zmq.PUSH)
    done.connect(f"tcp://127.0.0.1:{done_port}")
    while True:
        count = int(pull.recv())
        if count < 0:
            break
        received = 0
        for _ in range(count):
            received += len(pull.recv(copy=False))
        done.send(str(received).encode())
    pull.close(0)
    done.close(0)
    ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-rows", type=int, default=8192)
    parser.add_argument("--raw-receiver", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_receiver:
        raw_receiver(*args.raw_receiver)
        return

    work = Path(tempfile.mkdtemp(prefix="zmq-bench-"))
    schema, batches = recorded_batches(args.rows, args.batch_rows, work / "source")
    payloads = [b.serialize() for b in batches]
    total_bytes = sum(p.size for p in payloads)
    print(f"{args.rows} CartPole transitions in {len(batches)} batches, "
          f"{total_bytes / 1e6:.1f} MB of Arrow IPC")

    port = free_port()
    collector = subprocess.Popen(
        [sys.executable, "-m", "relayrl_gym.cli.main", "serve", "--bind",
         f"tcp://127.0.0.1:{port}", "--sink", str(work / "collected"), "--stats-every", "0"],
        stdout=subprocess.PIPE, text=True)
    assert "listening" in (collector.stdout.readline() if collector.stdout else "")
    data_port, done_port = free_port(), free_port()
    ctx = zmq.Context()
    done = ctx.socket(zmq.PULL)
    done.bind(f"tcp://127.0.0.1:{done_port}")
    receiver = subprocess.Popen([sys.executable, __file__, "--raw-receiver", str(data_port),
                                 str(done_port)])
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{data_port}")

    def raw() -> float:
        start = time.perf_counter()
        push.send(str(len(payloads)).encode())
        for payload in payloads:
            push.send(payload, copy=False)
        assert int(done.recv()) == total_bytes
        return args.rows / (time.perf_counter() - start)

    def sink() -> float:
        zmq_sink = ZMQSink(f"tcp://127.0.0.1:{port}", models="off")
        start = time.perf_counter()
        zmq_sink.start(f"bench-{uuid.uuid4().hex[:8]}", schema)
        for batch in batches:
            zmq_sink.write(batch)
        if not zmq_sink.wait_acknowledged(120):
            raise RuntimeError("the collector did not acknowledge every batch")
        elapsed = time.perf_counter() - start
        zmq_sink.close()
        return args.rows / elapsed

    try:
        raw()  # warm both paths up (connections, page cache)
        sink()
        result = interleave({"raw PUSH/PULL": raw, "ZMQSink -> collector": sink}, args.rounds)
    finally:
        push.send(b"-1")
        receiver.wait(10)
        push.close(0)
        done.close(0)
        ctx.term()
        collector.terminate()
        collector.wait(20)
    anchor, ours = result["raw PUSH/PULL"], result["ZMQSink -> collector"]
    for name, rate in result.items():
        print(f"{name:22s} {rate:12,.0f} transitions/s  "
              f"{rate * total_bytes / args.rows / 1e6:8.1f} MB/s")
    print(f"ratio sink/raw: {ours / anchor:.2f}x (target >= 0.8x)")
    written = sum(len(relayrl_gym.load(run)) for run in (work / "collected").iterdir())
    print(f"collector wrote {written} rows ({args.rounds + 1} runs)")


if __name__ == "__main__":
    main()
