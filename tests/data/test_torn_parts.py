"""A run whose part files were cut short (a full disk, a copy interrupted) is read with a
warning: every whole batch, nothing invented."""

from __future__ import annotations

import pytest

import relayrl_gym


def _run(sink_dir, steps):
    envs = relayrl_gym.wrap("CartPole-v1", actors=2, sink=sink_dir, batch_rows=16)
    envs.reset(seed=0)
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    envs.close()
    return envs.run_path


def test_an_empty_part_is_skipped_with_a_warning(sink_dir):
    run = _run(sink_dir, 40)
    rows = len(relayrl_gym.load(run))
    (run / "part-00001.arrow").write_bytes(b"")  # what a full disk left (before: ArrowInvalid)
    with pytest.warns(RuntimeWarning, match=r"part-00001\.arrow.*not a complete Arrow file.*"
                                            r"read the 0 whole record batches"):
        assert len(relayrl_gym.load(run)) == rows


def test_a_torn_part_gives_its_whole_batches(sink_dir):
    run = _run(sink_dir, 40)
    (part,) = run.glob("part-*.arrow")
    whole = relayrl_gym.load(run).table
    size = part.stat().st_size
    with open(part, "r+b") as f:
        f.truncate(size * 2 // 3)  # the footer and the last batches are gone
    with pytest.warns(RuntimeWarning, match="not a complete Arrow file"):
        torn = relayrl_gym.load(run)
    assert 0 < len(torn) < whole.num_rows
    # Exactly the first rows, as written: whole batches, nothing half-read.
    assert torn.table.drop(["timestamp"]).equals(
        whole.slice(0, len(torn)).drop(["timestamp"]))


def test_a_torn_part_keeps_its_place_among_whole_ones(sink_dir):
    from relayrl_gym.sinks.arrow import ArrowSink

    envs = relayrl_gym.wrap("CartPole-v1", actors=2, batch_rows=16,
                            sink=ArrowSink(sink_dir, max_file_bytes=4_000))
    envs.reset(seed=0)
    for _ in range(200):
        envs.step(envs.action_space.sample())
    envs.close()
    run = envs.run_path
    parts = sorted(run.glob("part-*.arrow"))
    assert len(parts) >= 3
    whole = relayrl_gym.load(run).table
    first = parts[0]
    first.write_bytes(first.read_bytes()[:-8])  # its footer's end is gone: torn, batches whole
    with pytest.warns(RuntimeWarning, match="not a complete Arrow file"):
        torn = relayrl_gym.load(run)
    # The torn part's batches come first, where they were written, then the whole parts.
    assert torn.table.drop(["timestamp"]).equals(whole.drop(["timestamp"]))
