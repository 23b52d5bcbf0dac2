"""Training instances of a sequential student: the prediction of the item at ``position`` of a user's
sequence from the items before it. Knowledge about instances (a teacher's ranking, a text model's user
vector) is computed once per instance and looked up for each predicted position of a training batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from r2end_core.config import HistoryRule
from r2end_core.data.histories import Histories
from r2end_core.data.items import Catalogue
from r2end_core.data.splits import training_part
from r2end_core.models.sasrec import Batch


def training_instances(users: pa.Table, positions: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(user rows, positions) of the instances: each user's training target (``"last"``) or every position
    of the training part that a SASRec of ``max_len`` predicts (``"all"``: each but the first, within the
    ``max_len + 1`` most recent).

    >>> users = pa.table({"sequence": [["a", "b", "c", "d", "e"], ["a", "b", "c", "d", "e", "f", "g"]]})
    >>> [r.tolist() for r in training_instances(users, "last", 50)]
    [[0, 1], [2, 4]]
    >>> [r.tolist() for r in training_instances(users, "all", 2)]
    [[0, 0, 1, 1], [1, 2, 3, 4]]
    """
    lengths = np.array([len(training_part(s)) for s in users.column("sequence").to_pylist()])
    if positions == "last":
        return np.arange(len(lengths)), lengths - 1
    rows, places = [], []
    for row, n in enumerate(lengths):
        first = max(1, n - max_len)
        rows += [row] * (n - first)
        places += range(first, n)
    return np.array(rows, dtype=np.int64), np.array(places, dtype=np.int64)


def instance_histories(
    users: pa.Table, catalogue: Catalogue, rows: np.ndarray, positions: np.ndarray, rule: HistoryRule | None
) -> Histories:
    """Each instance's history (the items before ``position``), with its text written by ``rule`` (None: no
    text, for a model that reads item ids)."""
    sequences, stamps = users.column("sequence").to_pylist(), users.column("timestamps").to_pylist()
    parts = [
        catalogue.history(
            sequences[r][:p],
            None if stamps[r] is None else stamps[r][:p],
            None if stamps[r] is None else stamps[r][p],
            rule,
        )
        for r, p in zip(rows.tolist(), positions.tolist())
    ]
    return Histories.concat(parts)


class InstanceIndex(nn.Module):
    """(user row, position) -> the instance's index in a table of per-instance knowledge, for the predicted
    positions of a batch. ``users``: the table the student trains on (its rows are ``Batch.rows``)."""

    def __init__(self, users: pa.Table, user_ids: list[str], positions: np.ndarray):
        super().__init__()
        row_of = {user_id: r for r, user_id in enumerate(users.column("user_id").to_pylist())}
        if missing := set(user_ids) - row_of.keys():
            raise ValueError(f"instances of {len(missing)} users that are not in the users table")
        # One slot per (user, position): slot = start[row] + position holds the instance's index, or -1.
        lengths = np.array([len(s) for s in users.column("sequence").to_pylist()])
        start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        slots = np.full(int(lengths.sum()), -1, dtype=np.int64)
        rows = np.array([row_of[u] for u in user_ids], dtype=np.int64)
        slots[start[rows] + np.asarray(positions)] = np.arange(len(user_ids))
        self.register_buffer("start", torch.from_numpy(start), persistent=False)
        self.register_buffer("slots", torch.from_numpy(slots), persistent=False)

    def of(self, batch: Batch, real: torch.Tensor) -> torch.Tensor:
        """The instance of each predicted position of the batch (-1: none), in the row order of
        ``hidden[real]`` (that is, of the batch's catalogue scores)."""
        positions = batch.positions.to(self.slots.device)
        rows = torch.as_tensor(batch.rows, device=self.slots.device)[:, None].expand_as(positions)
        slot = self.start[rows] + positions.clamp(min=0)
        return torch.where(positions >= 0, self.slots[slot], -1)[real.to(self.slots.device)]
