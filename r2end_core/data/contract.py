"""The dataset contract: load a dataset folder and check it, naming the file, column and rows of any problem.

A dataset is a folder with two Parquet files:

``interactions.parquet``
    ``user_id`` and ``item_id`` (string or integer), and for order ``timestamp`` (unix seconds)
    and/or ``seq_pos`` (0-based position in the user's sequence). Optional: ``rating``,
    ``review_text``.
``items.parquet``
    ``item_id`` plus any of ``title``, ``brand``, ``categories`` (list of strings or one string),
    ``price``, ``description``. Other columns are ignored.

New items added to a built index (``read_new_items``) follow the items file's contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from r2end_core import storage
from r2end_core.config import PrepareConfig
from r2end_core.data.items import METADATA_FIELDS, _present, item_metadata_text
from r2end_core.summaries import PrepareReport

INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"


class DataValidationError(ValueError):
    """Input data that breaks the contract; the message names file, column and example rows."""


@dataclass
class PreparedData:
    """A validated dataset: users' ordered sequences and the item catalogue."""

    sequences: pd.DataFrame  # user_id, sequence (list[str]), timestamps (list[int] or None)
    items: pd.DataFrame  # item_id + the metadata fields the dataset has, sorted by item_id
    has_timestamps: bool
    report: PrepareReport


# --------------------------------------------------------------------------- validation


def _examples(frame: pd.DataFrame, columns: list[str], limit: int = 3) -> str:
    rows = []
    for row_number, row in frame.head(limit).iterrows():
        values = ", ".join(f"{c}={row[c]!r}" for c in columns)
        rows.append(f"row {row_number} ({values})")
    more = f" and {len(frame) - limit} more" if len(frame) > limit else ""
    return "; ".join(rows) + more


def _fail(file: str, column: str, problem: str, rows: pd.DataFrame, show: list[str]) -> None:
    raise DataValidationError(f"{file}: column '{column}': {problem} ({len(rows)} rows), e.g. {_examples(rows, show)}")


def _is_id_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)


def _is_text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


ID, TEXT = (_is_id_type, "string or integer"), (_is_text_type, "string")
#: an item id: 1 to 128 characters, none of them whitespace or control characters (what the HTTP API accepts)
ITEM_ID_PATTERN = r"^[^\s\x00-\x1f\x7f]{1,128}$"


def _check_item_ids(file: str, frame: pd.DataFrame, show: list[str]) -> None:
    bad = frame[~frame["item_id"].astype(str).str.fullmatch(ITEM_ID_PATTERN[1:-1])]
    if len(bad):
        problem = "ids that are not 1 to 128 characters free of whitespace and control characters"
        _fail(file, "item_id", problem, bad, show)


#: column -> (what its Arrow type must pass, how to say so), for every column of the contract a file has
INTERACTION_TYPES = {
    "user_id": ID,
    "item_id": ID,
    "timestamp": (lambda t: pa.types.is_integer(t) or pa.types.is_timestamp(t), "integer unix seconds or a timestamp"),
    "seq_pos": (pa.types.is_integer, "integer"),
    "rating": (lambda t: pa.types.is_integer(t) or pa.types.is_floating(t), "a number"),
    "review_text": TEXT,
}
ITEM_TYPES = {
    "item_id": ID,
    "title": TEXT,
    "brand": TEXT,
    "description": TEXT,
    "price": (lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t), "a number"),
    "categories": (
        lambda t: _is_text_type(t) or (pa.types.is_list(t) and _is_text_type(t.value_type)),
        "a list of strings or a string",
    ),
}


def _check_types(file: str, table: pa.Table, types: dict) -> None:
    for column, (accepts, expected) in types.items():
        if column in table.column_names and not accepts(dtype := table.schema.field(column).type):
            raise DataValidationError(f"{file}: column '{column}' has type {dtype}; expected {expected}")


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
    _check_types(file, table, INTERACTION_TYPES)
    return "timestamp" in names


def _validate_items_columns(file: str, table: pa.Table) -> None:
    names = set(table.column_names)
    if "item_id" not in names:
        raise DataValidationError(f"{file}: missing required column ['item_id']; found {sorted(names)}")
    _check_types(file, table, ITEM_TYPES)


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
    ``report.dropped_short_users``, or raise, as ``cfg.short_users`` says.
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
    _check_item_ids(items_file, items, ["item_id"])

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
        sequences["user_id"].map(grouped["timestamp"].agg(lambda s: [int(v) for v in s])) if has_timestamps else None
    )

    used = set(inter["item_id"])
    keep = [c for c in ("item_id", *METADATA_FIELDS) if c in items]
    catalogue = items[items["item_id"].isin(used)][keep].sort_values("item_id").reset_index(drop=True)
    report = PrepareReport(
        interactions=len(inter),
        users=len(sequences),
        items=len(catalogue),
        dropped_short_users=int(dropped_users),
        items_without_interactions=len(items) - len(catalogue) if cfg.sample_users is None else None,
        has_timestamps=has_timestamps,
        metadata_fields=[c for c in METADATA_FIELDS if c in items],
        missing_metadata_fields=[c for c in METADATA_FIELDS if c not in items],
        has_reviews="review_text" in inter,
        sampled=cfg.sample_users is not None,
    )
    return PreparedData(sequences=sequences, items=catalogue, has_timestamps=has_timestamps, report=report)


def sequences_table(data: PreparedData) -> pa.Table:
    """Users' ordered sequences (and timestamps) as the prepare stage hands them to Ray Data."""
    return pa.Table.from_pandas(data.sequences, preserve_index=False).cast(
        pa.schema([("user_id", pa.string()), ("sequence", pa.list_(pa.string())), ("timestamps", pa.list_(pa.int64()))])
    )


def read_new_items(path: str, known_ids: set[str]) -> pa.Table:
    """Items to add to a built index: ``item_id`` plus any of the catalogue's metadata columns.

    Returns ``item_id``, ``title`` and ``metadata_text`` (M_i, as the catalogue's are written).
    Fails, naming the file, column and rows, on a missing file or column, a null, duplicate or
    already-indexed id, or a file with no metadata column at all.
    """
    table = _read_file(path)
    _validate_items_columns(path, table)
    if not [c for c in METADATA_FIELDS if c in table.column_names]:
        raise DataValidationError(
            f"{path}: no metadata column; an item needs at least one of {list(METADATA_FIELDS)} "
            f"to be encoded; found {table.column_names}"
        )
    frame = _to_frame(table)
    frame["item_id"] = frame["item_id"].astype("string")
    if (rows := frame[frame["item_id"].isna()]).size:
        _fail(path, "item_id", "null ids", rows, ["item_id"])
    if (rows := frame[frame["item_id"].duplicated(keep=False)]).size:
        _fail(path, "item_id", "duplicate ids", rows, ["item_id"])
    _check_item_ids(path, frame, ["item_id"])
    if (rows := frame[frame["item_id"].isin(known_ids)]).size:
        _fail(path, "item_id", "ids already in the index (new items need new ids)", rows, ["item_id"])
    records = frame.to_dict("records")
    titles = [str(r["title"]) if _present(r.get("title")) else None for r in records]
    return pa.table(
        {
            "item_id": frame["item_id"].tolist(),
            "title": titles,
            "metadata_text": [item_metadata_text(r) for r in records],
        }
    )
