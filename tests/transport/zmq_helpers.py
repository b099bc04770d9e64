"""Helpers of the transport tests: collectors and actor processes, comparing datasets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import zmq

import relayrl_gym
from relayrl_gym.transport.payloads import payload_crc
from relayrl_gym.transport.protocol import ProtocolViolation, decode_header, encode

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
KEY_COLUMNS = ["actor_id", "episode_id", "step"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def start_actor(*args: str, cwd: Path) -> subprocess.Popen:
    """An actor process (zmq_actor.py); its first stdout line names its run."""
    return subprocess.Popen([sys.executable, str(HERE / "zmq_actor.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def first_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"process ended without output: {proc.stderr.read()}")
    return json.loads(line)


def finish(proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def start_serve(*args: str, cwd: Path, preexec_fn=None) -> tuple[subprocess.Popen, str]:
    """``relayrl-gym serve`` in its own process; returns it with its data endpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "relayrl_gym.cli.main", "serve",
                             "--stats-every", "0", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=preexec_fn)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"serve did not start: {line} {proc.stderr.read()}")
    return proc, line.split("listening on ")[1].split(",")[0]


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)


def wait_until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def committed_rows(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "_collector.json").read_text())["rows"])
    except (OSError, ValueError):
        return 0


def rows(path: Path) -> pa.Table:
    """A run's rows without the timestamp-free columns that differ by sink, keyed and sorted."""
    table = relayrl_gym.load(path).table
    return table.sort_by([(c, "ascending") for c in KEY_COLUMNS])


def assert_no_duplicates(table: pa.Table) -> None:
    keys = table.group_by(KEY_COLUMNS).aggregate([("step", "count")])
    assert pc.max(keys["step_count"]).as_py() == 1, "some transition was written twice"


def assert_same_rows(got: pa.Table, expected: pa.Table) -> None:
    assert_no_duplicates(got)
    assert got.num_rows == expected.num_rows
    for name in ("actor_id", "episode_id", "step", "obs", "action", "reward", "next_obs",
                 "terminated", "truncated", "model_version"):
        assert got[name].equals(expected[name]), name


def record_batches(tmp_path, steps=20, env_id="CartPole-v1"):
    """A real recorded run: its schema (with metadata) and batches."""
    envs = relayrl_gym.wrap(env_id, actors=2, sink=tmp_path / "local")
    envs.reset(seed=0)
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    envs.close()
    (part,) = (tmp_path / "local" / envs.run_id).glob("part-*.arrow")
    with pa.ipc.open_file(str(part)) as reader:
        return reader.schema, [reader.get_batch(i) for i in range(reader.num_record_batches)]


class RawClient:
    """A hand-driven DEALER: sends the frames a test gives. A start or batch header without a
    ``crc`` field gets its payload's CRC-32, as a sender sets it (pass ``crc=...`` in the
    header to send another value)."""

    def __init__(self, endpoint: str, **curve: bytes) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        for name, value in curve.items():
            setattr(self.sock, name, value)
        self.sock.connect(endpoint)

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(with_crc(list(frames)))

    def reply(self, timeout_ms: int = 3000):
        assert self.sock.poll(timeout_ms), "no reply"
        return decode_header(self.sock.recv_multipart()[0])

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def with_crc(frames: list) -> list:
    """``frames`` with the payload's CRC-32 added to a start or batch header that lacks one."""
    if len(frames) != 2:
        return frames
    try:
        header = decode_header(frames[0])
    except ProtocolViolation:
        return frames
    if header.kind.value not in ("start", "batch") or "crc" in header.fields:
        return frames
    return [encode(header.kind, **header.fields, crc=payload_crc(frames[1])), frames[1]]
