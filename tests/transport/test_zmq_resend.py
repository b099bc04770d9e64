"""Resending a ZMQ sink's close-time spill: the batches go as their original sender with their
original sequence numbers, so the collector keeps each exactly once, however often a spill is
resent; a resend that cannot finish keeps the spill as it was.

The spills are made as users get them: an env recorded through `relayrl_gym.wrap` to a local
directory and to a collector, whose close cannot finish (acknowledgements lost on a relay, then
the link down; or no collector at all)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest
from test_zmq_close_spill import LossyRelay
from zmq_helpers import (
    assert_same_rows,
    committed_rows,
    free_port,
    record_batches,
    rows,
    start_serve,
    wait_until,
)

import relayrl_gym
from relayrl_gym.errors import ConfigError, DatasetError, SinkError, TransportError
from relayrl_gym.transport import TrainingServer
from relayrl_gym.transport.protocol import Kind
from relayrl_gym.transport.sender.outbox import Pending
from relayrl_gym.transport.sender.spill import SPILL_INDEX, read_spill, resend, write_spill

#: The token of the small spill's sender (the collector gives it; the spill keeps it).
SMALL_TOKEN = "0123456789abcdef0123456789abcdef"


def _record(tmp_path, address, steps, envs=None):
    """Steps a CartPole recorded to tmp_path/local and to the collector at ``address`` (close
    gives up after 1 s and spills to tmp_path/spill); returns the env, still open."""
    if envs is None:
        url = f"zmq+{address}?close_timeout=1&spill={tmp_path / 'spill'}"
        envs = relayrl_gym.wrap("CartPole-v1", actors=2, batch_rows=16,
                                sink=[tmp_path / "local", url])
        envs.reset(seed=0)
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    return envs


def _close_spilling(envs, tmp_path):
    """Closes ``envs``, whose ZMQ sink must spill; returns the spill directory."""
    with pytest.raises(SinkError, match=r"not acknowledged.*relayrl-gym resend .*"
                                        r"transport\.spill\.resend"):
        envs.close()
    spill = tmp_path / "spill" / envs.run_id
    assert read_spill(spill).run_id == envs.run_id
    return spill


def _spill_with_collector_down(tmp_path, steps=60):
    """A spill of a run whose collector (at a free port, returned) was never up."""
    port = free_port()
    envs = _record(tmp_path, f"tcp://127.0.0.1:{port}", steps)
    return envs, _close_spilling(envs, tmp_path), port


def _files(path):
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


def _cli(*args, cwd, timeout=60):
    return subprocess.run([sys.executable, "-m", "relayrl_gym.cli.main", "resend", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_a_spill_whose_acknowledgements_were_lost_is_resent_exactly_once(tmp_path):
    """The first batches are committed but their acknowledgements lost, then the link goes
    down while more are recorded: close spills them all. The resend (through the healed link,
    to the endpoint in the index) sends only what the collector lacks, and the collector's run
    then holds every recorded row once. Resending a removed spill says so."""
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        relay = LossyRelay(server.endpoint)
        try:
            relay.drop_down = {Kind.ACK}
            envs = _record(tmp_path, relay.endpoint, steps=40)
            run_dir = tmp_path / "collected" / envs.run_id
            wait_until(lambda: committed_rows(run_dir) >= 32, timeout=20,
                       what="the first batches to be committed")
            relay.drop_up = relay.drop_down = set(Kind)  # the link is down
            _record(tmp_path, relay.endpoint, steps=40, envs=envs)
            spill = _close_spilling(envs, tmp_path)
            assert relay.dropped[Kind.ACK] >= 1
            spilled = sum(read_spill(spill).rows)
            local = rows(tmp_path / "local" / envs.run_id)
            assert committed_rows(run_dir) < local.num_rows <= committed_rows(run_dir) + spilled
            duplicates, sender = server.stats["duplicates"], read_spill(spill).sender_id

            relay.drop_up = relay.drop_down = set()
            result = resend(spill, timeout=20)
        finally:
            relay.close()
        assert (result.run_id, result.sender_id) == (envs.run_id, sender)
        assert list(server.stats["per_sender"]) == [sender]  # the collector saw one sender
        assert result.had_batches >= 2 and result.sent_batches >= 1
        assert result.had_rows + result.sent_rows == spilled
        assert result.removed and not spill.exists()
        assert server.stats["duplicates"] == duplicates  # the resend sent nothing it had
        assert_same_rows(rows(run_dir), local)
        with pytest.raises(DatasetError, match=r"does not exist.*a resend removes it"):
            resend(spill, timeout=5)
    assert_same_rows(rows(run_dir), local)


def test_resending_again_changes_nothing(tmp_path):
    """A kept spill resent twice: the second resend finds every batch committed and sends
    none; the collector's run is the same."""
    envs, spill, port = _spill_with_collector_down(tmp_path)
    with TrainingServer(bind=f"tcp://127.0.0.1:{port}", sink=tmp_path / "collected") as server:
        first = resend(spill, timeout=20, remove=False)
        assert (first.sent_batches, first.had_batches) == (len(read_spill(spill).seqs), 0)
        assert not first.removed and spill.exists() and "spill kept in" in str(first)
        second = resend(spill, timeout=20, remove=False)
        assert (second.sent_batches, second.sent_rows) == (0, 0)
        assert (second.had_batches, second.had_rows) == (first.sent_batches, first.sent_rows)
        assert server.stats["duplicates"] == 0 and server.stats["rows"] == first.sent_rows
    assert_same_rows(rows(tmp_path / "collected" / envs.run_id),
                     rows(tmp_path / "local" / envs.run_id))


