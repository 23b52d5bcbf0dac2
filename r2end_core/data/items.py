"""The item catalogue: each item's metadata text M_i, buyer context and popularity, and ``Catalogue``, which
writes a history of item ids as the history text H_u at request time, exactly as the prepare stage did.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from r2end_core import schemas
from r2end_core.config import HistoryRule
from r2end_core.data.histories import Histories, history_text

METADATA_FIELDS = ("title", "brand", "categories", "price", "description")


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):
        return False
    if isinstance(value, (list, np.ndarray)):
        return len(value) > 0
    return value is not pd.NA and str(value).strip() != ""


def item_metadata_text(item: dict) -> str:
    """The metadata text M_i of one item, from whichever fields it has.

    >>> item_metadata_text({"item_id": "B1", "title": "Rose Lip Balm", "brand": "Burt's",
    ...                     "categories": ["Beauty", "Lips"], "price": 3.5})
    "Rose Lip Balm; brand: Burt's; category: Beauty > Lips; price: $3.50"
    >>> item_metadata_text({"item_id": "B2", "title": None})
    'item B2'
    """
    parts = []
    if _present(item.get("title")):
        parts.append(str(item["title"]))
    if _present(item.get("brand")):
        parts.append(f"brand: {item['brand']}")
    categories = item.get("categories")
    if _present(categories):
        path = categories if isinstance(categories, str) else " > ".join(str(c) for c in categories)
        parts.append(f"category: {path}")
    if _present(item.get("price")):
        parts.append(f"price: ${float(item['price']):.2f}")
    if _present(item.get("description")):
        parts.append(f"description: {item['description']}")
    return "; ".join(parts) if parts else f"item {item['item_id']}"


def metadata_texts(items: pd.DataFrame) -> dict[str, str]:
    """item_id -> M_i for a catalogue frame (the prepared catalogue)."""
    return {row["item_id"]: item_metadata_text(row) for row in items.to_dict("records")}


#: per item over some users' sequences: how often it occurs, and how often in a training part
ITEM_COUNTS = pa.schema([("item_id", pa.string()), ("interactions", pa.int64()), ("train_popularity", pa.int64())])
#: per item: the items its buyers had just before it in a training part, most often first, and how often
BUYER_CONTEXT = pa.schema(
    [("item_id", pa.string()), ("before", pa.list_(pa.string())), ("count", pa.list_(pa.int64()))]
)


def _flat_training(users: pa.Table) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Every item of ``users``' sequences, each one's position in its sequence, and whether it is in the
    training part (``splits.training_part``: all but the last two)."""
    sequences = users["sequence"].combine_chunks()
    flat, parents = pc.list_flatten(sequences), pc.list_parent_indices(sequences).to_numpy()
    offsets = sequences.offsets.to_numpy()[:-1] - sequences.offsets[0].as_py()
    position = np.arange(len(flat)) - offsets[parents]
    lengths = pc.list_value_length(sequences).to_numpy()
    return flat, position, position < lengths[parents] - 2


def item_counts(users: pa.Table) -> pa.Table:
    """ITEM_COUNTS of some users' sequences (parts' counts add up: ``sum_item_counts``).

    >>> item_counts(pa.table({"sequence": [["a", "b", "c", "a"]]})).sort_by("item_id").to_pydict()
    {'item_id': ['a', 'b', 'c'], 'interactions': [2, 1, 1], 'train_popularity': [1, 1, 0]}
    """
    flat, _, train = _flat_training(users)
    ones = pa.table(
        {"item_id": flat, "interactions": np.ones(len(flat), np.int64), "train_popularity": train.astype(np.int64)}
    )
    return sum_item_counts(ones)


def sum_item_counts(counts: pa.Table) -> pa.Table:
    """ITEM_COUNTS summed per item."""
    summed = counts.group_by("item_id").aggregate([("interactions", "sum"), ("train_popularity", "sum")])
    return (
        summed.rename_columns({"interactions_sum": "interactions", "train_popularity_sum": "train_popularity"})
        .select(ITEM_COUNTS.names)
        .cast(ITEM_COUNTS)
    )


def preceding_items(users: pa.Table) -> pa.Table:
    """(item_id, before, count): how often ``before`` came just before ``item_id`` in some users' training
    parts (counts of parts add up).

    >>> preceding_items(pa.table({"sequence": [["a", "b", "a", "b", "x", "y"]]})).sort_by("before").to_pydict()
    {'item_id': ['b', 'a'], 'before': ['a', 'b'], 'count': [2, 1]}
    """
    flat, position, train = _flat_training(users)
    pair = np.flatnonzero(train & (position >= 1))  # both items in the training part
    pairs = pa.table({"item_id": flat.take(pair), "before": flat.take(pair - 1), "count": np.ones(len(pair), np.int64)})
    return _sum_pairs(pairs)


def _sum_pairs(pairs: pa.Table) -> pa.Table:
    return (
        pairs.group_by(["item_id", "before"])
        .aggregate([("count", "sum")])
        .rename_columns({"count_sum": "count"})
        .select(["item_id", "before", "count"])
    )


