"""The prepare stage's logic: a dataset folder -> the users and items tables (``schemas.USERS``, ``ITEMS``) and
the report, with no process holding all the interactions.

    prepared = prepare(cfg.prepare, Parts.of)               # in this process (small data, tests)
    prepared = prepare(cfg.prepare, ray_jobs.prepare.on_ray_data)   # the stage: the same steps on Ray Data
    prepared.items, collect(prepared.users, schemas.USERS)    # the tables (the stage writes the users from Ray)

The steps run on ``Frames``, a table in parts: the interactions are read and checked in slices of the file
(``contract``), grouped by user into ordered sequences, sorted by where each user first appears in the file (the
dataset's own user order), optionally sampled, and counted per item (``items``); what reaches the calling process
is per item (the catalogue, its counts and buyer context), per problem or per sampled user, never per
interaction. The first problem found stops it with an error naming the file, column, count and first rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from r2end_core.config import PrepareConfig
from r2end_core.data import contract, histories, items
from r2end_core.summaries import PrepareReport


class Frames(Protocol):
    """A table in parts, in an order; lazy or not."""

    def map(self, fn: Callable[..., pa.Table], **kwargs) -> Frames:
        """``fn(part, **kwargs)`` for each part, in order."""

    def group(self, key: str, fn: Callable[..., pa.Table], **kwargs) -> Frames:
        """``fn(rows, **kwargs)`` on parts that each hold every row of the ``key`` values they hold."""

    def sort(self, column: str) -> Frames:
        """The rows in ``column``'s order."""

    def materialize(self) -> Frames:
        """Computed once, for the several passes that read it."""

    def tables(self) -> Iterator[pa.Table]:
        """The parts in order, one at a time, in this process."""


#: (a small table, how many parts to group into) -> Frames whose parts are the table's rows (the slices to read)
Engine = Callable[[pa.Table, int], Frames]


@dataclass
class Parts:
    """Frames in this process: a list of tables."""

    parts: list[pa.Table]

    @classmethod
    def of(cls, table: pa.Table, groups: int = 1) -> Parts:
        """The engine in this process (``groups`` is moot: a grouping makes one part)."""
        return cls([table.slice(i, 1) for i in range(table.num_rows)])

    def map(self, fn, **kwargs) -> Parts:
        return Parts([fn(part, **kwargs) for part in self.parts])

    def group(self, key, fn, **kwargs) -> Parts:
        return Parts([fn(pa.concat_tables(self.parts), **kwargs)])

    def sort(self, column) -> Parts:
        return Parts([pa.concat_tables(self.parts).sort_by(column)])

    def materialize(self) -> Parts:
        return self

    def tables(self) -> Iterator[pa.Table]:
        yield from self.parts


def collect(frames: Frames, schema: pa.Schema) -> pa.Table:
    """The whole of small ``frames`` (per problem, per item) in this process (its parts' ``schema``: a lazy
    engine may drop empty parts)."""
    return pa.concat_tables([schema.empty_table(), *(part.cast(schema) for part in frames.tables())])


@dataclass
class Prepared:
    report: PrepareReport
    items: pa.Table  # schemas.ITEMS
    users: Frames  # schemas.USERS rows, in the dataset's user order


SHORT = pa.schema([("users", pa.int64()), ("short", pa.int64())])
SIZES = pa.schema([("users", pa.int64()), ("interactions", pa.int64())])


def _short(users: pa.Table) -> pa.Table:
    return pa.table({"users": [users.num_rows], "short": [pc.sum(users["short"]).as_py() or 0]}, schema=SHORT)


def _sizes(users: pa.Table) -> pa.Table:
    interactions = pc.sum(pc.list_value_length(users["sequence"])).as_py() or 0
    return pa.table({"users": [users.num_rows], "interactions": [interactions]}, schema=SIZES)


def _kept(users: pa.Table) -> pa.Table:
    return users.filter(pc.invert(users["short"])).select(["user_id", "sequence", "timestamps", "first_row"])


