"""The dataset contract: load, validate, split leave-one-out, select histories, verbalise.

A dataset is a folder with two Parquet files:

``interactions.parquet``
    ``user_id`` and ``item_id`` (string or integer), and for order ``timestamp`` (unix seconds)
    and/or ``seq_pos`` (0-based position in the user's sequence). Optional: ``rating``,
    ``review_text``.
``items.parquet``
    ``item_id`` plus any of ``title``, ``brand``, ``categories`` (list of strings or one string),
    ``price``, ``description``. Other columns are ignored.

Leave-one-out, per user with sequence ``s`` of length ``n``: ``s[n-1]`` is the test item,
``s[n-2]`` the validation item, ``s[n-3]`` the training target (the oracle for generation) and
``s[:n-3]`` its history. Everything a training artifact is built from comes from
``training_part(s) == s[:n-2]``.

The prepared artifacts (written by the prepare stage) have the schemas ``USERS_SCHEMA`` and
``ITEMS_SCHEMA`` below.
"""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from r2end_core import storage
from r2end_core.config import PrepareConfig

INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"
METADATA_FIELDS = ("title", "brand", "categories", "price", "description")
SECONDS_PER_DAY = 86_400
NO_HISTORY_TEXT = "(no earlier purchases)"

_HISTORY_COLUMNS = {
    f"{split}_history_{kind}": pa.list_(pa.string()) if kind == "ids" else pa.string()
    for split in ("train", "valid", "test")
    for kind in ("ids", "text")
}

#: One row per user. ``sequence`` holds every item in order, validation and test included
#: (evaluation needs them); training code must read it through ``training_part``.
USERS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("sequence", pa.list_(pa.string()), nullable=False),
        pa.field("timestamps", pa.list_(pa.int64())),  # null when the dataset has none
        pa.field("train_target", pa.string(), nullable=False),
        pa.field("valid_target", pa.string(), nullable=False),
        pa.field("test_target", pa.string(), nullable=False),
        *[pa.field(name, dtype) for name, dtype in _HISTORY_COLUMNS.items()],
    ]
)

#: One row per catalogue item, in ``item_index`` order (sorted by item_id).
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_index", pa.int32(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("price", pa.float64()),
        pa.field("description", pa.string()),
        pa.field("metadata_text", pa.string(), nullable=False),
        # Items that this item's buyers had just before it, most frequent first (training part only).
        pa.field("buyer_context_ids", pa.list_(pa.string()), nullable=False),
        pa.field("buyer_context_text", pa.string(), nullable=False),
        pa.field("train_popularity", pa.int64(), nullable=False),
    ]
)


class DataValidationError(ValueError):
    """Input data that breaks the contract; the message names file, column and example rows."""


@dataclass
class PreparedData:
    """A validated dataset: users' ordered sequences and the item catalogue."""

    sequences: pd.DataFrame  # user_id, sequence (list[str]), timestamps (list[int] or None)
    items: pd.DataFrame  # item_id + the metadata fields the dataset has, sorted by item_id
    has_timestamps: bool
    report: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- validation


def _examples(frame: pd.DataFrame, columns: list[str], limit: int = 3) -> str:
    rows = []
    for row_number, row in frame.head(limit).iterrows():
        values = ", ".join(f"{c}={row[c]!r}" for c in columns)
        rows.append(f"row {row_number} ({values})")
    more = f" and {len(frame) - limit} more" if len(frame) > limit else ""
    return "; ".join(rows) + more


def _fail(file: str, column: str, problem: str, rows: pd.DataFrame, show: list[str]) -> None:
    raise DataValidationError(
        f"{file}: column '{column}': {problem} ({len(rows)} rows), e.g. {_examples(rows, show)}"
    )


def _check_type(file: str, table: pa.Table, column: str, accepts, expected: str) -> None:
    dtype = table.schema.field(column).type
    if not accepts(dtype):
        raise DataValidationError(f"{file}: column '{column}' has type {dtype}; expected {expected}")


def _is_id_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)


def _is_text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _read(path: str, file: str) -> pa.Table:
    return _read_file(storage.join(path, file), f" (a dataset folder needs {INTERACTIONS_FILE} and {ITEMS_FILE})")


def _read_file(path: str, hint: str = "") -> pa.Table:
    if not storage.exists(path):
        raise DataValidationError(f"{path}: file not found{hint}")
    table = storage.read_table(path)
    if table.num_rows == 0:
        raise DataValidationError(f"{path}: the file is empty (0 rows)")
    return table