def buyer_context(pairs: pa.Table, max_items: int) -> pa.Table:
    """BUYER_CONTEXT of the items in ``pairs`` (``preceding_items`` rows, every row of each item there): its
    ``max_items`` most frequent preceding items, ties by id.

    >>> pairs = pa.table({"item_id": ["b", "b", "b"], "before": ["z", "a", "z"], "count": [1, 1, 1]})
    >>> buyer_context(pairs, 5).to_pylist()
    [{'item_id': 'b', 'before': ['z', 'a'], 'count': [2, 1]}]
    """
    summed = _sum_pairs(pairs)
    ordered = summed.take(
        pc.sort_indices(summed, [("item_id", "ascending"), ("count", "descending"), ("before", "ascending")])
    )
    item = ordered["item_id"].to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]]) if len(item) else np.empty(0, np.int64)
    rank = np.arange(len(item)) - np.repeat(starts, np.diff(np.r_[starts, len(item)]))
    kept = ordered.filter(rank < max_items)
    groups = kept.group_by("item_id", use_threads=False).aggregate([("before", "list"), ("count", "list")])
    return (
        groups.rename_columns({"before_list": "before", "count_list": "count"})
        .select(BUYER_CONTEXT.names)
        .cast(BUYER_CONTEXT)
    )


def build_item_table(
    items: pd.DataFrame, metadata_text: dict[str, str], counts: pa.Table, context: pa.Table
) -> pa.Table:
    """Items table (``schemas.ITEMS``) of the catalogue ``items`` in their order: metadata text, buyer context
    (``BUYER_CONTEXT``) and training popularity (``ITEM_COUNTS``).

    Buyer context and popularity count only each user's training part, so no validation or
    test interaction reaches an item description.
    """
    popularity = dict(zip(counts["item_id"].to_pylist(), counts["train_popularity"].to_pylist()))
    preceding = {row["item_id"]: list(zip(row["before"], row["count"])) for row in context.to_pylist()}
    rows = []
    for index, item in enumerate(items.to_dict("records")):
        item_id = item["item_id"]
        ranked = preceding.get(item_id, [])
        context_ids = [other for other, _ in ranked]
        context_text = "\n".join(f"- {metadata_text[other]} (bought just before by {count})" for other, count in ranked)
        categories = item.get("categories")
        if isinstance(categories, str):
            categories = [categories]
        elif categories is not None and not isinstance(categories, float):
            categories = [str(c) for c in categories]
        else:
            categories = None
        price = item.get("price")
        rows.append(
            {
                "item_id": item_id,
                "item_index": index,
                "title": item.get("title") if _present(item.get("title")) else None,
                "brand": item.get("brand") if _present(item.get("brand")) else None,
                "categories": categories,
                "price": float(price) if _present(price) else None,
                "description": item.get("description") if _present(item.get("description")) else None,
                "metadata_text": metadata_text[item_id],
                "buyer_context_ids": context_ids,
                "buyer_context_text": context_text,
                "train_popularity": popularity.get(item_id, 0),
            }
        )
    return pa.Table.from_pylist(rows, schema=schemas.ITEMS)


class UnknownItemsError(KeyError):
    """Item ids the catalogue does not hold (``.ids``)."""

    def __init__(self, ids: list[str]):
        super().__init__(ids)
        self.ids = ids


class Catalogue:
    """Items by id: their rows, titles, and the metadata text histories are written from.

    >>> c = Catalogue(pa.table({"item_id": ["B1", "B2"], "title": ["Balm", "Soap"], "metadata_text": ["Balm", "Soap"]}))
    >>> c.history_text(["B2", "B1"])
    '1. Soap\\n2. Balm'
    >>> c.history_text(["B1", "B2"], timestamps=[0, 200 * 86_400])  # only B2 is within 60 days of the last
    '1. 1970-07-20: Soap'
    """

    def __init__(self, items: pa.Table):
        self.ids = items.column("item_id").to_pylist()
        self.titles = items.column("title").to_pylist()
        self.metadata_text = dict(zip(self.ids, items.column("metadata_text").to_pylist()))
        self.row = {item_id: r for r, item_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def unknown(self, item_ids: list[str]) -> list[str]:
        return [i for i in dict.fromkeys(item_ids) if i not in self.row]

    def rows(self, item_ids: list[str]) -> set[int]:
        if missing := self.unknown(item_ids):
            raise UnknownItemsError(missing)
        return {self.row[i] for i in item_ids}

    def history(
        self,
        item_ids: list[str],
        timestamps: list[int] | None = None,
        at: int | None = None,
        text_rule: HistoryRule | None = None,
    ) -> Histories:
        """One user's history as a batch of one, oldest first (items are ordered by their timestamps), with
        its history text H_u when ``text_rule`` is given: written the way the prepare stage writes training
        histories. With timestamps, the prediction time ``at`` (default: the last timestamp) sets the window:
        up to ``rule.max_items`` items in the ``rule.window_days`` before it, else the latest one; without,
        the last ``rule.max_items`` ids in the order given."""
        if missing := self.unknown(item_ids):
            raise UnknownItemsError(missing)
        if timestamps is None:
            histories = Histories([list(item_ids)])
        else:
            order = sorted(range(len(item_ids)), key=lambda p: timestamps[p])
            histories = Histories([[item_ids[p] for p in order]], [[timestamps[p] for p in order]], [at])
        if text_rule is not None:
            (kept,), ids = histories.recent_positions(text_rule), histories.item_ids[0]
            times = histories.timestamps and [histories.timestamps[0][p] for p in kept]
            histories.texts = [history_text([ids[p] for p in kept], times, self.metadata_text)]
        return histories

    def history_text(
        self,
        item_ids: list[str],
        timestamps: list[int] | None = None,
        at: int | None = None,
        rule: HistoryRule | None = None,
    ) -> str:
        """The history text H_u alone (``history`` with the rule, by default the paper's)."""
        return self.history(item_ids, timestamps, at, rule or HistoryRule()).texts[0]
