"""The dataset commands, run as a user runs them: inspect a folder of runs, export, plot."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

import relayrl_gym


def _cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "relayrl_gym.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180, env=env)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    for seed in ("0", "1"):
        out = _cli("collect", "CartPole-v1", "--actors", "2", "--steps", "300", "--seed", seed,
                   "--no-progress", cwd=cwd)
        assert out.returncode == 0, out.stderr
    return cwd


def test_inspect_a_folder_lists_each_run(two_runs):
    shown = _cli("inspect", "relayrl_runs", cwd=two_runs)
    assert shown.returncode == 0, shown.stderr
    ds = relayrl_gym.load(two_runs / "relayrl_runs")
    assert shown.stdout.startswith("2 runs in relayrl_runs")
    assert all(f"run {run_id}" in shown.stdout for run_id in ds.run_ids)
    for run_id in ds.run_ids:
        assert f"steps {len(ds.filter(runs=[run_id]))} " in shown.stdout


def test_export_parquet_and_its_errors(two_runs, tmp_path):
    out = _cli("export", "relayrl_runs", "--to", f"parquet:{tmp_path / 'pq'}", "--no-progress",
               cwd=two_runs)
    assert out.returncode == 0, out.stderr
    rows = len(relayrl_gym.load(two_runs / "relayrl_runs"))
    assert f"{rows} transitions of 2 run(s) written" in out.stdout
    assert pq.read_table(tmp_path / "pq" / "data").num_rows == rows
    again = _cli("export", "relayrl_runs", "--to", f"parquet:{tmp_path / 'pq'}", cwd=two_runs)
    assert again.returncode == 2 and "already exists and is not an empty folder" in again.stderr
    assert "Traceback" not in again.stderr
    wrong = _cli("export", "relayrl_runs", "--to", "csv:out", cwd=two_runs)
    assert wrong.returncode == 2
    assert "--to must be minari:<dataset_id> or parquet:<folder>, got 'csv:out'" in wrong.stderr


def test_export_minari_then_load_it_back(two_runs, tmp_path):
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "minari")}
    out = _cli("export", "relayrl_runs", "--to", "minari:relayrl/cartpole-random-v0",
               cwd=two_runs, env=env)
    assert out.returncode == 0, out.stderr
    assert "Minari dataset(s) relayrl/cartpole-random-v0 written" in out.stdout
    again = _cli("export", "relayrl_runs", "--to", "minari:relayrl/cartpole-random-v0",
                 cwd=two_runs, env=env)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "relayrl/cartpole-random-v0" in again.stderr
    shown = _cli("inspect", "minari:relayrl/cartpole-random-v0", cwd=two_runs, env=env)
    assert shown.returncode == 0, shown.stderr
    finished = relayrl_gym.load(two_runs / "relayrl_runs").summary().episodes
    assert f"episodes {finished} (+0 unfinished)" in shown.stdout


def test_plot_writes_the_image(two_runs, tmp_path):
    out = _cli("plot", "relayrl_runs", "-o", str(tmp_path / "r.png"), "--by", "run",
               cwd=two_runs)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = _cli("plot", "relayrl_runs", "-o", str(tmp_path / "r.xyz"), cwd=two_runs)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_inspect_a_folder_of_different_envs(tmp_path):
    from tests_helpers import make_testing_env, record_random

    cartpole = record_random(tmp_path / "relayrl_runs")
    other = record_random(tmp_path / "relayrl_runs", env=make_testing_env(), steps=5)
    shown = _cli("inspect", "relayrl_runs", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"run {cartpole.run_id}" in shown.stdout and f"run {other.run_id}" in shown.stdout