def test_an_unreachable_collector_keeps_the_spill_for_a_later_resend(tmp_path):
    """No collector: the resend gives up within its timeout, names what is left and keeps the
    spill byte for byte. Once ``relayrl-gym serve`` runs (another process), it goes through."""
    envs, spill, port = _spill_with_collector_down(tmp_path)
    before, index = _files(spill), read_spill(spill)
    started = time.monotonic()
    with pytest.raises(SinkError, match=r"did not answer within 1\.\d s; none of the spill's "
                                        r"\d+ batches \(\d+ rows\).*relayrl-gym serve.*is kept"):
        resend(spill, timeout=1.0)
    assert time.monotonic() - started < 4.0
    assert _files(spill) == before
    serve, endpoint = start_serve("--bind", f"tcp://127.0.0.1:{port}", "--sink", "collected",
                                  cwd=tmp_path)
    try:
        assert endpoint == index.endpoint
        result = resend(spill, timeout=30)
        assert (result.sent_batches, result.sent_rows) == (len(index.seqs), sum(index.rows))
        assert result.had_batches == 0
    finally:
        serve.send_signal(signal.SIGINT)  # completes the run's files
        out, err = serve.communicate(timeout=20)
    assert serve.returncode == 0 and "stopped" in out, err
    assert not spill.exists()
    assert_same_rows(rows(tmp_path / "collected" / envs.run_id),
                     rows(tmp_path / "local" / envs.run_id))


