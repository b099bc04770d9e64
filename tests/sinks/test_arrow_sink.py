"""The Arrow sink: rotation, time-based flush, plain-reader compatibility, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

import relayrl_gym
from relayrl_gym.sinks.arrow import ArrowSink

REPO = Path(__file__).resolve().parents[2]


def _collect(sink, steps=500, actors=4, **kwargs):
    envs = relayrl_gym.wrap("CartPole-v1", actors=actors, sink=sink, **kwargs)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        envs.step(rng.integers(0, 2, actors))
    return envs


def test_files_rotate_and_read_back_in_order(tmp_path):
    envs = _collect(ArrowSink(tmp_path, max_file_bytes=20_000), steps=2000, batch_rows=256)
    sink_files_before = sorted(p.name for p in envs.run_path.iterdir())
    envs.close()
    parts = sorted(envs.run_path.glob("part-*.arrow"))
    assert len(parts) > 2
    assert not list(envs.run_path.glob(".*inprogress"))
    assert "_run.json" in sink_files_before
    ds = relayrl_gym.load(envs.run_path)
    steps = ds.table.column("timestamp").cast("int64").to_numpy()
    assert (np.diff(steps) >= 0).all()  # files read in the order written


def test_time_based_flush_makes_data_visible_while_running(tmp_path):
    envs = _collect(tmp_path, steps=100, flush_interval=0.1)
    time.sleep(0.5)
    recorded = envs.agent.recorder.rows_recorded
    assert len(relayrl_gym.load(envs.run_path)) == recorded  # read while the env is open
    envs.close()


def test_plain_readers_without_relayrl_gym(tmp_path):
    envs = _collect(tmp_path)
    envs.close()
    table = pads.dataset(envs.run_path, format="ipc").to_table()
    assert table.num_rows == len(relayrl_gym.load(envs.run_path))
    obs_field = table.schema.field("obs")
    assert json.loads(obs_field.metadata[b"shape"]) == [4]
    meta = json.loads(table.schema.metadata[b"relayrl_gym"])
    assert meta["env_id"] == "CartPole-v1" and meta["observation_space"]["type"] == "Box"

    import duckdb
    import pandas as pd

    frame = pd.read_feather(sorted(envs.run_path.glob("part-*.arrow"))[0])
    assert {"obs", "action", "reward", "next_obs", "terminated"} <= set(frame.columns)
    dataset = pads.dataset(envs.run_path, format="ipc")  # noqa: F841 - used by DuckDB by name
    per_actor = duckdb.sql("select actor_id, count(*) n, sum(reward) r from dataset "
                           "group by actor_id").fetchall()
    assert len(per_actor) == 4 and sum(r[1] for r in per_actor) == table.num_rows


_CHILD = textwrap.dedent("""
    import sys, time, numpy as np, relayrl_gym
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sys.argv[1], flush_interval=0.2,
                            run_id="crash")
    envs.reset(seed=0)
    rows = 0
    for _ in range(int(sys.argv[2])):
        _, _, term, trunc, _ = envs.step(np.array([0, 1]))
    rows = envs.agent.recorder.rows_recorded
    if sys.argv[3] == "exit":
        print(rows, flush=True)
        sys.exit(0)          # no close(): interpreter exit must flush
    time.sleep(1.0)          # > flush_interval: everything so far is flushed
    print(rows, flush=True)
    while True:
        envs.step(np.array([0, 1]))   # keep writing until killed mid-run
