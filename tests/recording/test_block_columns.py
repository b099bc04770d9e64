"""A block's optional columns (action masks, policy outputs) come whole per batch or per row;
one block may hold both forms, and every row keeps its own values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from relayrl_gym.core.transitions import TransitionBatch
from relayrl_gym.recording.buffer import StepBlock
from relayrl_gym.schema.transitions import TransitionSchema

DATA = pa.struct([pa.field("logp", pa.float32())])


def _batch(rows: int, **optional) -> TransitionBatch:
    return TransitionBatch(np.zeros(rows, np.int32), np.zeros(rows, np.int64),
                           np.arange(rows), np.zeros((rows, 2), np.float32),
                           np.zeros(rows, np.int64), 0.0, np.zeros((rows, 2), np.float32),
                           (False,) * rows, (False,) * rows, **optional)


def test_whole_and_per_row_masks_and_outputs_in_one_block() -> None:
    schema = TransitionSchema.build(spaces.Box(0, 1, (2,), np.float32), spaces.Discrete(3),
                                    metadata={}, data_type=DATA)
    block = StepBlock()
    block.append(_batch(2, mask_batch=np.array([[1, 0, 1], [0, 1, 1]], np.bool_),
                        output_batch={"logp": np.array([-0.5, -1.5], np.float32)}), 10_000)
    block.append(_batch(3, masks={0: [True, True, False], 2: np.array([0, 0, 1], np.int8)},
                        outputs={1: {"logp": -2.5}}), np.array([20_000, 21_000, 22_000]))
    block.append(_batch(1), 30_000)
    out = block.to_record_batches(schema, "r", ["a"], [""])[0]
    assert out.column("mask").to_pylist() == [
        [True, False, True], [False, True, True], [True, True, False], None,
        [False, False, True], None]
    assert out.column("data").to_pylist() == [
        {"logp": -0.5}, {"logp": -1.5}, None, {"logp": -2.5}, None, None]
    stamps = out.column("timestamp").cast(pa.int64()).to_pylist()
    assert stamps == [10_000, 10_000, 20_000, 21_000, 22_000, 30_000]


def test_masks_of_several_widths_stay_per_row() -> None:
    schema = TransitionSchema.build(spaces.Box(0, 1, (2,), np.float32), spaces.Discrete(3),
                                    metadata={})
    block = StepBlock()
    block.append(_batch(2, masks={0: [True], 1: [False, True]}), 0)
    out = block.to_record_batches(schema, "r", ["a"], [""])[0]
    assert out.column("mask").to_pylist() == [[True], [False, True]]
