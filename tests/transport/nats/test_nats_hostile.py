"""Found in review, each reproduced here first: names that would leave the sink directory, a
sink that cannot open a run, poison headers, a consumer deleted by hand."""

from __future__ import annotations

import asyncio
import time

import nats
import pyarrow as pa
from nats_helpers import loaded_rows, record, wait_until
from transport.zmq_helpers import assert_same_rows, record_batches, rows

from relayrl_gym.transport import TrainingServer
from relayrl_gym.transport.nats.streams import data_subject, schema_subject


def _publish_all(url: str, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for subject, data, headers in messages:
                await js.publish(subject, data, headers=headers)
        finally:
            await nc.close()

    asyncio.run(go())


def test_run_names_that_would_leave_the_sink_directory_are_refused(nats_server, tmp_path):
    url = f"{nats_server.url}/runs"
    schema, batches = record_batches(tmp_path)
    with TrainingServer(source=url, sink=tmp_path / "a" / "collected") as server:
        wait_until(lambda: server.collector.link.connected.is_set(), what="connected")
        messages = []
        for run in ("../../escaped", str(tmp_path / "absolute")):
            headers = {"Relayrl-Run": run, "Relayrl-Sender": "s"}
            messages.append((schema_subject("runs", run), schema.serialize().to_pybytes(),
                             headers))
            messages.append((data_subject("runs", run), batches[0].serialize().to_pybytes(),
                             {**headers, "Relayrl-Seq": "0", "Nats-Msg-Id": f"{run}/0"}))
        _publish_all(nats_server.url, messages)
        wait_until(lambda: server.stats["rejected"] == 2, what="both refused")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "absolute").exists()
    assert server.stats["rows"] == 0


def test_a_sink_that_cannot_open_a_run_keeps_its_batches_in_the_stream(nats_server, tmp_path):
    url = f"{nats_server.url}/runs"
    run_id = record(url, tmp_path / "local", steps=100)
    with TrainingServer(source=url, sink="postgresql://127.0.0.1:1/nowhere",
                        state_dir=tmp_path / "state") as down:
        wait_until(lambda: down.stats["sink_errors"] > 0, what="the failing opens")
        time.sleep(0.5)
        assert down.stats["rows"] == 0 and down.stats["rejected"] == 0
    with TrainingServer(source=url, sink=tmp_path / "collected") as back:
        assert back.wait_for_rows(loaded_rows(tmp_path / "local" / run_id), timeout=60)
    assert_same_rows(rows(tmp_path / "collected" / run_id), rows(tmp_path / "local" / run_id))


def test_a_poison_sequence_header_is_refused_once_and_blocks_nothing(nats_server, tmp_path):
    url = f"{nats_server.url}/runs"
    schema, _ = record_batches(tmp_path)
    run = "poisoned"
    headers = {"Relayrl-Run": run, "Relayrl-Sender": "s"}
    record(url, tmp_path / "first", steps=10)  # the stream
    _publish_all(nats_server.url, [
        (schema_subject("runs", run), schema.serialize().to_pybytes(), headers),
        *((data_subject("runs", run), pa.py_buffer(b"x").to_pybytes(),
           {**headers, "Relayrl-Seq": "\u00b2", "Nats-Msg-Id": f"p{i}"}) for i in range(50))])
    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        wait_until(lambda: server.stats["rejected"] == 50, what="the poison refused")
        run_id = record(url, tmp_path / "local", steps=100)
        assert server.wait_for_rows(loaded_rows(tmp_path / "local" / run_id), timeout=30)
        assert server.stats["redelivered"] == 0  # refused at once, never handed back


def test_a_consumer_deleted_by_hand_is_made_again(nats_server, tmp_path):
    url = f"{nats_server.url}/runs"
    with TrainingServer(source=url, sink=tmp_path / "collected") as server:
        first = record(url, tmp_path / "local", steps=50)
        assert server.wait_for_rows(loaded_rows(tmp_path / "local" / first))

        async def delete() -> None:
            nc = await nats.connect(nats_server.url)
            await nc.jetstream().delete_consumer("runs", "relayrl")
            await nc.close()

        asyncio.run(delete())
        second = record(url, tmp_path / "local", steps=50, seed=1)
        total = loaded_rows(tmp_path / "local")
        wait_until(lambda: (tmp_path / "collected" / second).exists() and
                   loaded_rows(tmp_path / "collected" / second) ==
                   loaded_rows(tmp_path / "local" / second), timeout=60,
                   what="the second run after the consumer was made again")
    assert loaded_rows(tmp_path / "collected") == total