def _validate_interactions_columns(file: str, table: pa.Table) -> bool:
    names = set(table.column_names)
    missing = [c for c in ("user_id", "item_id") if c not in names]
    if missing:
        raise DataValidationError(f"{file}: missing required column(s) {missing}; found {sorted(names)}")
    if "timestamp" not in names and "seq_pos" not in names:
        raise DataValidationError(
            f"{file}: needs 'timestamp' and/or 'seq_pos' to order each user's items; found {sorted(names)}"
        )
    for column in ("user_id", "item_id"):
        _check_type(file, table, column, _is_id_type, "string or integer")
    if "timestamp" in names:
        _check_type(
            file, table, "timestamp",
            lambda t: pa.types.is_integer(t) or pa.types.is_timestamp(t),
            "integer unix seconds or a timestamp",
        )
    if "seq_pos" in names:
        _check_type(file, table, "seq_pos", pa.types.is_integer, "integer")
    if "rating" in names:
        _check_type(file, table, "rating", lambda t: pa.types.is_integer(t) or pa.types.is_floating(t), "a number")
    if "review_text" in names:
        _check_type(file, table, "review_text", _is_text_type, "string")
    return "timestamp" in names


def _validate_items_columns(file: str, table: pa.Table) -> None:
    names = set(table.column_names)
    if "item_id" not in names:
        raise DataValidationError(f"{file}: missing required column ['item_id']; found {sorted(names)}")
    _check_type(file, table, "item_id", _is_id_type, "string or integer")
    for column in ("title", "brand", "description"):
        if column in names:
            _check_type(file, table, column, _is_text_type, "string")
    if "price" in names:
        _check_type(file, table, "price", lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t), "a number")
    if "categories" in names:
        _check_type(
            file, table, "categories",
            lambda t: _is_text_type(t) or (pa.types.is_list(t) and _is_text_type(t.value_type)),
            "a list of strings or a string",
        )


def _to_frame(table: pa.Table) -> pd.DataFrame:
    if "timestamp" in table.column_names and pa.types.is_timestamp(table.schema.field("timestamp").type):
        seconds = table.column("timestamp").cast(pa.timestamp("s")).cast(pa.int64())
        table = table.set_column(table.column_names.index("timestamp"), "timestamp", seconds)
    frame = table.to_pandas()
    for column in ("user_id", "item_id"):
        if column in frame and pa.types.is_integer(table.schema.field(column).type):
            frame[column] = frame[column].astype("Int64").astype(str)
    return frame


