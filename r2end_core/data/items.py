"""The item catalogue: each item's metadata text M_i, buyer context and popularity, and ``Catalogue``, which
writes a history of item ids as the history text H_u at request time, exactly as the prepare stage did.
"""

from __future__ import annotations

import collections

import numpy as np
import pandas as pd
import pyarrow as pa

from r2end_core import schemas
from r2end_core.config import HistoryRule
from r2end_core.data.histories import Histories, history_text
from r2end_core.data.splits import training_part

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
    """item_id -> M_i for a catalogue frame (``contract.PreparedData.items``)."""
    return {row["item_id"]: item_metadata_text(row) for row in items.to_dict("records")}


def build_item_table(
    sequences: list[list[str]], items: pd.DataFrame, metadata_text: dict[str, str], buyer_context_max_items: int
) -> pa.Table:
    """Items table (``schemas.ITEMS``): metadata text, buyer context and popularity.

    Buyer context and popularity count only each user's training part, so no validation or
    test interaction reaches an item description.
    """
    popularity: collections.Counter[str] = collections.Counter()
    preceding: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for sequence in sequences:
        train = training_part(sequence)
        popularity.update(train)
        for before, item in zip(train, train[1:]):
            preceding[item][before] += 1

    rows = []
    for index, item in enumerate(items.to_dict("records")):
        item_id = item["item_id"]
        ranked = sorted(preceding[item_id].items(), key=lambda kv: (-kv[1], kv[0]))[:buyer_context_max_items]
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
                "train_popularity": popularity[item_id],
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
