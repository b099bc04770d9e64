"""A full block is built into its Arrow batch on the thread that recorded it; nothing recorded
is lost when that goes wrong, Ctrl-C included."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import relayrl_gym


def _steps_until(envs, raised=KeyboardInterrupt) -> None:
    """Steps a reset CartPole pair until the interruption the test arranged is raised."""
    envs.reset(seed=0)
    with pytest.raises(raised):
        for _ in range(100):
            envs.step(np.array([0, 1]))


def _builds_on_this_thread(recorder) -> list[bool]:
    """Whether each block the recorder builds is built on the calling (main) thread."""
    build, here = recorder.to_record_batches, []

    def spied(block):
        if block.arrow is None:
            here.append(threading.current_thread() is threading.main_thread())
        return build(block)

    recorder.to_record_batches = spied
    return here


@pytest.mark.parametrize("moment", ["build", "write"])
def test_ctrl_c_while_a_block_is_built_or_written_loses_no_row(tmp_path, monkeypatch,
                                                               moment) -> None:
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path, batch_rows=32)
    recorder = envs.agent.recorder
    build = recorder.to_record_batches
    interrupted = []

    def interrupted_once(block):
        # "build": as the recording thread builds the block; "write": as it begins to write
        # it (the writer is idle, so the recording thread writes it itself)
        at_moment = block.arrow is None if moment == "build" else (
            block.arrow is not None and threading.current_thread() is threading.main_thread())
        if not interrupted and at_moment:
            interrupted.append(block.n)
            raise KeyboardInterrupt  # as if Ctrl-C arrived just then
        return build(block)

    monkeypatch.setattr(recorder, "to_record_batches", interrupted_once)
    _steps_until(envs)
    recorded = recorder.rows_recorded
    envs.close()
    assert interrupted == [32]
    assert len(relayrl_gym.load(envs.run_path)) == recorded, (recorded, interrupted)


def test_a_block_that_fails_to_build_is_built_again_by_the_writer(tmp_path,
                                                                         monkeypatch) -> None:
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path, batch_rows=32)
    recorder = envs.agent.recorder
    build = recorder.to_record_batches
    calls = []

    def flaky(block):  # fails on the recording thread only, the first time
        calls.append((id(block), block.n,
                      threading.current_thread() is threading.main_thread()))
        if len(calls) == 1:
            raise MemoryError("no memory for the batch just now")
        return build(block)

    monkeypatch.setattr(recorder, "to_record_batches", flaky)
    envs.reset(seed=0)
    for _ in range(40):
        envs.step(np.array([0, 1]))
    envs.close()
    failed = calls[0]
    assert failed[1:] == (32, True)  # tried on the recording thread...
    assert (failed[0], 32, False) in calls[1:]  # ...then the same block by the writer
    assert len(relayrl_gym.load(envs.run_path)) == recorder.rows_recorded > 64


def test_large_rows_are_built_by_the_writer_and_every_row_lands(tmp_path) -> None:
    import gymnasium as gym

    from relayrl_gym.recording.recorder import WRITER_BUILDS_FROM

    class Frames(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (WRITER_BUILDS_FROM,), np.uint8)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.zeros(WRITER_BUILDS_FROM, np.uint8), {}

        def step(self, action):
            self.t += 1
            return (np.full(WRITER_BUILDS_FROM, self.t % 251, np.uint8), 1.0, self.t % 50 == 0,
                    False, {})

    envs = relayrl_gym.wrap(Frames, actors=2, sink=tmp_path, batch_rows=16)
    here = _builds_on_this_thread(envs.agent.recorder)
    envs.reset(seed=0)
    for _ in range(120):  # many full buffers, none built on this thread
        envs.step(np.array([0, 1]))
    envs.close()
    assert here and not any(here)
    table = relayrl_gym.load(envs.run_path).table
    assert len(table) == envs.agent.recorder.rows_recorded == 2 * 120 - 4  # 4 autoreset steps
    assert table.column("step").to_pylist()[:3] == [0, 0, 1]


def test_blocks_written_by_the_recording_thread_keep_their_order_with_the_writers(
        tmp_path) -> None:
    # Small blocks written on this thread while the writer flushes partial ones every 10 ms.
    envs = relayrl_gym.wrap("CartPole-v1", actors=3, sink=tmp_path, batch_rows=16,
                            flush_interval=0.01)
    writer = envs.agent.writer
    assert writer.inline and envs.agent.recorder.writes_here
    written_here = []
    write_now = writer.write_now

    def counted(recorder, buf):
        done = write_now(recorder, buf)
        written_here.append(done)
        return done

    writer.write_now = counted
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        envs.step(rng.integers(0, 2, 3))
    envs.close()
    assert any(written_here)  # most blocks, once the writer is idle
    table = relayrl_gym.load(envs.run_path).to_pandas()
    assert len(table) == envs.agent.recorder.rows_recorded
    assert table["timestamp"].is_monotonic_increasing
    for _, rows in table.groupby("env_index"):
        for _, episode in rows.groupby("episode_id", sort=False):
            assert episode["step"].tolist() == list(range(len(episode)))


def test_only_local_sinks_are_written_by_the_recording_thread(tmp_path) -> None:
    local = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path / "a")
    mixed = relayrl_gym.wrap("CartPole-v1", actors=2,
                             sink=[str(tmp_path / "b"), f"sqlite:///{tmp_path / 'r.db'}"])
    assert local.agent.writer.inline and not mixed.agent.writer.inline
    local.close()
    mixed.close()


def test_a_ctrl_c_arriving_while_this_thread_writes_a_block_waits_for_the_block(
        tmp_path, monkeypatch) -> None:
    import signal

    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path, batch_rows=32)
    sink = envs.agent.writer.sinks[0]
    write = sink.write
    signalled = []

    def ctrl_c_inside(batch):
        if not signalled and threading.current_thread() is threading.main_thread():
            signalled.append(batch.num_rows)
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, halfway into the write
        return write(batch)

    monkeypatch.setattr(sink, "write", ctrl_c_inside)
    _steps_until(envs)
    recorded = envs.agent.recorder.rows_recorded
    envs.close()
    assert len(signalled) == 1
    assert len(relayrl_gym.load(envs.run_path)) == recorded
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("signum", ["SIGINT", "SIGUSR1"])
def test_a_signal_as_this_thread_claims_the_sinks_leaves_no_claim_and_loses_no_row(
        tmp_path, signum) -> None:
    # The signal is handled at the first check for signals after the claim (the return of the
    # lock's __exit__): Ctrl-C is held until the block is written; another signal's handler
    # (here one that exits, as launchers install for SIGTERM) raises there, and the block is
    # queued for the writer.
    import signal
    import sys

    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path, batch_rows=32)
    writer = envs.agent.writer
    fired = []

    def exit_now(number, frame):
        raise SystemExit(143)

    def profiler(frame, event, arg):
        if (not fired and event == "c_return" and frame.f_code.co_name == "write_now"
                and writer._busy):
            fired.append(True)
            signal.raise_signal(getattr(signal, signum))

    previous = signal.signal(signal.SIGUSR1, exit_now)
    sys.setprofile(profiler)
    try:
        _steps_until(envs, KeyboardInterrupt if signum == "SIGINT" else SystemExit)
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGUSR1, previous)
    assert fired
    recorded = envs.agent.recorder.rows_recorded
    writer.flush(timeout=5.0)  # nobody holds the sinks
    assert not writer._busy
    envs.close()
    assert len(relayrl_gym.load(envs.run_path)) == recorded


def test_a_ctrl_c_while_this_thread_checks_whether_it_may_write_loses_no_row(
        tmp_path, monkeypatch) -> None:
    import signal
    import sys

    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path, batch_rows=32)
    writer = envs.agent.writer
    alive = writer._thread.is_alive
    signalled = []

    def is_alive():
        if (not signalled and threading.current_thread() is threading.main_thread()
                and sys._getframe(1).f_code.co_name == "write_now"):
            signalled.append(True)
            signal.raise_signal(signal.SIGINT)
        return alive()

    monkeypatch.setattr(writer._thread, "is_alive", is_alive)
    _steps_until(envs)
    recorded = envs.agent.recorder.rows_recorded
    monkeypatch.undo()
    envs.close()
    assert signalled
    assert len(relayrl_gym.load(envs.run_path)) == recorded


def test_a_block_recorded_while_the_writer_is_at_the_sink_is_queued_behind_it(
        tmp_path) -> None:
    # The writer thread is held inside the sink's write (a partial block of its time-based
    # flush) while this thread hands full blocks over: they must wait behind it, in order.
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path, batch_rows=16,
                            flush_interval=0.05)
    writer = envs.agent.writer
    sink = writer.sinks[0]
    write, entered, release = sink.write, threading.Event(), threading.Event()

    def held(batch):
        if threading.current_thread() is not threading.main_thread() and not release.is_set():
            entered.set()
            release.wait(5.0)
        return write(batch)

    sink.write = held
    write_now, results = writer.write_now, []

    def spied(recorder, buf):
        done = write_now(recorder, buf)
        results.append((entered.is_set() and not release.is_set(), done))
        return done

    writer.write_now = spied
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        if entered.is_set():
            break
        envs.step(rng.integers(0, 2, 2))
        time.sleep(0.001)
    assert entered.wait(5.0)
    for _ in range(40):  # several full blocks while the writer is held
        envs.step(rng.integers(0, 2, 2))
    release.set()
    envs.close()
    while_held = [done for held_then, done in results if held_then]
    assert while_held and not any(while_held)  # none written beside the writer
    table = relayrl_gym.load(envs.run_path).to_pandas()
    assert len(table) == envs.agent.recorder.rows_recorded
    assert table["timestamp"].is_monotonic_increasing


@pytest.mark.parametrize("game", [False, True], ids=["vector", "game"])
def test_blocks_the_time_based_flush_asks_for_are_built_by_the_stepping_thread(
        tmp_path, game) -> None:
    # Steps too slow to fill a block between two flushes: at each, the writer asks for the
    # rows (built here, at the next step) instead of building them while this thread steps.
    if game:
        from pettingzoo.classic import rps_v2

        env = relayrl_gym.wrap(rps_v2.parallel_env(max_cycles=10**6), sink=tmp_path,
                               flush_interval=0.2)
        recorder = env.recording.runs[0].recorder
    else:
        env = relayrl_gym.wrap("CartPole-v1", actors=2, sink=tmp_path, flush_interval=0.2)
        recorder = env.agent.recorder
    here = _builds_on_this_thread(recorder)
    env.reset(seed=0)
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # ~7 time-based flushes
        if game:
            env.step({agent: 0 for agent in env.agents})
        else:
            env.step(np.array([0, 1]))
        time.sleep(0.001)
    built_while_stepping = list(here)
    time.sleep(0.6)  # idle: the writer takes what is left after asking for it
    table = relayrl_gym.load(env.run_path).table  # read while the env is open
    assert len(table) == recorder.rows_recorded
    env.close()
    assert len(built_while_stepping) >= 5 and all(built_while_stepping), built_while_stepping


def test_rows_of_a_slowly_stepped_game_reach_the_sink_within_a_flush_interval(
        tmp_path, monkeypatch) -> None:
    # A game records its rows 256 at a time: asked for them, the next turn hands over those
    # waiting with the recorder's block, none left for a later flush.
    from pettingzoo.classic import rps_v2

    from relayrl_gym.recording.delivery import SinkDelivery

    delays: list[float] = []
    offer = SinkDelivery.offer

    def timed(self, batch):  # how old the oldest row of each batch is when it reaches a sink
        stamps = batch.column("timestamp").cast("int64").to_numpy()
        delays.append((time.time_ns() - int(stamps.min())) / 1e9)
        return offer(self, batch)

    monkeypatch.setattr(SinkDelivery, "offer", timed)
    env = relayrl_gym.wrap(rps_v2.parallel_env(max_cycles=10**6), sink=tmp_path,
                           flush_interval=1.0)
    env.reset(seed=0)
    started = time.monotonic()
    while time.monotonic() - started < 4.5:
        env.step({agent: 0 for agent in env.agents})
        time.sleep(0.02)
    while_stepping = list(delays)
    env.close()
    assert len(while_stepping) >= 4 and max(while_stepping) < 1.0, while_stepping
