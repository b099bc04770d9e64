"""ZMQ transport throughput: ZMQSink -> collector process -> Arrow directory, against raw pyzmq
PUSH/PULL moving the same bytes between two processes over loopback.

Target (DESIGN.md and the transport issue): >= 0.8x the raw PUSH/PULL throughput. The payload is
real recorded CartPole transitions in the writer's batches (``--batch-rows``, default 8192). The
sink's time runs from the first ``write`` to the collector's acknowledgement of the last batch,
so it includes serializing, the JSON headers, the collector's checks and Arrow writing, its
commit state and the acknowledgements. The anchor sends each batch's IPC bytes with PUSH and
stops when the PULL process has received them all; a second anchor also appends the bytes to
a file (what any collector must at least do), to show how much of the gap is the disk.
Then ``wrap(CartPole-v1, actors=4)`` steps recording to nothing, to an Arrow directory and to the
ZMQ sink (close included), for the transitions/s an actor sustains.

Run: python benchmarks/zmq_throughput.py [--rows 400000] [--rounds 5] [--batch-rows 8192]
     [--compression lz4 none] [--env-steps 20000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import env_steps_per_second, interleave, recorded_batches

import relayrl_gym
from relayrl_gym.transport import ZMQSink


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_receiver(data_port: int, done_port: int, out_dir: str = "") -> None:
    """The anchor's PULL process: per round, counts the announced messages (and, with
    ``out_dir``, appends them to a new file there), then says done."""
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
        out = open(Path(out_dir, uuid.uuid4().hex), "wb") if out_dir else None  # noqa: SIM115
        for _ in range(count):
            frame = pull.recv(copy=False)
            received += len(frame)
            if out is not None:
                out.write(frame.buffer)
        if out is not None:
            out.close()
        done.send(str(received).encode())
    pull.close(0)
    done.close(0)
    ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-rows", type=int, default=8192)
    parser.add_argument("--compression", nargs="+", default=["lz4", "none"],
                        choices=["lz4", "zstd", "none"],
                        help="collector file compressions to measure (default lz4 none)")
    parser.add_argument("--env-steps", type=int, default=20_000,
                        help="steps of the wrapped-CartPole comparison")
    parser.add_argument("--dir", default=None,
                        help="where the collectors (and the file anchor) write (default: a "
                        "temporary directory; /dev/shm takes the disk out of the figure)")
    parser.add_argument("--raw-receiver", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_receiver:
        raw_receiver(int(args.raw_receiver[0]), int(args.raw_receiver[1]),
                     *args.raw_receiver[2:])
        return

    work = Path(tempfile.mkdtemp(prefix="zmq-bench-", dir=args.dir))
    schema, batches = recorded_batches(args.rows, args.batch_rows, work / "source")
    payloads = [b.serialize() for b in batches]
    total_bytes = sum(p.size for p in payloads)
    print(f"{args.rows} CartPole transitions in {len(batches)} batches, "
          f"{total_bytes / 1e6:.1f} MB of Arrow IPC")

    collectors, ports = [], {}
    for compression in args.compression:
        port = ports[compression] = free_port()
        collectors.append(subprocess.Popen(
            [sys.executable, "-m", "relayrl_gym.cli.main", "serve", "--bind",
             f"tcp://127.0.0.1:{port}", "--sink", str(work / f"collected-{compression}"),
             "--stats-every", "0", "--compression", compression],
            stdout=subprocess.PIPE, text=True))
        assert "listening" in (collectors[-1].stdout.readline() if collectors[-1].stdout
                               else "")
    ctx = zmq.Context()
    (work / "raw-files").mkdir()
    anchors = []
    for out_dir in ("", str(work / "raw-files")):
        data_port, done_port = free_port(), free_port()
        done = ctx.socket(zmq.PULL)
        done.bind(f"tcp://127.0.0.1:{done_port}")
        receiver = subprocess.Popen([sys.executable, __file__, "--raw-receiver",
                                     str(data_port), str(done_port), *([out_dir] * bool(out_dir))])
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{data_port}")
        anchors.append((push, done, receiver))

    def raw(anchor: int) -> float:
        push, done, _ = anchors[anchor]
        start = time.perf_counter()
        push.send(str(len(payloads)).encode())
        for payload in payloads:
            push.send(payload, copy=False)
        assert int(done.recv()) == total_bytes
        return args.rows / (time.perf_counter() - start)

    def sink(port: int) -> float:
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

    candidates = {"raw PUSH/PULL": lambda: raw(0),
                  "raw PUSH/PULL + file write": lambda: raw(1)}
    for compression, port in ports.items():
        candidates[f"sink -> collector ({compression})"] = (lambda p=port: sink(p))
    try:
        for run in candidates.values():  # warm every path up (connections, page cache)
            run()
        result = interleave(candidates, args.rounds)
        lz4_port = ports.get("lz4", next(iter(ports.values())))
        env_rates = interleave({
            "no sink": lambda: env_steps_per_second(None, args.env_steps),
            "Arrow directory": lambda: env_steps_per_second(work / "env-local",
                                                            args.env_steps),
            "ZMQ sink": lambda: env_steps_per_second(
                f"zmq+tcp://127.0.0.1:{lz4_port}?models=off", args.env_steps)},
            max(1, args.rounds // 2))
    finally:
        for push, done, receiver in anchors:
            push.send(b"-1")
            receiver.wait(10)
            push.close(0)
            done.close(0)
        ctx.term()
        for collector in collectors:
            collector.terminate()
            collector.wait(20)
    anchor = result["raw PUSH/PULL"]
    for name, rate in result.items():
        print(f"{name:30s} {rate:12,.0f} transitions/s  "
              f"{rate * total_bytes / args.rows / 1e6:8.1f} MB/s  {rate / anchor:5.2f}x raw")
    print("target: sink -> collector >= 0.8x raw")
    print(f"wrap(CartPole-v1, actors=4), {args.env_steps} steps, recording to:")
    for name, rate in env_rates.items():
        print(f"  {name:16s} {rate:12,.0f} transitions/s  {rate / env_rates['no sink']:5.2f}x "
              "no sink")
    for compression in ports:
        runs = list((work / f"collected-{compression}").iterdir())
        written = sum(len(relayrl_gym.load(run)) for run in runs)
        print(f"collector ({compression}) wrote {written} rows in {len(runs)} runs")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