def load_and_validate(dataset_path: str, cfg: PrepareConfig) -> PreparedData:
    """Load a dataset folder, check it against the contract, order and (optionally) sample it.

    Raises DataValidationError naming the file, column and example rows of the first problem.
    Users with fewer than ``cfg.min_interactions`` items are dropped and counted in
    ``report["dropped_short_users"]``, or raise, as ``cfg.short_users`` says.
    """
    inter_file = storage.join(dataset_path, INTERACTIONS_FILE)
    items_file = storage.join(dataset_path, ITEMS_FILE)
    inter_table = _read(dataset_path, INTERACTIONS_FILE)
    items_table = _read(dataset_path, ITEMS_FILE)
    has_timestamps = _validate_interactions_columns(inter_file, inter_table)
    _validate_items_columns(items_file, items_table)
    has_positions = "seq_pos" in inter_table.column_names

    inter = _to_frame(inter_table)
    items = _to_frame(items_table)
    order_columns = [c for c in ("timestamp", "seq_pos") if c in inter]
    show = ["user_id", "item_id", *order_columns]

    for column in ["user_id", "item_id", *order_columns]:
        nulls = inter[inter[column].isna()]
        if len(nulls):
            _fail(inter_file, column, "null values", nulls, show)
    nulls = items[items["item_id"].isna()]
    if len(nulls):
        _fail(items_file, "item_id", "null values", nulls, ["item_id"])
    dup_items = items[items["item_id"].duplicated(keep=False)]
    if len(dup_items):
        _fail(items_file, "item_id", "duplicate item ids", dup_items, ["item_id"])

    unknown = inter[~inter["item_id"].isin(set(items["item_id"]))]
    if len(unknown):
        _fail(inter_file, "item_id", f"items missing from {ITEMS_FILE}", unknown, show)

    position = "seq_pos" if has_positions else "timestamp"
    dup_key = ["user_id", "seq_pos"] if has_positions else ["user_id", "item_id", "timestamp"]
    dups = inter[inter.duplicated(dup_key, keep=False)]
    if len(dups):
        _fail(inter_file, position, f"duplicate ({', '.join(dup_key)}) rows", dups, show)

    # Stable sort keeps file order among equal timestamps (the only tie-break without seq_pos).
    inter = inter.sort_values(["user_id", position], kind="stable")
    if has_positions and has_timestamps:
        backwards = inter.groupby("user_id", sort=False)["timestamp"].diff() < 0
        if backwards.any():
            _fail(inter_file, "timestamp", "timestamps decrease along seq_pos", inter[backwards], show)

    counts = inter.groupby("user_id", sort=False)["item_id"].transform("size")
    short = inter[counts < cfg.min_interactions]
    dropped_users = short["user_id"].nunique()
    if dropped_users and cfg.short_users == "error":
        _fail(inter_file, "user_id", f"users with fewer than {cfg.min_interactions} interactions", short, show)
    inter = inter[counts >= cfg.min_interactions]
    if inter.empty:
        raise DataValidationError(f"{inter_file}: no user has at least {cfg.min_interactions} interactions")

    # Users in order of first appearance in the file (the dataset's own user order).
    first_row = inter.reset_index().groupby("user_id")["index"].min().sort_values()
    users = first_row.index.to_numpy()
    if cfg.sample_users is not None and cfg.sample_users < len(users):
        rng = np.random.default_rng(cfg.sample_seed)
        users = users[np.sort(rng.choice(len(users), size=cfg.sample_users, replace=False))]
        inter = inter[inter["user_id"].isin(set(users))]

    grouped = inter.groupby("user_id", sort=False)
    sequences = pd.DataFrame({"user_id": users})
    sequences["sequence"] = sequences["user_id"].map(grouped["item_id"].agg(list))
    sequences["timestamps"] = (
        sequences["user_id"].map(grouped["timestamp"].agg(lambda s: [int(v) for v in s]))
        if has_timestamps
        else None
    )

    used = set(inter["item_id"])
    keep = [c for c in ("item_id", *METADATA_FIELDS) if c in items]
    catalogue = items[items["item_id"].isin(used)][keep].sort_values("item_id").reset_index(drop=True)
    report = {
        "interactions": int(len(inter)),
        "users": int(len(sequences)),
        "items": int(len(catalogue)),
        "dropped_short_users": int(dropped_users),
        "items_without_interactions": int(len(items) - len(catalogue)) if cfg.sample_users is None else None,
        "has_timestamps": has_timestamps,
        "metadata_fields": [c for c in METADATA_FIELDS if c in items],
        "missing_metadata_fields": [c for c in METADATA_FIELDS if c not in items],
        "has_reviews": "review_text" in inter,
        "sampled": cfg.sample_users is not None,
    }
    return PreparedData(sequences=sequences, items=catalogue, has_timestamps=has_timestamps, report=report)


# --------------------------------------------------------------------------- splits and histories


def training_part(sequence):
    """The items a training artifact may use: all but the validation and test items.

    >>> training_part(["a", "b", "c", "d", "e"])
    ['a', 'b', 'c']
    """
    return sequence[:-2]


def select_history(
    timestamps: list[int] | None, target_pos: int, max_items: int = 8, window_days: float = 60
) -> list[int]:
    """Positions of the history shown before the item at ``target_pos`` (paper, Appendix E.1).

    Up to ``max_items`` most recent items within ``window_days`` before the target's time; if none
    falls in the window, the single most recent item; without timestamps, the ``max_items`` most
    recent. Returns positions in chronological order.

    >>> day = 86_400
    >>> select_history([0, 10 * day, 100 * day, 101 * day], target_pos=3)
    [2]
    >>> select_history([0, 10 * day, 200 * day], target_pos=2)
    [1]
    >>> select_history(None, target_pos=3, max_items=2)
    [1, 2]
    """
    prior = list(range(target_pos))
    if not prior or timestamps is None:
        return prior[-max_items:]
    cutoff = timestamps[target_pos] - window_days * SECONDS_PER_DAY
    in_window = [p for p in prior if timestamps[p] >= cutoff]
    return in_window[-max_items:] if in_window else prior[-1:]


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
            when = dt.datetime.fromtimestamp(timestamps[n - 1], dt.timezone.utc).strftime("%Y-%m-%d") + ": "
        lines.append(f"{n}. {when}{metadata_text[item_id]}")
    return "\n".join(lines)