""")


@pytest.mark.slow
def test_sigkill_mid_run_keeps_everything_up_to_the_last_flush(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), "3000", "kill"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    flushed_rows = int(proc.stdout.readline())
    time.sleep(0.35)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = tmp_path / "crash"
    assert list(run.glob(".*.inprogress"))  # the file being written had no footer
    ds = relayrl_gym.load(run)
    assert len(ds) >= flushed_rows
    t = ds.transitions()
    assert np.isfinite(t.obs).all() and len(t.reward) == len(ds)


@pytest.mark.slow
def test_interpreter_exit_without_close_flushes_everything(tmp_path):
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), "777", "exit"],
                         capture_output=True, text=True, cwd=REPO, check=True, timeout=60)
    rows = int(out.stdout.strip())
    assert len(relayrl_gym.load(tmp_path / "crash")) == rows
    assert not list((tmp_path / "crash").glob(".*.inprogress"))


def test_multiple_sinks_get_the_same_rows(tmp_path):
    envs = _collect([tmp_path / "a", ArrowSink(tmp_path / "b", compression=None)], steps=50)
    envs.close()
    a = relayrl_gym.load(tmp_path / "a" / envs.run_id).table
    b = relayrl_gym.load(tmp_path / "b" / envs.run_id).table
    assert a.equals(b)


def test_failing_sink_keeps_batches_and_close_reports_them(tmp_path):
    class Flaky(ArrowSink):
        fail = True

        def write(self, batch: pa.RecordBatch) -> None:
            if self.fail:
                raise OSError("disk unplugged")
            super().write(batch)

    flaky = Flaky(tmp_path / "flaky")
    envs = _collect([tmp_path / "ok", flaky], steps=50)
    envs.flush()
    assert envs.agent.writer.errors >= 1
    flaky.fail = False
    envs.flush()  # retried at the next flush, nothing dropped
    envs.close()
    ok = relayrl_gym.load(tmp_path / "ok" / envs.run_id)
    assert relayrl_gym.load(tmp_path / "flaky" / envs.run_id).table.equals(ok.table)


def test_close_raises_when_a_sink_never_recovers(tmp_path):
    class Dead(ArrowSink):
        def write(self, batch):
            raise OSError("gone")

    envs = _collect(Dead(tmp_path), steps=20)
    with pytest.raises(relayrl_gym.RelayRLError, match="rows could not be written"):
        envs.close()


def test_existing_run_directory_is_refused(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(relayrl_gym.RelayRLError, match="already exists"):
        relayrl_gym.wrap("CartPole-v1", sink=tmp_path, run_id="taken")


_ZSTD_FRAME = b"\x28\xb5\x2f\xfd"  # the magic numbers that begin a compressed buffer's frame
_LZ4_FRAME = b"\x04\x22\x4d\x18"


def _codecs(run_path: Path) -> set[str]:
    data = b"".join(p.read_bytes() for p in sorted(run_path.glob("part-*.arrow")))
    return {name for name, magic in (("zstd", _ZSTD_FRAME), ("lz4", _LZ4_FRAME))
            if magic in data}


@pytest.mark.parametrize(("compression", "image", "expected"), [
    ("auto", False, {"lz4"}),  # small observations: the faster codec
    ("auto", True, {"zstd"}),  # images: the smaller files
    ("zstd", False, {"zstd"}),
    ("lz4", True, {"lz4"}),
    (None, True, set()),
])
def test_auto_compression_picks_by_observation_size_and_reads_back(
        tmp_path: Path, compression: str | None, image: bool, expected: set[str]) -> None:
    from gymnasium import spaces
    from tests_helpers import make_testing_env

    obs_space = (spaces.Box(0, 255, (32, 32, 4), np.uint8) if image
                 else spaces.Box(-1, 1, (4,), np.float32))
    envs = relayrl_gym.wrap(make_testing_env(obs_space=obs_space, length=7), actors=2,
                            sink=ArrowSink(tmp_path, compression=compression))
    envs.reset(seed=0)
    for _ in range(40):
        envs.step(np.array([0, 1]))
    envs.close()
    assert _codecs(envs.run_path) == expected
    assert len(relayrl_gym.load(envs.run_path)) == 2 * 40 - 2 * (40 // 8)
    with pytest.raises(relayrl_gym.errors.ConfigError, match="'auto', 'zstd', 'lz4' or None"):
        ArrowSink(tmp_path, compression="gzip")
