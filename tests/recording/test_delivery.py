"""A sink that fails or goes away loses nothing: backlog, spill to Arrow files, ordered retry."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import relayrl_gym
from relayrl_gym.errors import SinkError
from relayrl_gym.recording.delivery import SinkDelivery
from relayrl_gym.sinks.arrow import ArrowSink
from relayrl_gym.storage.run_dir import read_in_progress

SCHEMA = pa.schema([("seq", pa.int64()), ("payload", pa.binary())])


class Outage(ArrowSink):
    """A real Arrow sink behind a switch: while ``down`` every write raises, like a lost
    connection; the batches it does take are on disk for the test to read back."""

    def __init__(self, root):
        super().__init__(root)
        self.down = False
        self.refused = 0

    def write(self, batch):
        if self.down:
            self.refused += 1
            raise ConnectionError("sink is down")
        super().write(batch)


def _batch(start, rows=10, payload=1000):
    seq = pa.array(np.arange(start, start + rows))
    return pa.record_batch([seq, pa.array([b"x" * payload] * rows)], schema=SCHEMA)


def _table(run_path):
    files = sorted(run_path.glob("part-*.arrow"))
    return pa.concat_tables([pa.ipc.open_file(str(f)).read_all() for f in files])


@pytest.fixture
def outage(tmp_path):
    sink = Outage(tmp_path / "sink")
    sink.start("run", SCHEMA)
    return sink


def test_batches_wait_in_order_and_arrive_when_the_sink_is_back(outage, tmp_path):
    delivery = SinkDelivery(outage, "run", tmp_path / "spill", retry_initial=60)
    delivery.offer(_batch(0))
    outage.down = True
    for start in range(10, 60, 10):
        delivery.offer(_batch(start))
    assert delivery.rows_waiting == 50 and outage.refused == 1  # later batches queue, no retry
    assert not delivery.retry()  # backoff: not due yet
    outage.down = False
    delivery.offer(_batch(60))  # must not overtake the waiting ones
    assert delivery.rows_waiting == 60
    assert delivery.retry(force=True)
    delivery.close()
    outage.close()
    table = _table(outage.run_path)
    assert table.column("seq").to_pylist() == list(range(70))
    assert not (tmp_path / "spill").exists()


def test_backlog_past_its_memory_bound_spills_to_arrow_files(outage, tmp_path):
    delivery = SinkDelivery(outage, "run", tmp_path / "spill", max_backlog_bytes=30_000)
    outage.down = True
    for start in range(0, 200, 10):
        delivery.offer(_batch(start))  # ~10 kB each: 3 fit in memory, the rest spill
    assert delivery.rows_waiting == 200
    spilled = list(delivery.spill_path.glob("*.arrow*"))
    assert spilled, "the backlog past its bound must be on disk"
    outage.down = False
    assert delivery.retry(force=True)
    delivery.close()
    outage.close()
    assert _table(outage.run_path).column("seq").to_pylist() == list(range(200))
    assert not delivery.spill_path.exists()


def test_a_retry_that_fails_half_way_resumes_where_it_stopped(tmp_path):
    class FailsEvery(Outage):
        def write(self, batch):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls % 3 == 0:
                raise ConnectionError("flaky")
            super().write(batch)

    sink = FailsEvery(tmp_path / "sink")
    sink.start("run", SCHEMA)
    delivery = SinkDelivery(sink, "run", tmp_path / "spill", max_backlog_bytes=20_000)
    for start in range(0, 300, 10):
        delivery.offer(_batch(start))
    for _ in range(100):
        if delivery.retry(force=True):
            break
    delivery.close()
    sink.close()
    assert _table(sink.run_path).column("seq").to_pylist() == list(range(300))


def test_close_while_down_says_where_the_rows_are_and_they_load(outage, tmp_path):
    delivery = SinkDelivery(outage, "run", tmp_path / "spill", max_backlog_bytes=30_000)
    outage.down = True
    for start in range(0, 100, 10):
        delivery.offer(_batch(start))
    with pytest.raises(SinkError, match=r"100 recorded rows could not be written.*kept in"):
        delivery.close()
    assert _table(delivery.spill_path).column("seq").to_pylist() == list(range(100))


def test_wrapped_env_survives_a_sink_outage_with_every_row_in_order(tmp_path):
    outage = Outage(tmp_path / "flaky")
    envs = relayrl_gym.wrap("CartPole-v1", actors=4, sink=[tmp_path / "ok", outage],
                            batch_rows=16, flush_interval=0.01, router_scale=0)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(600):
        outage.down = 150 <= t < 400  # the sink goes away for a while; stepping goes on
        envs.step(rng.integers(0, 2, size=4))
        if t == 399:
            assert envs.agent.writer.rows_waiting > 0
    envs.close()
    ok = relayrl_gym.load(tmp_path / "ok" / envs.run_id).table
    flaky = relayrl_gym.load(tmp_path / "flaky" / envs.run_id).table
    assert flaky.num_rows == ok.num_rows >= 2000  # 2400 steps less the reset pseudo-steps
    assert flaky.drop_columns(["timestamp"]).equals(ok.drop_columns(["timestamp"]))
    # Rows of each env appear in the order they happened, across every flush.
    for i in range(4):
        rows = ok.filter(pa.compute.equal(ok["env_index"], i))
        keys = list(zip(rows["episode_id"].to_pylist(), rows["step"].to_pylist()))
        assert keys == sorted(keys)
    assert not (tmp_path / "ok" / "_spill").exists()


def test_env_close_with_a_dead_sink_raises_and_keeps_the_rows(tmp_path):
    outage = Outage(tmp_path / "dead")
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=[tmp_path / "ok", outage],
                            router_scale=0)
    envs.agent.writer.close_retry = 0.2
    envs.reset(seed=1)
    outage.down = True
    for _ in range(50):
        envs.step(envs.action_space.sample())
    with pytest.raises(SinkError, match="kept in") as raised:
        envs.close()
    spill = str(raised.value).split("kept in '")[1].split("'")[0]
    ok = relayrl_gym.load(tmp_path / "ok" / envs.run_id).table
    assert relayrl_gym.load(spill).table.drop_columns(["timestamp"]).equals(
        ok.drop_columns(["timestamp"]))


def test_close_after_a_retry_stopped_half_way_spills_only_the_undelivered_rows(outage, tmp_path):
    class StopsAfter(Outage):
        def write(self, batch):
            if self.budget == 0:
                raise ConnectionError("down again")
            self.budget -= 1
            super().write(batch)

    sink = StopsAfter(tmp_path / "half")
    sink.budget = 0
    sink.start("run", SCHEMA)
    delivery = SinkDelivery(sink, "run", tmp_path / "spill", max_backlog_bytes=0)
    for start in range(0, 40, 10):
        delivery.offer(_batch(start))  # every batch goes to the spill file
    sink.budget = 2
    assert not delivery.retry(force=True)  # two delivered, then the sink fails again
    with pytest.raises(SinkError, match="20 recorded rows"):
        delivery.close()
    sink.close()
    assert _table(sink.run_path).column("seq").to_pylist() == list(range(20))
    assert _table(delivery.spill_path).column("seq").to_pylist() == list(range(20, 40))


def test_a_spill_that_cannot_be_written_keeps_rows_in_memory_and_other_sinks_fed(tmp_path):
    (tmp_path / "not-a-dir").write_text("a file where the spill directory should go")
    down = Outage(tmp_path / "down")
    down.down = True
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=[tmp_path / "ok", down],
                            router_scale=0, batch_rows=16, spill_dir=tmp_path / "not-a-dir")
    envs.agent.writer.deliveries[1].max_backlog_bytes = 0
    envs.agent.writer.close_retry = 0.1
    envs.reset(seed=0)
    envs.action_space.seed(0)
    transitions = 0  # NEXT_STEP: the step after an episode's end is a reset, not recorded
    done = np.zeros(2, np.bool_)
    alarms = []
    for _ in range(100):
        try:
            _, _, terminated, truncated, _ = envs.step(envs.action_space.sample())
        except SinkError as err:  # said at the next step, before any env steps
            alarms.append(str(err))
            continue
        transitions += int((~done).sum())
        done = terminated | truncated
    assert len(alarms) == 1 and "its backlog cannot be spilled" in alarms[0]
    envs.flush()
    delivery = envs.agent.writer.deliveries[1]
    assert delivery.spill_error is not None and delivery.rows_waiting > 150
    with pytest.raises(SinkError, match=f"{transitions} recorded rows .*could not be spilled"):
        envs.close()
    assert len(relayrl_gym.load(tmp_path / "ok" / envs.run_id)) == transitions  # all of them


def test_a_refused_batch_is_on_disk_at_once_not_only_past_a_memory_bound(outage, tmp_path):
    # A crash during an outage must lose no more than at any other time: the backlog is in
    # the spill file from the first refused batch on, readable while the run goes on.
    delivery = SinkDelivery(outage, "run", tmp_path / "spill")
    outage.down = True
    delivery.offer(_batch(0))
    delivery.offer(_batch(10))
    assert delivery.rows_waiting == 20
    on_disk = [batch for path in sorted(delivery.spill_path.glob(".part-*.inprogress"))
               for batch in read_in_progress(path)]
    assert pa.Table.from_batches(on_disk).column("seq").to_pylist() == list(range(20))
    outage.down = False
    assert delivery.retry(force=True)
    delivery.close()
    outage.close()
    assert _table(outage.run_path).column("seq").to_pylist() == list(range(20))


def test_a_retry_with_a_budget_delivers_part_of_the_backlog_and_goes_on_without_backoff(
        outage, tmp_path):
    delivery = SinkDelivery(outage, "run", tmp_path / "spill")
    outage.down = True
    for start in range(0, 100, 10):
        delivery.offer(_batch(start))
    outage.down = False
    assert not delivery.retry(force=True, budget=0.0)  # one batch, then the budget is spent
    assert delivery.rows_waiting == 90 and delivery.due  # the rest may go on right away
    delivery.offer(_batch(100))  # joins the backlog's end and lets 2x its rows through
    assert delivery.rows_waiting == 90 - 20 + 10
    assert delivery.retry()
    delivery.close()
    outage.close()
    assert _table(outage.run_path).column("seq").to_pylist() == list(range(110))
