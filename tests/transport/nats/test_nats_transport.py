"""The NATS JetStream transport against real servers: every batch once in the consumer's dataset,
through consumer crashes, sender crashes, server restarts and a replicated stream's leader loss."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import threading
import time

import nats
import pyarrow as pa
import pytest
from nats_helpers import loaded_rows, record, start_actor, start_serve, wait_until
from transport.zmq_helpers import assert_no_duplicates, assert_same_rows, rows

import relayrl_gym
from relayrl_gym.errors import ConfigError, SinkError, TransportError
from relayrl_gym.transport import TrainingServer
from relayrl_gym.transport.nats.inspect import stream_report
from relayrl_gym.transport.nats.options import parse_nats_url
from relayrl_gym.transport.nats.sink import NatsSink
from relayrl_gym.transport.nats.streams import data_subject, partition_bits


def _publish(url: str, subject: str, data: bytes, headers: dict[str, str]) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().publish(subject, data, headers=headers)
        finally:
            await nc.close()

    asyncio.run(go())


def test_a_consumer_writes_every_batch_once_and_equal_to_the_local_copy(nats_server, tmp_path):
    url = f"{nats_server.url}/runs"
    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        run_id = record(url, tmp_path / "local", steps=400)
        expected = rows(tmp_path / "local" / run_id)
        assert server.wait_for_rows(expected.num_rows, timeout=30)
        stats = server.stats
    got = rows(tmp_path / "collected" / run_id)
    assert_same_rows(got, expected)
    assert stats["received"] > 20 and stats["duplicates"] == 0 and stats["rejected"] == 0
    # What a reader needs comes with the data: the spaces and env of the run.
    assert relayrl_gym.load(tmp_path / "collected").metadata["env_id"] == "CartPole-v1"


def test_each_durable_name_gets_every_batch_and_a_restarted_one_resumes(nats_server, tmp_path):
    url = f"{nats_server.url}/runs"
    run_id = record(url, tmp_path / "local", steps=200)  # before any consumer: kept
    expected = rows(tmp_path / "local" / run_id)
    with TrainingServer(source=url, sink=tmp_path / "a", durable="arrow") as a, \
            TrainingServer(source=f"{url}?durable=learner", sink=tmp_path / "b") as b:
        assert a.wait_for_rows(expected.num_rows) and b.wait_for_rows(expected.num_rows)
    assert_same_rows(rows(tmp_path / "a" / run_id), expected)
    assert_same_rows(rows(tmp_path / "b" / run_id), expected)
    second = record(url, tmp_path / "local", steps=100, seed=1)
    with TrainingServer(source=url, sink=tmp_path / "a", durable="arrow") as again:
        more = rows(tmp_path / "local" / second)
        assert again.wait_for_rows(more.num_rows)
        time.sleep(0.3)
        assert again.stats["rows"] == more.num_rows  # the first run was not delivered again
    assert_same_rows(rows(tmp_path / "a" / second), more)
    report = stream_report(url)
    assert set(report["consumers"]) == {"arrow", "learner"}
    assert report["runs"] == 2 and report["consumers"]["arrow"]["pending"] == 0
    assert report["consumers"]["learner"]["pending"] > 0  # it has not read the second run


def test_a_consumer_killed_mid_run_and_restarted_keeps_every_batch_once(nats_server, tmp_path):
    url = f"{nats_server.url}/runs"
    actor = start_actor(url, tmp_path / "local", "--steps", "3000", "--sleep", "0.0005",
                        cwd=tmp_path)
    serve = start_serve(url, tmp_path / "collected", cwd=tmp_path)
    run_id = json.loads(actor.stdout.readline())["run_id"]
    try:
        wait_until(lambda: loaded_rows(tmp_path / "collected") > 500, what="rows collected")
        serve.send_signal(signal.SIGKILL)  # mid-write, mid-commit or mid-acknowledgement
        serve.communicate(timeout=10)
        serve = start_serve(url, tmp_path / "collected", cwd=tmp_path)
        assert actor.wait(timeout=120) == 0, actor.stderr.read()
        expected = rows(tmp_path / "local" / run_id)
        # What the killed one had fetched comes back after the consumer's ack_wait (10 s).
        wait_until(lambda: loaded_rows(tmp_path / "collected") >= expected.num_rows,
                   timeout=60, what="every row collected")
    finally:
        for proc in (actor, serve):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=20)
    assert_same_rows(rows(tmp_path / "collected" / run_id), expected)


def test_a_killed_sender_loses_only_its_last_batches_and_a_new_one_goes_on(nats_server,
                                                                          tmp_path):
    url = f"{nats_server.url}/runs"
    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        first = start_actor(url, tmp_path / "local", "--forever", "--sleep", "0.0005",
                            cwd=tmp_path)
        first_run = json.loads(first.stdout.readline())["run_id"]
        wait_until(lambda: server.stats["rows"] > 300, what="the first sender's rows")
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        second = record(url, tmp_path / "local", steps=300, seed=3)
        expected = rows(tmp_path / "local" / second)
        wait_until(lambda: (tmp_path / "collected" / second).exists() and
                   server.stats["per_sender"] and loaded_rows(tmp_path / "collected" / second)
                   >= expected.num_rows, what="the second sender's rows")
    assert_same_rows(rows(tmp_path / "collected" / second), expected)
    dead = rows(tmp_path / "collected" / first_run)
    assert_no_duplicates(dead)
    local = rows(tmp_path / "local" / first_run)  # its own copy, also cut by the kill
    # What the consumer has of the dead run is what the run recorded, up to a point.
    keys = {(a, e, s) for a, e, s in zip(*(local[c].to_pylist()
                                              for c in ("actor_id", "episode_id", "step")))}
    shared = [k for k in zip(*(dead[c].to_pylist() for c in ("actor_id", "episode_id", "step")))
              if k in keys]
    assert dead.num_rows > 300 and len(shared) >= min(dead.num_rows, local.num_rows) - 64


def test_nats_restarted_mid_run_costs_no_row(nats_server, tmp_path, caplog):
    url = f"{nats_server.url}/runs"
    caplog.set_level(logging.WARNING)

    def outage() -> None:
        nats_server.kill()
        time.sleep(1.5)  # the sink refuses, the writer keeps the batches and spills
        nats_server.restart()

    run_id = record(url, tmp_path / "local", steps=400, pause_at=150, pause=outage)
    expected = rows(tmp_path / "local" / run_id)
    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        assert server.wait_for_rows(expected.num_rows, timeout=60)
    assert_same_rows(rows(tmp_path / "collected" / run_id), expected)
    assert any("NATS" in r.getMessage() or "nats" in r.getMessage() for r in caplog.records)


def test_a_replicated_stream_loses_no_row_when_its_leader_is_killed(nats_cluster, tmp_path):
    servers = ",".join(u[len("nats://"):] for u in nats_cluster.urls)
    url = f"nats://{servers}/runs?replicas=3&close_timeout=30"
    killed = []

    def kill_leader() -> None:
        leader = nats_cluster.stream_leader("runs")
        leader.kill()
        killed.append(leader.name)

    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        run_id = record(url, tmp_path / "local", steps=500, pause_at=200, pause=kill_leader)
        expected = rows(tmp_path / "local" / run_id)
        assert server.wait_for_rows(expected.num_rows, timeout=90)
    assert killed
    assert_same_rows(rows(tmp_path / "collected" / run_id), expected)
    assert stream_report(url)["stream"]["replicas"] == 3


def test_servers_sharing_a_durable_name_split_the_runs_and_keep_each_batch_once(nats_server,
                                                                                tmp_path):
    url = f"{nats_server.url}/runs"
    local = tmp_path / "local"
    run_ids = [f"share-{i}" for i in range(6)]
    halves = {int(partition_bits(r)[0]) for r in run_ids}
    assert halves == {0, 1}  # both servers have runs to write
    with TrainingServer(source=f"{url}?partition=0/2", sink=tmp_path / "a") as a, \
            TrainingServer(source=f"{url}?partition=1/2", sink=tmp_path / "b") as b:
        threads = [threading.Thread(target=record, args=(url, local),
                                    kwargs={"steps": 150, "seed": i, "run_id": r})
                   for i, r in enumerate(run_ids)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        total = loaded_rows(local)
        wait_until(lambda: a.stats["rows"] + b.stats["rows"] >= total, timeout=60,
                   what="every row collected")
        time.sleep(0.3)
        assert a.stats["rows"] + b.stats["rows"] == total
        assert a.collector.durable == "relayrl-0of2" and b.collector.durable == "relayrl-1of2"
    for run_id in run_ids:
        mine, other = ("a", "b") if partition_bits(run_id)[0] == "0" else ("b", "a")
        assert not (tmp_path / other / run_id).exists()
        assert_same_rows(rows(tmp_path / mine / run_id), rows(local / run_id))


def test_a_share_must_be_one_of_a_power_of_two(nats_server, tmp_path):
    for share, message in (("1/3", "power of two"), ("2/2", "must be 0 to 1"),
                           ("x", "must be I/N")):
        with pytest.raises(ConfigError, match=message):
            TrainingServer(source=f"{nats_server.url}/runs?partition={share}", sink=tmp_path)


def test_credentials_are_required_checked_and_never_shown(tmp_path, caplog):
    from nats_servers import NatsServer

    caplog.set_level(logging.DEBUG)
    with NatsServer(tmp_path, user="actor", password="s3cret-pw") as server:
        host = server.url[len("nats://"):]
        with pytest.raises(SinkError, match="refused the credentials"):
            NatsSink(f"nats://actor:wrong@{host}/runs").start("r", pa.schema([("x", pa.int8())]))
        with pytest.raises(TransportError, match="cannot connect"):
            stream_report(f"nats://{host}/runs")
        url = f"nats://actor:s3cret-pw@{host}/runs"
        run_id = record(url, tmp_path / "local", steps=50)
        with TrainingServer(source=url, sink=tmp_path / "collected") as served:
            assert served.wait_for_rows(loaded_rows(tmp_path / "local" / run_id))
            assert "s3cret" not in repr(served) and "s3cret" not in served.endpoint
        config = tmp_path / "nats.json"
        config.write_text(json.dumps({"user": "actor", "password": "s3cret-pw"}))
        assert stream_report(f"nats://{host}/runs?config={config}")["runs"] == 1
    assert not [r for r in caplog.records if "s3cret" in r.getMessage()]


def test_hostile_messages_are_refused_counted_and_cost_no_row(nats_server, tmp_path):
    url = f"{nats_server.url}/runs"
    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        run_id = record(url, tmp_path / "local", steps=100)
        expected = rows(tmp_path / "local" / run_id)
        assert server.wait_for_rows(expected.num_rows)
        subject = data_subject("runs", run_id)
        forged = {"Relayrl-Run": "someone-else", "Relayrl-Sender": "x", "Relayrl-Seq": "0"}
        _publish(nats_server.url, subject, b"junk", forged)  # another run's name
        _publish(nats_server.url, subject, b"junk",
                 {"Relayrl-Run": run_id, "Relayrl-Sender": "x", "Relayrl-Seq": "0"})
        _publish(nats_server.url, subject, b"junk",
                 {"Relayrl-Run": run_id, "Relayrl-Sender": "x", "Relayrl-Seq": "-1"})
        _publish(nats_server.url, subject, b"junk", {"Relayrl-Run": run_id})
        # A schema published after the sender's: never taken for the run's.
        _publish(nats_server.url, f"runs.schema.{run_id}", b"not a schema",
                 {"Relayrl-Run": run_id, "Relayrl-Sender": "y"})
        wait_until(lambda: server.stats["rejected"] == 4, what="four rejections")
        more = record(url, tmp_path / "local", steps=50, seed=2)  # still serving
        assert server.wait_for_rows(expected.num_rows + loaded_rows(tmp_path / "local" / more))
    assert_same_rows(rows(tmp_path / "collected" / run_id), expected)
    assert relayrl_gym.load(tmp_path / "collected").run_ids == sorted([run_id, more])
    with TrainingServer(source=url, sink=tmp_path / "late", durable="late") as late:
        assert late.wait_for_rows(expected.num_rows + loaded_rows(tmp_path / "local" / more))
    assert_same_rows(rows(tmp_path / "late" / run_id), expected)  # the sender's schema


def test_inspect_prints_the_stream_its_runs_and_consumers(nats_server, tmp_path):
    url = f"{nats_server.url}/runs"
    record(url, tmp_path / "local", steps=50)
    with TrainingServer(source=url, sink=tmp_path / "collected", durable="writer") as server:
        assert server.wait_for_rows(loaded_rows(tmp_path / "local"))
    out = subprocess.run([sys.executable, "-m", "relayrl_gym.cli.main", "inspect", url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "stream runs (runs.>; 1 replica(s))" in out.stdout
    assert "1 runs" in out.stdout and "writer: 0 pending, 0 unacknowledged" in out.stdout


@pytest.mark.parametrize(("url", "message"), [
    ("nats://127.0.0.1:4222", "names no stream"),
    ("nats://127.0.0.1:4222/a.b", "must be 1-64 letters"),
    ("nats://127.0.0.1:4222/runs?replicas=7", "must be 1 to 5"),
    ("nats://127.0.0.1:4222/runs?colour=red", "unknown option"),
    ("nats://127.0.0.1:4222/runs?max_age=soon", "`max_age`"),
], ids=["no-stream", "bad-stream", "replicas", "unknown", "max-age"])
def test_bad_urls_get_clear_errors(url, message):
    with pytest.raises(ConfigError, match=message):
        NatsSink.from_url(url)


def test_credentials_stay_out_of_the_target_repr():
    target = parse_nats_url("nats://tok3n@h1,h2:4223/runs")
    assert target.servers == ("nats://h1:4222", "nats://h2:4223")
    assert target.credentials == {"token": "tok3n"} and "tok3n" not in repr(target)


def test_rows_spilled_while_nats_is_down_are_resent_once(nats_server, tmp_path):
    url = f"{nats_server.url}/runs?close_timeout=1"
    with pytest.raises(SinkError, match="relayrl-gym resend") as caught:
        record(url, tmp_path / "local", steps=300, pause_at=100, pause=nats_server.kill)
    nats_server.restart()
    spills = sorted(p.parent for p in tmp_path.rglob("_run.json") if "_spill" in p.parts)
    assert spills, caught.value
    for spill in spills:
        out = subprocess.run([sys.executable, "-m", "relayrl_gym.cli.main", "resend",
                              str(spill), "--to", url], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert not spill.exists()
    (run_id,) = relayrl_gym.load(tmp_path / "local").run_ids
    expected = rows(tmp_path / "local" / run_id)
    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        assert server.wait_for_rows(expected.num_rows, timeout=60)
        time.sleep(0.3)
        assert server.stats["rows"] == expected.num_rows
    assert_same_rows(rows(tmp_path / "collected" / run_id), expected)


_PERMISSIONS = """accounts { APP { jetstream: enabled, users: [
  {user: actor, password: pw}
  {user: nobody, password: pw,
   permissions: {publish: {deny: [">"]}, subscribe: {allow: ["_INBOX.>"]}}}
] } }"""


def test_a_client_without_rights_can_neither_publish_nor_read_and_is_told(tmp_path, caplog):
    from nats_servers import NatsServer

    caplog.set_level(logging.WARNING)
    with NatsServer(tmp_path, auth=_PERMISSIONS) as server:
        host = server.url[len("nats://"):]
        allowed, denied = f"nats://actor:pw@{host}/runs", f"nats://nobody:pw@{host}/runs"
        run_id = record(allowed, tmp_path / "local", steps=50)
        with pytest.raises(SinkError, match="lacks a permission"):
            record(f"{denied}?close_timeout=1", tmp_path / "refused", steps=50)
        with TrainingServer(source=denied, sink=tmp_path / "stolen") as thief:
            time.sleep(2)
            assert thief.stats["rows"] == 0 and "lacks a permission" in \
                thief.collector.link.problem
        with TrainingServer(source=allowed, sink=tmp_path / "collected") as served:
            assert served.wait_for_rows(loaded_rows(tmp_path / "local" / run_id))
            assert served.stats["rows"] == loaded_rows(tmp_path / "local")  # nothing else
    assert not (tmp_path / "stolen").exists() or not any((tmp_path / "stolen").iterdir())
    assert any("lacks a permission" in r.getMessage() for r in caplog.records)


def test_tls_with_the_servers_certificate_authority(tmp_path):
    from nats_servers import NatsServer

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}'
    with NatsServer(tmp_path, auth=tls) as server:
        host = server.url[len("nats://"):]
        url = f"nats+tls://{host}/runs?tls_ca={cert}"
        run_id = record(url, tmp_path / "local", steps=50)
        with TrainingServer(source=url, sink=tmp_path / "collected") as served:
            assert served.wait_for_rows(loaded_rows(tmp_path / "local" / run_id))
        with pytest.raises(SinkError, match="certificate"):  # a client that cannot verify it
            record(f"nats+tls://{host}/runs?close_timeout=1", tmp_path / "unverified", steps=20)
    assert_same_rows(rows(tmp_path / "collected" / run_id), rows(tmp_path / "local" / run_id))
