"""Users' histories: which earlier purchases a history keeps, the history text H_u written from them,
and ``Histories``, the batch every recommender reads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pyarrow as pa

from r2end_core import schemas
from r2end_core.config import HistoryRule
from r2end_core.data.splits import Split

SECONDS_PER_DAY = 86_400
NO_HISTORY_TEXT = "(no earlier purchases)"


def select_history(timestamps: list[int] | None, target_pos: int, rule: HistoryRule | None = None) -> list[int]:
    """Positions of the history shown before the item at ``target_pos`` (paper, Appendix E.1).

    Up to ``rule.max_items`` most recent items within ``rule.window_days`` before the target's time;
    if none falls in the window, the single most recent item; without timestamps, the
    ``rule.max_items`` most recent. Returns positions in chronological order.

    >>> day = 86_400
    >>> select_history([0, 10 * day, 100 * day, 101 * day], target_pos=3)
    [2]
    >>> select_history([0, 10 * day, 200 * day], target_pos=2)
    [1]
    >>> select_history(None, target_pos=3, rule=HistoryRule(max_items=2))
    [1, 2]
    """
    rule = rule or HistoryRule()
    prior = list(range(target_pos))
    if not prior or timestamps is None:
        return prior[-rule.max_items :]
    cutoff = timestamps[target_pos] - rule.window_days * SECONDS_PER_DAY
    in_window = [p for p in prior if timestamps[p] >= cutoff]
    return in_window[-rule.max_items :] if in_window else prior[-1:]


def history_text(item_ids: list[str], timestamps: list[int] | None, metadata_text: dict[str, str]) -> str:
    """The history text H_u: one numbered line per item, with its date when known.

    >>> history_text(["B1", "B2"], [1391040000, 1397779200], {"B1": "Lip Balm", "B2": "Soap"})
    '1. 2014-01-30: Lip Balm\\n2. 2014-04-18: Soap'
    """
    if not item_ids:
        return NO_HISTORY_TEXT
    lines = []
    for n, item_id in enumerate(item_ids, start=1):
        when = ""
        if timestamps is not None:
            when = dt.datetime.fromtimestamp(timestamps[n - 1], dt.UTC).strftime("%Y-%m-%d") + ": "
        lines.append(f"{n}. {when}{metadata_text[item_id]}")
    return "\n".join(lines)


def build_user_rows(sequences: pa.Table, metadata_text: dict[str, str], rule: HistoryRule) -> pa.Table:
    """Users table rows (``schemas.USERS``) for a batch of users' sequences.

    Each split's history ends just before that split's target: the training history never sees
    the validation or test item.
    """
    columns: dict[str, list] = {name: [] for name in schemas.USERS.names}
    for user_id, sequence, timestamps in zip(
        sequences.column("user_id").to_pylist(),
        sequences.column("sequence").to_pylist(),
        sequences.column("timestamps").to_pylist(),
    ):
        columns["user_id"].append(user_id)
        columns["sequence"].append(sequence)
        columns["timestamps"].append(timestamps)
        for split in Split:
            target_pos = len(sequence) - split.offset
            positions = select_history(timestamps, target_pos, rule)
            ids = [sequence[p] for p in positions]
            times = None if timestamps is None else [timestamps[p] for p in positions]
            columns[f"{split}_target"].append(sequence[target_pos])
            columns[f"{split}_history_ids"].append(ids)
            columns[f"{split}_history_text"].append(history_text(ids, times, metadata_text))
    return pa.Table.from_pydict(columns, schema=schemas.USERS)


@dataclass
class Histories:
    """A batch of users' histories, as every recommender reads them (``models.Recommender.user_vectors``).

    ``item_ids``: each user's earlier items, oldest first (every one: a sequence model reads as many as it
    can); ``timestamps`` and ``at`` (the prediction time) where known; ``texts``: the history text H_u each
    user's history is written as, for models that read text (built with the model's history rule).
    """

    item_ids: list[list[str]]
    timestamps: list[list[int] | None] | None = None
    at: list[int | None] | None = None
    texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def concat(cls, batches: list[Histories]) -> Histories:
        """One batch of several (e.g. requests batched by the server).

        >>> Histories.concat([Histories([["a"]], texts=["A"]), Histories([["b"]], texts=["B"])]).texts
        ['A', 'B']
        """

        def joined(field: str):
            parts = [getattr(b, field) for b in batches]
            if all(p is None for p in parts):
                return None
            return [v for b, p in zip(batches, parts) for v in (p if p is not None else [None] * len(b))]

        return cls(*(joined(field) for field in ("item_ids", "timestamps", "at", "texts")))

    def recent_positions(self, rule: HistoryRule) -> list[list[int]]:
        """Each user's history positions that the rule keeps (the items the history text is written from).

        >>> Histories([["a", "b", "c"]], [[0, 1, 200 * 86_400]], [200 * 86_400 + 5]).recent_positions(HistoryRule())
        [[2]]
        """
        out = []
        for n, ids in enumerate(self.item_ids):
            times = None if self.timestamps is None else self.timestamps[n]
            if times is not None:
                at = self.at[n] if self.at is not None and self.at[n] is not None else times[-1]
                times = [*times, at]
            out.append(select_history(times, len(ids), rule))
        return out

    def recent_ids(self, rule: HistoryRule) -> list[list[str]]:
        return [[ids[p] for p in kept] for ids, kept in zip(self.item_ids, self.recent_positions(rule))]

    @classmethod
    def of_split(cls, users: pa.Table, split: Split) -> Histories:
        """The histories prepared users had at one split's target (``users``: rows of ``schemas.USERS``)."""
        offset = Split(split).offset
        sequences, stamps = users.column("sequence").to_pylist(), users.column("timestamps").to_pylist()
        return cls(
            item_ids=[s[:-offset] for s in sequences],
            timestamps=None if all(t is None for t in stamps) else [t and t[:-offset] for t in stamps],
            at=None if all(t is None for t in stamps) else [t and t[-offset] for t in stamps],
            texts=users.column(f"{split}_history_text").to_pylist(),
        )
