"""Leave-one-out splits. Per user with sequence ``s`` of length ``n``: ``s[n-1]`` is the test item,
``s[n-2]`` the validation item, ``s[n-3]`` the training target (the oracle for generation) and
``s[:n-3]`` its history. Everything a training artifact is built from comes from
``training_part(s) == s[:n-2]``.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import pyarrow as pa


class Split(StrEnum):
    TRAIN = "train"
    VALID = "valid"
    TEST = "test"

    @property
    def offset(self) -> int:
        """The target's position counted from the end of the sequence.

        >>> Split.VALID.offset
        2
        """
        return {"train": 3, "valid": 2, "test": 1}[self.value]


def training_part(sequence):
    """The items a training artifact may use: all but the validation and test items.

    >>> training_part(["a", "b", "c", "d", "e"])
    ['a', 'b', 'c']
    """
    return sequence[:-2]


def index_sequences(users: pa.Table, items: pa.Table) -> list[np.ndarray]:
    """Each user's full sequence as item indices (``items.item_index``), in users-table order."""
    lookup = dict(zip(items.column("item_id").to_pylist(), items.column("item_index").to_pylist()))
    return [np.array([lookup[i] for i in seq], dtype=np.int64) for seq in users.column("sequence").to_pylist()]


def split_inputs_targets(sequences: list[np.ndarray], split: Split) -> tuple[list[np.ndarray], np.ndarray]:
    """For a split, every item before the target (what history masking excludes) and the target.

    >>> inputs, targets = split_inputs_targets([np.array([4, 5, 6, 7])], Split.VALID)
    >>> inputs[0].tolist(), targets.tolist()
    ([4, 5], [6])
    """
    offset = Split(split).offset
    return [s[:-offset] for s in sequences], np.array([s[-offset] for s in sequences], dtype=np.int64)
