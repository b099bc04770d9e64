"""A collector's run reopened after a crash: cut back to its committed batches, compressed as
it was written, under a final name that only ever holds a whole file."""

from __future__ import annotations

import pyarrow as pa
import pytest
from zmq_helpers import record_batches

import relayrl_gym
from relayrl_gym.storage.run_dir import in_progress_name
from relayrl_gym.transport.collector.run_store import ArrowRunStore
from relayrl_gym.transport.payloads import check_record_batch_message
from relayrl_gym.transport.protocol import ProtocolViolation


def _messages(path):
    data = pa.memory_map(str(path)).read_buffer()
    reader = pa.ipc.MessageReader.open_stream(data.slice(8))  # after the file magic
    return [m for m in reader if m.type == "record batch"]


def test_a_reopened_run_keeps_its_committed_batches_compressed(tmp_path):
    schema, (recorded,) = record_batches(tmp_path, steps=60)
    batches = [recorded.slice(i, 20) for i in range(0, 100, 20)]
    store = ArrowRunStore(tmp_path / "collected", "r", schema, compression="lz4")
    for batch in batches[:3]:
        store.write(batch)
    store.commit({"s": 2})
    store.write(batches[3])  # written, never committed: the crash comes now
    store.abandon()
    run = tmp_path / "collected" / "r"
    assert (run / in_progress_name("part-00000.arrow")).exists()

    reopened = ArrowRunStore(tmp_path / "collected", "r", schema, compression="lz4")
    assert reopened.last_seq("s") == 2
    assert sorted(p.name for p in run.glob("part-*")) == ["part-00000.arrow"]
    messages = _messages(run / "part-00000.arrow")
    assert len(messages) == 3
    for message in messages:  # compressed as the collector writes (before: rewritten plain)
        with pytest.raises(ProtocolViolation, match="IPC-compressed"):
            check_record_batch_message(message.serialize(), "repaired batch")
    reopened.write(batches[3])
    reopened.commit({"s": 3})
    reopened.close()
    table = relayrl_gym.load(run).table
    assert table.num_rows == sum(b.num_rows for b in batches[:4])