def build_user_rows(
    sequences: pa.Table, metadata_text: dict[str, str], max_items: int, window_days: float
) -> pa.Table:
    """Users table rows (``USERS_SCHEMA``) for a batch of users' sequences.

    Each split's history ends just before that split's target: the training history never sees
    the validation or test item.
    """
    columns: dict[str, list] = {name: [] for name in USERS_SCHEMA.names}
    for user_id, sequence, timestamps in zip(
        sequences.column("user_id").to_pylist(),
        sequences.column("sequence").to_pylist(),
        sequences.column("timestamps").to_pylist(),
    ):
        n = len(sequence)
        columns["user_id"].append(user_id)
        columns["sequence"].append(sequence)
        columns["timestamps"].append(timestamps)
        for split, target_pos in (("train", n - 3), ("valid", n - 2), ("test", n - 1)):
            positions = select_history(timestamps, target_pos, max_items, window_days)
            ids = [sequence[p] for p in positions]
            times = None if timestamps is None else [timestamps[p] for p in positions]
            columns[f"{split}_target"].append(sequence[target_pos])
            columns[f"{split}_history_ids"].append(ids)
            columns[f"{split}_history_text"].append(history_text(ids, times, metadata_text))
    return pa.Table.from_pydict(columns, schema=USERS_SCHEMA)


def sequences_table(data: PreparedData) -> pa.Table:
    return pa.Table.from_pandas(data.sequences, preserve_index=False).cast(
        pa.schema([("user_id", pa.string()), ("sequence", pa.list_(pa.string())), ("timestamps", pa.list_(pa.int64()))])
    )


def metadata_texts(data: PreparedData) -> dict[str, str]:
    return {row["item_id"]: item_metadata_text(row) for row in data.items.to_dict("records")}


def read_new_items(path: str, known_ids: set[str]) -> pa.Table:
    """Items to add to a built index: ``item_id`` plus any of the catalogue's metadata columns.

    Returns ``item_id``, ``title`` and ``metadata_text`` (M_i, as the catalogue's are written).
    Fails, naming the file, column and rows, on a missing file or column, a null, duplicate or
    already-indexed id, or a file with no metadata column at all.
    """
    table = _read_file(path)
    _validate_items_columns(path, table)
    if not [c for c in METADATA_FIELDS if c in table.column_names]:
        raise DataValidationError(f"{path}: no metadata column; an item needs at least one of {list(METADATA_FIELDS)} "
                                  f"to be encoded; found {table.column_names}")
    frame = _to_frame(table)
    frame["item_id"] = frame["item_id"].astype("string")
    if (rows := frame[frame["item_id"].isna()]).size:
        _fail(path, "item_id", "null ids", rows, ["item_id"])
    if (rows := frame[frame["item_id"].duplicated(keep=False)]).size:
        _fail(path, "item_id", "duplicate ids", rows, ["item_id"])
    if (rows := frame[frame["item_id"].isin(known_ids)]).size:
        _fail(path, "item_id", "ids already in the index (new items need new ids)", rows, ["item_id"])
    records = frame.to_dict("records")
    titles = [str(r["title"]) if _present(r.get("title")) else None for r in records]
    return pa.table({"item_id": frame["item_id"].tolist(), "title": titles,
                     "metadata_text": [item_metadata_text(r) for r in records]})


def build_item_table(data: PreparedData, metadata_text: dict[str, str], buyer_context_max_items: int) -> pa.Table:
    """Items table (``ITEMS_SCHEMA``): metadata text, buyer context and popularity.

    Buyer context and popularity count only each user's training part, so no validation or
    test interaction reaches an item description.
    """
    popularity: collections.Counter[str] = collections.Counter()
    preceding: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for sequence in data.sequences["sequence"]:
        train = training_part(sequence)
        popularity.update(train)
        for before, item in zip(train, train[1:]):
            preceding[item][before] += 1

    rows = []
    for index, item in enumerate(data.items.to_dict("records")):
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
    return pa.Table.from_pylist(rows, schema=ITEMS_SCHEMA)


# --------------------------------------------------------------------------- index form for models

SPLIT_OFFSETS = {"train": 3, "valid": 2, "test": 1}


def index_sequences(users: pa.Table, items: pa.Table) -> list[np.ndarray]:
    """Each user's full sequence as item indices (``items.item_index``), in users-table order."""
    lookup = dict(zip(items.column("item_id").to_pylist(), items.column("item_index").to_pylist()))
    return [np.array([lookup[i] for i in seq], dtype=np.int64) for seq in users.column("sequence").to_pylist()]


def split_inputs_targets(sequences: list[np.ndarray], split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """For a split, every item before the target (the model's input, and what history masking
    excludes) and the target item index.

    >>> inputs, targets = split_inputs_targets([np.array([4, 5, 6, 7])], "valid")
    >>> inputs[0].tolist(), targets.tolist()
    ([4, 5], [6])
    """
    offset = SPLIT_OFFSETS[split]
    return [s[:-offset] for s in sequences], np.array([s[-offset] for s in sequences], dtype=np.int64)