def _only(users: pa.Table, chosen: pa.Array) -> pa.Table:
    return users.filter(pc.is_in(users["user_id"], chosen))


def _sample(users: Frames, total: int, cfg: PrepareConfig) -> pa.Array:
    """The ids of ``cfg.sample_users`` of the ``total`` users, drawn by position in their order (seeded)."""
    positions = np.sort(np.random.default_rng(cfg.sample_seed).choice(total, size=cfg.sample_users, replace=False))
    chosen, seen = [], 0
    for part in users.tables():
        inside = positions[(positions >= seen) & (positions < seen + part.num_rows)] - seen
        chosen.append(part["user_id"].take(pa.array(inside)))
        seen += part.num_rows
    return pa.chunked_array(chosen, pa.string()).combine_chunks()


def prepare(cfg: PrepareConfig, engine: Engine) -> Prepared:
    """Check and order ``cfg.dataset_path``'s interactions on ``engine`` and build the users and items tables.

    Raises ``contract.DataValidationError`` naming the file, column and first rows of the first problem. Users
    with fewer than ``cfg.min_interactions`` items are dropped and counted in ``report.dropped_short_users``,
    or raise, as ``cfg.short_users`` says.
    """
    folder, dataset_items = contract.open_dataset(cfg.dataset_path)
    slices = contract.interaction_slices(folder, cfg.interactions_per_part)
    groups = max(slices.num_rows, math.ceil(folder.rows / cfg.interactions_per_part))  # a big row group is split
    rows = engine(slices, groups).map(contract.read_interactions, folder=folder).materialize()
    item_ids = pa.array(dataset_items["item_id"].to_numpy(), pa.string())
    problems = collect(rows.map(contract.interaction_problems, folder=folder, item_ids=item_ids), contract.PROBLEMS)
    contract.raise_first_problem(problems, folder, cfg)
    users = rows.group("user_id", contract.user_sequences, folder=folder, cfg=cfg).materialize()
    del rows  # the interactions, once grouped
    contract.raise_first_problem(collect(users.map(contract.user_problems), contract.PROBLEMS), folder, cfg)
    counted = collect(users.map(_short), SHORT)
    total, short = (pc.sum(counted[c]).as_py() for c in ("users", "short"))
    if total == short:
        raise contract.DataValidationError(
            f"{folder.interactions_file}: no user has at least {cfg.min_interactions} interactions"
        )
    kept = users.map(_kept).sort("first_row").materialize()
    del users
    if cfg.sample_users is not None and cfg.sample_users < total - short:
        kept = kept.map(_only, chosen=_sample(kept, total - short, cfg)).materialize()
    sizes = collect(kept.map(_sizes), SIZES)
    counts = collect(kept.map(items.item_counts).group("item_id", items.sum_item_counts), items.ITEM_COUNTS)
    context = collect(
        kept.map(items.preceding_items).group("item_id", items.buyer_context, max_items=cfg.buyer_context_max_items),
        items.BUYER_CONTEXT,
    )
    used = dataset_items["item_id"].isin(set(counts["item_id"].to_pylist()))
    catalogue = dataset_items[used].sort_values("item_id").reset_index(drop=True)
    texts = items.metadata_texts(catalogue)
    report = PrepareReport(
        interactions=pc.sum(sizes["interactions"]).as_py(),
        users=pc.sum(sizes["users"]).as_py(),
        items=len(catalogue),
        dropped_short_users=short,
        items_without_interactions=len(dataset_items) - len(catalogue) if cfg.sample_users is None else None,
        has_timestamps=folder.has_timestamps,
        metadata_fields=[c for c in items.METADATA_FIELDS if c in dataset_items],
        missing_metadata_fields=[c for c in items.METADATA_FIELDS if c not in dataset_items],
        has_reviews="review_text" in folder.columns,
        sampled=cfg.sample_users is not None,
    )
    return Prepared(
        report,
        items.build_item_table(catalogue, texts, counts, context),
        kept.map(histories.build_user_rows, metadata_text=texts, rule=cfg.history),
    )
