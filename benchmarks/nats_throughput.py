"""NATS transport throughput: NatsSink and NatsCollector against raw nats-py on the same bytes.

The path: NatsSink -> JetStream (-> NatsCollector -> Arrow directory); the anchor: raw nats-py
publishing (and consuming) the same bytes.

Target (DESIGN.md "Performance"): NATS sink + consumer >= 0.8x raw nats-py JetStream publishing
of the same bytes. The payload is real recorded CartPole transitions in the writer's batches
(``--batch-rows``, default 8192); the anchors send each batch's Arrow IPC bytes cut as the sink
cuts them to fit the server's ``max_payload`` (halves: 8192 CartPole rows are 1.4 MB, over the
default 1 MiB), serialized before the clock starts. Every candidate gets a fresh stream made the
sink's way (`ensure_stream`: file storage, 120 s duplicate window), deleted after its run;
connecting, creating streams and consumers and starting the server are not timed. Per round,
interleaved:

- raw publish: ``js.publish_async`` of every message with a ``Nats-Msg-Id`` header, as the sink
  sends it, on an event loop of this process; from the first publish to the last
  acknowledgement.
- sink: `NatsSink.write` of every batch (serializing included; a write the full window still
  refuses after the sink's own 0.25 s wait for room is retried every 5 ms and counted: the
  writer would keep it in its backlog), then ``wait_acknowledged``; from the first write to
  the last acknowledgement (``close`` untimed).
- raw publish + raw consume: the raw publish while a durable pull consumer in a process of its
  own (this script with ``--raw-consumer``) fetches 32 messages at a time with a 0.25 s timeout
  (as the collector does) and acknowledges each; from the first publish until that process says
  it acknowledged the last one. A second anchor also appends every message to a file there
  (what any collector must at least do).
- sink + consumer: ``relayrl-gym serve --source nats://.../STREAM --sink DIR`` in a process of
  its own, started before (as actors and collectors run); from the first ``write`` until its
  counters (printed every 10 ms) show every row committed to the run's Arrow files (read,
  validated, written, committed).

First, ``wrap(CartPole-v1, actors=4)`` steps recording to nothing, to an Arrow directory and to
a NatsSink on a fresh stream (close included: every batch acknowledged by JetStream), for the
transitions/s an actor sustains (before the transport rounds: a server still deleting their
large streams answers slowly).

Run: python benchmarks/nats_throughput.py [--rows 400000] [--rounds 5] [--batch-rows 8192]
     [--compression lz4] [--env-steps 20000] [--dir DIR] [--url nats://127.0.0.1:4222]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import nats
import pyarrow as pa
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import env_steps_per_second, interleave, recorded_batches

import relayrl_gym
from relayrl_gym.errors import SinkError
from relayrl_gym.transport.nats.options import parse_nats_url
from relayrl_gym.transport.nats.sink import NatsSink
from relayrl_gym.transport.nats.streams import MSG_ID, ensure_stream

T = TypeVar("T")
FETCH, FETCH_TIMEOUT = 32, 0.25  # the collector's pull: 32 messages, 0.25 s
HEADER_ROOM = 4096  # what the sink keeps free under max_payload for its headers
TIMEOUT = 120.0  # seconds any one run may take before the benchmark gives up


def messages_of(batches: list[pa.RecordBatch], max_payload: int) -> list[bytes]:
    """The IPC bytes the sink publishes for ``batches``: each cut in halves until it fits."""
    def parts(batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        if batch.nbytes <= max_payload - HEADER_ROOM or batch.num_rows <= 1:
            return [batch]
        half = batch.num_rows // 2
        return parts(batch.slice(0, half)) + parts(batch.slice(half))
    return [part.serialize().to_pybytes() for batch in batches for part in parts(batch)]


class Anchors:
    """nats-py on an event loop thread of its own (as the sink's and collector's are): the
    raw anchors, and the creation and deletion of every stream the benchmark uses."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-nats-loop",
                                        daemon=True)
        self._thread.start()
        self.streams: set[str] = set()
        self.nc = self.call(nats.connect(**parse_nats_url(f"{self.url}/x").connect_options(),
                                         connect_timeout=5, max_reconnect_attempts=0))
        self.js = self.nc.jetstream()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT + 10)

    def new_stream(self, create: bool = True) -> str:
        """A fresh stream's name (created the sink's way unless ``create`` is False: the sink
        or the server creates it); it is deleted by `delete` or `close`."""
        name = f"bench_{uuid.uuid4().hex[:12]}"
        self.streams.add(name)
        if create:
            self.call(ensure_stream(self.js, parse_nats_url(f"{self.url}/{name}")))
        return name

    def delete(self, name: str) -> None:
        self.streams.discard(name)
        with contextlib.suppress(NotFoundError):
            self.call(self.js.delete_stream(name))

    def close(self) -> None:
        for name in list(self.streams):
            with contextlib.suppress(Exception):
                self.delete(name)
        with contextlib.suppress(Exception):
            self.call(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def publish(self, messages: list[bytes]) -> float:
        """Seconds from the first publish to the last acknowledgement, on a fresh stream."""
        name = self.new_stream()
        try:
            return self.call(asyncio.wait_for(self._publish_timed(name, messages), TIMEOUT))
        finally:
            self.delete(name)

    def publish_and_consume(self, messages: list[bytes], out: Path | None) -> float:
        """Seconds from the first publish until a pull consumer in another process
        acknowledged every message (having appended each to ``out``, if given), on a fresh
        stream."""
        name = self.new_stream()
        command = [sys.executable, __file__, "--raw-consumer", f"{self.url}/{name}",
                   str(len(messages)), *(["--out", str(out)] if out is not None else [])]
        consumer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            if consumer.stdout is None or consumer.stdout.readline().strip() != "ready":
                raise RuntimeError("the raw consumer did not start")
            start = time.perf_counter()
            self.call(asyncio.wait_for(self._publish(name, messages), TIMEOUT))
            if consumer.stdout.readline().strip() != "done":
                raise RuntimeError("the raw consumer did not acknowledge every message")
            return time.perf_counter() - start
        finally:
            consumer.kill()
            consumer.wait()
            self.delete(name)

    async def _publish_timed(self, name: str, messages: list[bytes]) -> float:
        start = time.perf_counter()
        await self._publish(name, messages)
        return time.perf_counter() - start

    async def _publish(self, name: str, messages: list[bytes]) -> None:
        futures = [await self.js.publish_async(f"{name}.data", data,
                                               headers={MSG_ID: f"bench/{i}"})
                   for i, data in enumerate(messages)]
        acks = await asyncio.gather(*futures)
        if acks[-1].seq != len(messages):
            raise RuntimeError(f"stream {name} holds {acks[-1].seq} of {len(messages)} messages")


async def raw_consume(url: str, count: int, out: str | None) -> None:
    """The raw consumer's process: a durable pull consumer acknowledging ``count`` messages
    (appending each to ``out``); says ``ready`` once subscribed and ``done`` at the end."""
    target = parse_nats_url(url)
    nc = await nats.connect(**target.connect_options())
    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=4096, ack_wait=30)
    sub = await nc.jetstream().pull_subscribe(f"{target.stream}.>", durable="bench",
                                              stream=target.stream, config=config)
    print("ready", flush=True)
    received = 0
    with open(out, "wb") if out is not None else contextlib.nullcontext() as file:
        while received < count:
            try:
                batch = await sub.fetch(batch=FETCH, timeout=FETCH_TIMEOUT)
            except asyncio.TimeoutError:  # nats-py's TimeoutError is one too
                continue
            for msg in batch:
                if file is not None:
                    file.write(msg.data)
                await msg.ack()
            received += len(batch)
    await nc.flush()
    print("done", flush=True)
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-rows", type=int, default=8192)
    parser.add_argument("--compression", default="lz4", choices=["lz4", "zstd", "none"],
                        help="the consumer's Arrow file compression (default lz4)")
    parser.add_argument("--env-steps", type=int, default=20_000,
                        help="steps of the wrapped-CartPole comparison")
    parser.add_argument("--dir", default=None,
                        help="where the consumer (and the file anchor) write (default: a "
                        "temporary directory; /dev/shm takes the disk out of the figure)")
    parser.add_argument("--raw-consumer", nargs=2, metavar=("URL", "COUNT"), default=None,
                        help=argparse.SUPPRESS)  # the raw consumer's process
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", default="nats://127.0.0.1:4222",
                        help="the NATS server, JetStream on (default nats://127.0.0.1:4222); "
                        "the benchmark creates its streams there and deletes them")
    args = parser.parse_args()
    if args.raw_consumer:
        asyncio.run(raw_consume(args.raw_consumer[0], int(args.raw_consumer[1]), args.out))
        return

    try:
        anchors = Anchors(args.url)
    except Exception as err:
        raise SystemExit(f"cannot reach a NATS server at {args.url} ({type(err).__name__}: "
                         f"{err}); start one with JetStream on (nats-server -js), or give "
                         "--url") from err
    work = Path(tempfile.mkdtemp(prefix="nats-bench-", dir=args.dir))
    schema, batches = recorded_batches(args.rows, args.batch_rows, work / "source")
    messages = messages_of(batches, anchors.nc.max_payload)
    total_bytes = sum(len(m) for m in messages)
    print(f"{args.rows} CartPole transitions in {len(batches)} batches, {len(messages)} "
          f"messages (max_payload {anchors.nc.max_payload}), {total_bytes / 1e6:.1f} MB of "
          "Arrow IPC")
    collected, spill, raw_files = work / "collected", work / "spill", work / "raw-files"
    raw_files.mkdir()
    refused = [0]

    def started_sink(name: str) -> NatsSink:
        sink = NatsSink(f"{anchors.url}/{name}", spill_dir=spill)
        sink.start(f"bench-{uuid.uuid4().hex[:8]}", schema)
        deadline = time.monotonic() + 10
        while not sink.connected:  # stream found, schema published
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sink did not connect to {anchors.url}: "
                                   f"{sink.link.problem if sink.link else ''}")
            time.sleep(0.005)
        return sink

    def write_all(sink: NatsSink) -> None:
        for batch in batches:
            while True:
                try:
                    sink.write(batch)
                    break
                except SinkError:  # the window is still full: the writer would keep it
                    if not sink.connected:
                        raise
                    refused[0] += 1
                    time.sleep(0.005)

    def through_sink() -> float:
        name, sink = anchors.new_stream(create=False), None
        try:
            sink = started_sink(name)
            start = time.perf_counter()
            write_all(sink)
            if not sink.wait_acknowledged(TIMEOUT):
                raise RuntimeError("JetStream did not acknowledge every batch")
            elapsed = time.perf_counter() - start
        finally:
            if sink is not None:
                sink.close()
            anchors.delete(name)
        return args.rows / elapsed

    def through_consumer() -> float:
        name = anchors.new_stream(create=False)
        serve = subprocess.Popen(
            [sys.executable, "-m", "relayrl_gym.cli.main", "serve", "--source",
             f"{anchors.url}/{name}", "--sink", str(collected), "--stats-every", "0.01",
             "--compression", args.compression], stdout=subprocess.PIPE, text=True)
        sink = None
        try:
            assert serve.stdout is not None
            if "consuming" not in serve.stdout.readline():
                raise RuntimeError("relayrl-gym serve did not start")
            sink = started_sink(name)
            start = time.perf_counter()
            write_all(sink)
            committed = 0
            while committed < args.rows:  # its counters, every 10 ms
                line = serve.stdout.readline()
                if not line:
                    raise RuntimeError(f"serve stopped with {committed} rows committed")
                found = re.search(r"\brows=(\d+)", line)
                committed = int(found.group(1)) if found else committed
            elapsed = time.perf_counter() - start
        finally:
            if sink is not None:
                sink.close()
            serve.send_signal(signal.SIGINT)
            serve.communicate(timeout=30)
            anchors.delete(name)
        return args.rows / elapsed

    def env_to_nats() -> float:
        name = anchors.new_stream(create=False)
        try:
            query = urlencode({"models": "off", "spill": str(spill)})
            return env_steps_per_second(f"{anchors.url}/{name}?{query}", args.env_steps)
        finally:
            anchors.delete(name)

    candidates = {
        "raw publish": lambda: args.rows / anchors.publish(messages),
        "sink": through_sink,
        "raw publish + raw consume": lambda: args.rows / anchors.publish_and_consume(
            messages, None),
        "raw publish + raw consume + file": lambda: args.rows / anchors.publish_and_consume(
            messages, raw_files / uuid.uuid4().hex),
        "sink + consumer": through_consumer,
    }
    try:
        env_rates = interleave({
            "no sink": lambda: env_steps_per_second(None, args.env_steps),
            "Arrow directory": lambda: env_steps_per_second(work / "env-local",
                                                            args.env_steps),
            "NATS sink": env_to_nats}, max(1, args.rounds // 2))
        for run in candidates.values():  # warm every path up (connections, page cache)
            run()
        refused[0] = 0
        result = interleave(candidates, args.rounds)
    finally:
        anchors.close()
    publish, consume = result["raw publish"], result["raw publish + raw consume"]
    for name, rate in result.items():
        print(f"{name:32s} {rate:12,.0f} transitions/s  "
              f"{rate * total_bytes / args.rows / 1e6:8.1f} MB/s  {rate / publish:5.2f}x raw "
              "publish")
    print(f"sink + consumer / raw publish + raw consume: "
          f"{result['sink + consumer'] / consume:5.2f}x")
    print("target: sink + consumer >= 0.8x raw publish")
    print(f"writes refused with a full window (retried): {refused[0]} in {args.rounds} rounds")
    print(f"wrap(CartPole-v1, actors=4), {args.env_steps} steps, recording to:")
    for name, rate in env_rates.items():
        print(f"  {name:16s} {rate:12,.0f} transitions/s  {rate / env_rates['no sink']:5.2f}x "
              "no sink")
    runs = list(collected.iterdir())
    written = sum(len(relayrl_gym.load(run)) for run in runs)
    print(f"consumer wrote {written} rows in {len(runs)} runs "
          f"(expected {args.rows * (args.rounds + 1)})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
