"""The run-directory writer on a real directory: in-progress names then final names, rotation
by size, files readable by pyarrow, and a resume that keeps exactly the committed batches."""

from __future__ import annotations

import errno
import json

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from relayrl_gym.schema.transitions import METADATA_KEY
from relayrl_gym.storage import run_dir
from relayrl_gym.storage.run_dir import (
    PART_GLOB,
    RUN_FILE,
    RunDirWriter,
    final_name,
    in_progress_name,
    part_name,
    read_in_progress,
    write_json_atomic,
)

SCHEMA = pa.schema([("x", pa.int64())], metadata={METADATA_KEY: json.dumps({"env": "t"})})
BUFFERS = pytest.mark.parametrize("buffer_size", [0, 4 * 1024 * 1024], ids=["direct", "buffered"])


def _batch(i, rows=4):
    return pa.record_batch([pa.array([i] * rows)], schema=SCHEMA)


def _names(path):
    return sorted(p.name for p in path.iterdir())


def _values(path):
    with pa.ipc.open_file(str(path)) as reader:
        return reader.read_all()["x"].to_pylist()


def test_names_of_a_run_directory():
    assert part_name(7) == "part-00007.arrow"
    assert in_progress_name("part-00007.arrow") == ".part-00007.arrow.inprogress"
    assert final_name(in_progress_name("part-00007.arrow")) == "part-00007.arrow"
    assert in_progress_name(PART_GLOB) == ".part-*.arrow.inprogress"


def test_create_writes_the_run_file_and_refuses_an_existing_directory(tmp_path):
    run = tmp_path / "runs" / "r"
    RunDirWriter.create(run, SCHEMA)
    assert _names(run) == [RUN_FILE]  # no part before the first batch
    assert json.loads((run / RUN_FILE).read_text()) == {"env": "t"}
    with pytest.raises(FileExistsError):
        RunDirWriter.create(run, SCHEMA)


def test_a_failed_create_leaves_no_half_made_directory(tmp_path, monkeypatch):
    def full_disk(run_path, schema):
        (run_path / RUN_FILE).write_text("{")  # what got out before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_dir, "write_run_file", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        RunDirWriter.create(tmp_path / "r", SCHEMA)
    assert not (tmp_path / "r").exists()


@BUFFERS
def test_a_part_is_in_progress_until_it_is_completed(tmp_path, buffer_size):
    parts = RunDirWriter.create(tmp_path / "r", SCHEMA, buffer_size=buffer_size)
    run = parts.run_path
    for i in range(3):
        parts.write(_batch(i))
    parts.flush()
    assert parts.batches == 3
    assert _names(run) == [".part-00000.arrow.inprogress", RUN_FILE]
    # Hidden from pyarrow.dataset until complete, yet readable up to its last whole batch.
    assert ds.dataset(run, format="arrow").to_table().num_rows == 0
    assert [b["x"][0].as_py() for b in read_in_progress(run / in_progress_name(part_name(0)))
            ] == [0, 1, 2]
    assert parts.complete() == run / "part-00000.arrow"
    assert parts.complete() is None  # nothing open: nothing to complete
    assert parts.batches == 0 and parts.part == 1
    assert _names(run) == [RUN_FILE, "part-00000.arrow"]
    assert _values(run / "part-00000.arrow") == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.dataset(run, format="arrow").to_table()["x"].to_pylist() == _values(
        run / "part-00000.arrow")


@BUFFERS
def test_parts_rotate_by_size_and_read_back_in_order(tmp_path, buffer_size):
    parts = RunDirWriter.create(tmp_path / "r", SCHEMA, max_file_bytes=1, compression="lz4",
                                buffer_size=buffer_size, fsync=True)
    done = []
    for i in range(3):
        assert not parts.full
        parts.write(_batch(i))
        parts.flush()
        assert parts.full  # past 1 byte at the first batch
        done.append(parts.complete())
    assert [p.name for p in done] == ["part-00000.arrow", "part-00001.arrow", "part-00002.arrow"]
    assert [_values(p) for p in done] == [[0] * 4, [1] * 4, [2] * 4]
    table = ds.dataset(parts.run_path, format="arrow").to_table()
    assert sorted(table["x"].to_pylist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_a_completed_part_holds_the_bytes_pyarrow_writes(tmp_path):
    parts = RunDirWriter.create(tmp_path / "r", SCHEMA, compression="zstd")
    for i in range(2):
        parts.write(_batch(i))
    path = parts.complete()
    expected = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_file(expected, SCHEMA, options=options) as writer:
        for i in range(2):
            writer.write_batch(_batch(i))
    assert path is not None and path.read_bytes() == expected.getvalue().to_pybytes()


def test_resume_cuts_the_part_back_to_its_committed_batches(tmp_path):
    parts = RunDirWriter.create(tmp_path / "r", SCHEMA, compression="lz4",
                                buffer_size=4 * 1024 * 1024)
    run = parts.run_path
    for i in range(5):
        parts.write(_batch(i))
    parts.flush()  # 5 batches in the file, of which the first 3 were committed
    parts.abandon()  # the writer dies
    assert _names(run) == [".part-00000.arrow.inprogress", RUN_FILE]

    again = RunDirWriter(run, SCHEMA, compression="lz4")
    again.resume(part=0, committed=3)
    assert again.part == 1 and again.batches == 0
    assert _names(run) == [RUN_FILE, "part-00000.arrow"]
    assert _values(run / "part-00000.arrow") == [0] * 4 + [1] * 4 + [2] * 4
    again.write(_batch(3))
    assert again.complete() == run / "part-00001.arrow"
    assert ds.dataset(run, format="arrow").to_table()["x"].to_pylist() == (
        [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4)


def test_resume_with_nothing_committed_drops_the_part(tmp_path):
    parts = RunDirWriter.create(tmp_path / "r", SCHEMA)
    parts.write(_batch(0))
    parts.abandon()
    again = RunDirWriter(parts.run_path, SCHEMA)
    again.resume(part=0, committed=0)
    assert again.part == 0 and _names(parts.run_path) == [RUN_FILE]


def test_resume_after_a_completed_part_moves_on(tmp_path):
    parts = RunDirWriter.create(tmp_path / "r", SCHEMA)
    parts.write(_batch(0))
    parts.complete()  # then the writer died before it recorded the completion
    again = RunDirWriter(parts.run_path, SCHEMA)
    again.resume(part=0, committed=1)
    assert again.part == 1 and _values(parts.run_path / "part-00000.arrow") == [0] * 4
    again.resume(part=1, committed=0)  # nothing of part 1 on disk: it is still to be written
    assert again.part == 1


def test_write_json_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": [2]})
    assert json.loads(path.read_text()) == {"b": [2]}
    assert _names(tmp_path) == ["state.json"]
