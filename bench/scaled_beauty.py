"""Datasets of Beauty's shape at any size, for measuring how each stage's cost grows with the data.

    python -m bench.scaled_beauty --users 4 --items 4 --out /tmp/beauty-4x   # 4x the users, 4x the items

Every user is a copy of a real Beauty user: the same sequence length, timestamps and order. With ``items``
> 1 every Beauty item has that many clones (its brand, price and categories, its title marked with the clone's
number), and each interaction goes to one of its item's clones at random, so the item popularity curve keeps
its power-law shape, stretched over the larger catalogue; the sequences keep their structure at the level of
the original items. ``users`` copies of each user (each with its own clones) make the user base grow;
fractional factors sample (``users=0.5`` keeps half the users). The prepare stage keeps the items someone
bought: with more clones than buyers, an item's spare clones leave the prepared catalogue.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from r2end_core.config import load_config

REPO = Path(__file__).resolve().parents[1]


def beauty() -> str:
    """The dataset the configs read (configs/beauty-sample.yaml's, made absolute)."""
    return load_config([REPO / "configs/beauty-sample.yaml"]).prepare.dataset_path


def clone_id(item_id: str, clone: int) -> str:
    """The id of an item's clone; clone 0 is the item itself.

    >>> clone_id("B000052WYN", 0), clone_id("B000052WYN", 3)
    ('B000052WYN', 'B000052WYN~3')
    """
    return item_id if clone == 0 else f"{item_id}~{clone}"


def scaled(
    interactions: pa.Table, items: pa.Table, users: float, item_clones: int, seed: int = 0
) -> tuple[pa.Table, pa.Table]:
    """(interactions, items) with ``users`` times the users and ``item_clones`` times the items.

    ``interactions``: user_id, item_id, timestamp (optional), and any other columns (carried as they are);
    ``items``: item_id and any metadata columns.
    """
    if users <= 0 or item_clones < 1:
        raise ValueError(f"users must be > 0 and item_clones >= 1 (got {users}, {item_clones})")
    rng = np.random.default_rng(seed)
    user_ids = np.asarray(pc.unique(interactions["user_id"]).to_pylist(), dtype=object)
    copies = math.ceil(users)
    wanted = round(users * len(user_ids))  # the last copy may be partial
    tables = []
    for copy in range(copies):
        chosen = user_ids if (copy + 1) * len(user_ids) <= wanted else rng.choice(
            user_ids, wanted - copy * len(user_ids), replace=False
        )  # fmt: skip
        part = interactions.filter(pc.is_in(interactions["user_id"], pa.array(chosen.tolist(), pa.large_string())))
        clones = rng.integers(0, item_clones, part.num_rows)
        part = part.set_column(
            part.schema.get_field_index("item_id"),
            "item_id",
            pa.array([clone_id(i, c) for i, c in zip(part["item_id"].to_pylist(), clones.tolist())], pa.large_string()),
        )
        if copy:
            renamed = [f"{u}~u{copy}" for u in part["user_id"].to_pylist()]
            part = part.set_column(
                part.schema.get_field_index("user_id"), "user_id", pa.array(renamed, pa.large_string())
            )
        tables.append(part)
    catalogue = [items]
    for clone in range(1, item_clones):
        part = items.set_column(
            items.schema.get_field_index("item_id"),
            "item_id",
            pa.array([clone_id(i, clone) for i in items["item_id"].to_pylist()], pa.large_string()),
        )
        if "title" in items.column_names:
            titles = [None if t is None else f"{t} (edition {clone + 1})" for t in items["title"].to_pylist()]
            part = part.set_column(part.schema.get_field_index("title"), "title", pa.array(titles, pa.large_string()))
        catalogue.append(part)
    return pa.concat_tables(tables), pa.concat_tables(catalogue)


def write(interactions: pa.Table, items: pa.Table, folder: str | Path) -> str:
    """A dataset folder the prepare stage reads (interactions.parquet, items.parquet)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(interactions, folder / "interactions.parquet")
    pq.write_table(items, folder / "items.parquet")
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="the dataset folder to scale (default: Beauty, as the configs read it)")
    parser.add_argument("--users", type=float, default=1.0, help="times the users (fractions sample)")
    parser.add_argument("--items", type=int, default=1, help="clones of every item")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dataset = Path(args.dataset or beauty())
    interactions, items = (pq.read_table(dataset / f"{n}.parquet") for n in ("interactions", "items"))
    big_interactions, big_items = scaled(interactions, items, args.users, args.items, args.seed)
    users = pc.count_distinct(big_interactions["user_id"]).as_py()
    folder = write(big_interactions, big_items, args.out)
    print(f"{folder}: {big_interactions.num_rows:,} interactions, {users:,} users, {big_items.num_rows:,} items")


if __name__ == "__main__":
    main()
