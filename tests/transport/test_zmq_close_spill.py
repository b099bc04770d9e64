"""What a ZMQ sink spills at close against what the collector committed: acknowledgements lost
on the way are made up for before anything is spilled, and what is spilled carries its sequence
numbers, so the batches the collector holds already can be told apart from the rest.

A real collector and a real sink talk through a small ZMQ relay that can drop messages in
either direction (a link that loses acknowledgements, then goes down)."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest
import zmq
from zmq_helpers import KEY_COLUMNS, assert_no_duplicates, assert_same_rows, record_batches, rows

import relayrl_gym
from relayrl_gym.errors import SinkError
from relayrl_gym.transport import TrainingServer, ZMQSink
from relayrl_gym.transport.protocol import Kind, decode_header
from relayrl_gym.transport.sender.spill import read_spill, uncollected


class LossyRelay:
    """Relays one sender's messages to a collector and back, dropping the kinds it is told to."""

    def __init__(self, collector: str) -> None:
        self.drop_up: set[Kind] = set()  # sender -> collector
        self.drop_down: set[Kind] = set()  # collector -> sender
        self.dropped: dict[Kind, int] = {}
        self._ctx = zmq.Context()
        self._front = self._ctx.socket(zmq.ROUTER)
        self._front.linger = 0
        self._front.bind("tcp://127.0.0.1:*")
        self.endpoint = self._front.getsockopt_string(zmq.LAST_ENDPOINT)
        self._back = self._ctx.socket(zmq.DEALER)
        self._back.linger = 0
        self._back.connect(collector)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relayrl-test-relay")
        self._thread.start()

    def _passes(self, header: bytes, drop: set[Kind]) -> bool:
        kind = decode_header(header).kind
        if kind in drop:
            self.dropped[kind] = self.dropped.get(kind, 0) + 1
            return False
        return True

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        poller.register(self._back, zmq.POLLIN)
        sender = b""
        while not self._stop.is_set():
            events = dict(poller.poll(20))
            if self._front in events:
                sender, *frames = self._front.recv_multipart()
                if self._passes(frames[0], self.drop_up):
                    self._back.send_multipart(frames)
            if self._back in events:
                frames = self._back.recv_multipart()
                if self._passes(frames[0], self.drop_down):
                    self._front.send_multipart([sender, *frames])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._front.close(0)
        self._back.close(0)
        self._ctx.term()


@pytest.fixture
def relayed(tmp_path):
    """A collector writing tmp_path/collected, a relay in front of it, and a recorded run cut
    into 8 batches (schema, batches, all rows sorted)."""
    schema, recorded = record_batches(tmp_path, steps=40)
    table = pa.Table.from_batches(recorded)
    batches = [pa.record_batch(b.columns, schema=schema)
               for b in table.to_batches(max_chunksize=table.num_rows // 8 + 1)]
    server = TrainingServer(bind="tcp://127.0.0.1:*", sink=tmp_path / "collected")
    relay = LossyRelay(server.endpoint)
    yield server, relay, schema, batches, table.sort_by([(c, "ascending") for c in KEY_COLUMNS])
    relay.close()
    server.close()


def _sink(relay, tmp_path, schema, close_timeout):
    # No resend within the test: only the close path can learn what the collector has.
    sink = ZMQSink(relay.endpoint, models="off", spill_dir=tmp_path / "spill",
                   close_timeout=close_timeout, resend_after=60.0)
    sink.start("lossy-run", schema)
    assert sink.started.wait(10), "the collector never answered start"
    return sink


def test_lost_acknowledgements_are_made_up_for_at_close(tmp_path, relayed):
    """Every batch is committed, every acknowledgement lost; when the link carries replies
    again, close learns what the collector committed: nothing is spilled, nothing raised."""
    server, relay, schema, batches, source = relayed
    relay.drop_down = {Kind.ACK}
    sink = _sink(relay, tmp_path, schema, close_timeout=8.0)
    for batch in batches:
        sink.write(batch)
    assert server.wait_for_rows(source.num_rows, timeout=10)
    assert not sink.wait_acknowledged(0.3) and len(sink.outbox) == len(batches)
    assert relay.dropped[Kind.ACK] >= 1
    relay.drop_down = set()
    started = time.monotonic()
    sink.close()  # raised SinkError and spilled every batch before the close-time probe
    assert time.monotonic() - started < 4.0
    assert len(sink.outbox) == 0 and not (tmp_path / "spill").exists()
    assert_same_rows(rows(tmp_path / "collected" / "lossy-run"), source)
    assert server.stats["duplicates"] == 0


def test_the_spill_tells_committed_batches_from_the_others(tmp_path, relayed):
    """The first 5 batches are committed but their acknowledgements lost, then the link goes
    down and the last 3 never arrive: all 8 are spilled (the sender cannot know), each with its
    sequence number, and the collector's state tells exactly which 3 it lacks."""
    server, relay, schema, batches, source = relayed
    relay.drop_down = {Kind.ACK}
    sink = _sink(relay, tmp_path, schema, close_timeout=1.0)
    for batch in batches[:5]:
        sink.write(batch)
    committed = sum(b.num_rows for b in batches[:5])
    assert server.wait_for_rows(committed, timeout=10)
    relay.drop_up = relay.drop_down = set(Kind)  # the link is down
    for batch in batches[5:]:
        sink.write(batch)
    with pytest.raises(SinkError, match=r"batches 0\.\.7 of sender .* _zmq_spill\.json.*"
                                        r"uncollected"):
        sink.close()
    spill = tmp_path / "spill" / "lossy-run"
    index = read_spill(spill)
    assert index.seqs == tuple(range(8)) and index.sender_id == sink.sender_id
    assert index.run_id == "lossy-run" and index.rows == tuple(b.num_rows for b in batches)
    assert len(relayrl_gym.load(spill)) == source.num_rows  # committed ones included
    collected = tmp_path / "collected" / "lossy-run"
    missing = uncollected(spill, collected)
    assert missing.num_rows == source.num_rows - committed
    assert uncollected(spill, 4).equals(missing)
    whole = pa.concat_tables([rows(collected), missing.select(source.column_names)])
    assert_no_duplicates(whole)
    assert_same_rows(whole.sort_by([(c, "ascending") for c in KEY_COLUMNS]), source)
