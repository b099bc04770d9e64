"""Long-lived servers forget what is gone: the model publisher drops actors that stopped saying
hello, and the collector closes runs without traffic, their files complete, taking them up again
as the same run, exactly once, when their sender comes back."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
from zmq_helpers import (
    KEY_COLUMNS,
    RawClient,
    assert_same_rows,
    record_batches,
    rows,
    wait_until,
)

import relayrl_gym
from relayrl_gym.errors import ConfigError
from relayrl_gym.storage.run_dir import in_progress_name
from relayrl_gym.transport import TrainingServer
from relayrl_gym.transport.protocol import Kind, encode

HELLO = encode(Kind.HELLO, have=-1, seen=-1)


def test_silent_actors_are_forgotten_and_rejoin_as_late_joiners(tmp_path, cartpole_policy):
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "c",
                        models="tcp://127.0.0.1:*", peer_timeout=1.0) as server:
        silent, alive = RawClient(server.models_endpoint), RawClient(server.models_endpoint)
        try:
            silent.send(HELLO)
            alive.send(HELLO)
            wait_until(lambda: len(server.stats["actors"]) == 2, what="both hellos")
            deadline = time.monotonic() + 10
            while server.stats["actors_dropped"] == 0:
                assert time.monotonic() < deadline, "the silent actor was never dropped"
                alive.send(HELLO)  # one keeps saying hello, faster than actors do
                time.sleep(0.1)
            alive.send(HELLO)
            assert len(server.stats["actors"]) == 1 and server.stats["actors_dropped"] == 1
            assert len(server.publisher._peers) == 1  # the table itself is pruned
            version = server.publish_model(cartpole_policy(0))
            assert alive.reply().fields["version"] == version
            assert not silent.sock.poll(500), "a forgotten actor got a model"
            silent.send(HELLO)  # back: a late joiner gets the current model
            assert silent.reply().fields["version"] == version
        finally:
            silent.close()
            alive.close()


def _acked_through(client: RawClient, seq: int) -> None:
    while True:
        header = client.reply()
        assert header.kind is Kind.ACK, header
        if header.fields["seq"] >= seq:
            return


def test_an_idle_run_is_closed_then_taken_up_again_exactly_once(tmp_path):
    schema, recorded = record_batches(tmp_path, steps=30)
    table = pa.Table.from_batches(recorded)
    batches = [b.serialize().to_pybytes() for b in table.to_batches(table.num_rows // 3 + 1)]
    assert len(batches) == 3
    run_dir = tmp_path / "collected" / "idle-run"
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        run_idle_timeout=0.5) as server:
        client = RawClient(server.endpoint)
        try:
            token = {}

            def start(first):
                client.send(encode(Kind.START, run="idle-run", sender="s1", seq=-1, first=first,
                                   **token), schema.serialize().to_pybytes())
                reply = client.reply()
                assert reply.kind is Kind.STARTED
                token["token"] = reply.fields["token"]  # a restart presents it
                return reply.fields["next"]

            def batch(seq):
                client.send(encode(Kind.BATCH, run="idle-run", sender="s1", seq=seq),
                            batches[seq])

            assert start(0) == 0
            batch(0)
            batch(1)
            _acked_through(client, 1)
            wait_until(lambda: server.collector.open_runs == [], timeout=10,
                       what="the idle run to be closed")
            assert server.stats["runs_idle_closed"] == 1 and server.stats["open_runs"] == 0
            # Closed means complete: a finished data file, readable as it is.
            assert (run_dir / "part-00000.arrow").exists()
            assert not list(run_dir.glob(in_progress_name("part-*.arrow")))
            assert len(relayrl_gym.load(run_dir)) == sum(
                pa.ipc.read_record_batch(b, schema).num_rows for b in batches[:2])
            batch(1)  # the sender comes back, resending a batch whose ack it missed
            assert client.reply().kind is Kind.NEED_START
            assert start(1) == 2  # the same run, where it stopped
            batch(1)
            _acked_through(client, 1)  # a duplicate: acknowledged, not written
            batch(2)
            _acked_through(client, 2)
            stats = server.stats
        finally:
            client.close()
    assert stats["duplicates"] == 1 and stats["rows"] == table.num_rows
    assert [p.name for p in (tmp_path / "collected").iterdir()] == ["idle-run"]
    got = rows(run_dir)
    assert_same_rows(got, table.sort_by([(c, "ascending") for c in KEY_COLUMNS]))


def test_a_sink_that_pauses_past_the_idle_timeout_goes_on_in_the_same_run(tmp_path):
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        run_idle_timeout=0.5) as server:
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, flush_interval=0.05,
                                sink=[tmp_path / "local", server.sink_url + "?models=off"])
        try:
            envs.reset(seed=0)
            for _ in range(100):
                envs.step(envs.action_space.sample())
            envs.agent.flush()
            assert envs.agent.writer.sinks[1].wait_acknowledged(10)
            wait_until(lambda: server.collector.open_runs == [], timeout=10,
                       what="the idle run to be closed")
            for _ in range(100):
                envs.step(envs.action_space.sample())
        finally:
            envs.close()  # raises if anything was left unacknowledged
        stats = server.stats
    assert stats["runs_idle_closed"] >= 1 and stats["duplicates"] == 0
    assert_same_rows(rows(tmp_path / "collected" / envs.run_id),
                     rows(tmp_path / "local" / envs.run_id))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"run_idle_timeout": 0}, r"`run_idle_timeout` must be > 0 seconds or None"),
    ({"peer_timeout": -1.0, "models": "tcp://127.0.0.1:*"}, r"`peer_timeout` must be > 0"),
], ids=["run-idle", "peer"])
def test_timeouts_must_be_positive(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path, **kwargs)