def test_the_command_line_resends_keeps_and_reports(tmp_path):
    """``relayrl-gym resend`` run as a user runs it: an unreachable collector, then
    ``--to`` the one that is up with ``--keep`` (twice), then without: the spill is removed."""
    envs, spill, _ = _spill_with_collector_down(tmp_path)
    out = _cli(str(spill), "--timeout", "1", cwd=tmp_path)
    assert out.returncode == 2 and "did not answer" in out.stderr and "is kept" in out.stderr
    assert spill.exists()
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        to = ("--to", server.endpoint, "--timeout", "20")
        out = _cli(str(spill), *to, "--keep", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        n = len(read_spill(spill).seqs)
        assert f"sender {read_spill(spill).sender_id}: {n} batches" in out.stdout
        assert "spill kept in" in out.stdout and spill.exists()
        out = _cli(str(spill), *to, "--keep", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert ": 0 batches (0 rows) sent" in out.stdout and f"{n} batches" in out.stdout
        out = _cli(str(spill), *to, cwd=tmp_path)
        assert out.returncode == 0 and "spill removed" in out.stdout, out.stderr
        assert not spill.exists() and server.stats["duplicates"] == 0
    assert_same_rows(rows(tmp_path / "collected" / envs.run_id),
                     rows(tmp_path / "local" / envs.run_id))
    out = _cli(str(spill), cwd=tmp_path)
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = _cli(str(tmp_path / "local" / envs.run_id), cwd=tmp_path)
    assert out.returncode == 2 and "is not a ZMQ sink's spill" in out.stderr


@pytest.fixture
def small_spill(tmp_path):
    """A spill written as a closing sink writes it, 4 batches with seqs 3..6: its directory,
    schema and batches."""
    schema, recorded = record_batches(tmp_path, steps=20)
    table = pa.Table.from_batches(recorded).combine_chunks()
    size = table.num_rows // 4
    batches = [table.slice(i * size, size).to_batches()[0] for i in range(4)]
    pending = [Pending(3 + i, b.serialize(), b.num_rows) for i, b in enumerate(batches)]
    path = write_spill(tmp_path / "spill", "small-run", "s1", "tcp://127.0.0.1:9", schema,
                       pending, token=SMALL_TOKEN)
    return path, schema, batches


def test_what_is_not_a_whole_spill_is_refused_and_left_alone(tmp_path, small_spill):
    spill = small_spill[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"'.*empty' is not a ZMQ sink's spill .*"
                                           r"SPILL_DIR/<run_id>$"):
        resend(tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"not a ZMQ sink's spill.*one of \['small-run'\]"):
        resend(tmp_path / "spill")  # the folder of spills, not one spill
    for bad_timeout in (0, -1.0, float("nan"), "5"):
        with pytest.raises(ConfigError, match="`timeout` must be a number of seconds > 0"):
            resend(spill, timeout=bad_timeout)
    with pytest.raises(TransportError, match="must be HOST:PORT"):
        resend(spill, "nowhere", timeout=1)
    index = (spill / SPILL_INDEX).read_text()
    (spill / SPILL_INDEX).write_text(index.replace('"seq": 5', '"seq": 9'))
    with pytest.raises(DatasetError, match=r"is damaged .*consecutive seqs"):
        resend(spill, timeout=1)
    (spill / SPILL_INDEX).write_text(index.replace('"sender_id": "s1"', '"sender_id": "../x"'))
    with pytest.raises(DatasetError, match=r"is damaged .*'sender' must be a name"):
        resend(spill, timeout=1)
    (spill / SPILL_INDEX).write_text(index)
    before = _files(spill)
    (spill / "part-00000.arrow").rename(tmp_path / "moved.arrow")
    with pytest.raises(DatasetError, match=r"holds 0 rows but its _zmq_spill\.json lists \d+"):
        resend(spill, timeout=1)
    (tmp_path / "moved.arrow").rename(spill / "part-00000.arrow")
    assert _files(spill) == before  # refused input is never removed


def test_each_batch_goes_whole_under_its_seq(tmp_path, small_spill):
    """The collector's state says sender s1's batches 0..3 are in; the spill holds 3..6: the
    resend skips 3 and the collector commits 4..6 exactly as they were spilled."""
    from relayrl_gym.transport.sender.sink import ZMQSink

    spill, schema, batches = small_spill
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected") as server:
        sink = ZMQSink(server.endpoint, models="off")
        sink.resume("s1", enumerate(batches[:1] * 4), token=SMALL_TOKEN)  # the same sender
        sink.start("small-run", schema)
        assert sink.wait_acknowledged(10)
        sink.close()
        result = resend(spill, server.endpoint, timeout=20)
        assert (result.had_batches, result.had_rows) == (1, batches[0].num_rows)
        assert (result.sent_batches, result.sent_rows) == (3, sum(b.num_rows for b in batches[1:]))
        assert server.stats["per_sender"]["s1"]["last_seq"] == 6
        assert server.stats["per_sender"]["s1"]["batches"] == 7
    with pa.ipc.open_file(str(tmp_path / "collected" / "small-run" / "part-00000.arrow")) as got:
        assert got.num_record_batches == 7
        for i, batch in enumerate(batches[:1] * 4 + batches[1:]):
            assert got.get_batch(i).equals(batch), i


def test_a_collector_that_requires_curve_keys_takes_the_resend_with_them(tmp_path, small_spill):
    from relayrl_gym.transport.keys import generate_keys

    spill, _, batches = small_spill
    keys = generate_keys(tmp_path / "keys", ["actor"])
    with TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected",
                        curve_keys=keys) as server:
        with pytest.raises(SinkError, match=r"did not answer.*--curve-keys"):
            resend(spill, server.endpoint, timeout=1)
        result = resend(spill, server.endpoint, timeout=20,
                        curve_keys=keys / "clients" / "actor")
        assert (result.sent_batches, result.had_batches) == (len(batches), 0)
        assert server.stats["rows"] == sum(b.num_rows for b in batches)


def test_a_second_resend_of_a_spill_being_resent_is_refused(tmp_path):
    """Two resends at once would take the sender's place from each other at the collector:
    the second is refused while the first runs, and the spill stays resendable."""
    import threading

    envs, spill, port = _spill_with_collector_down(tmp_path)
    before = _files(spill)
    failed = []

    def first():
        try:
            resend(spill, timeout=3)  # the collector is still down: this one waits 3 s
        except SinkError as err:
            failed.append(err)

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.5)
    with pytest.raises(SinkError, match=r"another resend of the spill .* is running"):
        resend(spill, timeout=3)
    thread.join(20)
    assert failed and "kept as it was" in str(failed[0])
    assert _files(spill) == before
    with TrainingServer(bind=f"tcp://127.0.0.1:{port}", sink=tmp_path / "collected"):
        done = resend(spill, timeout=20)
    assert done.removed and not spill.exists()
    with pytest.raises(DatasetError, match="does not exist"):
        resend(spill, timeout=3)
    assert_same_rows(rows(tmp_path / "collected" / envs.run_id),
                     rows(tmp_path / "local" / envs.run_id))
