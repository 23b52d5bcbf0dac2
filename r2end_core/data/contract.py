"""The dataset contract: open a dataset folder and check it, naming the file, column and rows of any problem.

A dataset is a folder with two Parquet files:

``interactions.parquet`` (a file, or a folder of Parquet files with one schema, read in name order)
    ``user_id`` and ``item_id`` (string or integer), and for order ``timestamp`` (unix seconds)
    and/or ``seq_pos`` (0-based position in the user's sequence). Optional: ``rating``,
    ``review_text``.
``items.parquet``
    ``item_id`` plus any of ``title``, ``brand``, ``categories`` (list of strings or one string),
    ``price``, ``description``. Other columns are ignored.

The interactions are checked in parts, so no process holds them all (``data.prepare`` runs the parts in this
process or on Ray Data):

    folder, items = open_dataset(path)                      # schemas and the items, checked here
    rows = read_interactions(slices, folder)                # a part of the rows, ids as strings, numbered
    summaries = interaction_problems(rows, folder, ids)     # nulls, unknown items: counts and first rows
    users = user_sequences(rows_of_whole_users, folder, cfg)  # ordered sequences + duplicates, short users
    raise_first_problem(concatenated summaries, folder, cfg)  # names file, column, count and first rows

New items added to a built index (``read_new_items``) follow the items file's contract.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from r2end_core import schemas, storage
from r2end_core.config import PrepareConfig
from r2end_core.data.items import METADATA_FIELDS, _present, item_metadata_text

INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"
EXAMPLES = 3  # rows an error message shows


class DataValidationError(ValueError):
    """Input data that breaks the contract; the message names file, column and example rows."""


# --------------------------------------------------------------------------- columns and types


def _examples(frame: pd.DataFrame, columns: list[str], limit: int = EXAMPLES) -> str:
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


def _check_types(file: str, schema: pa.Schema, types: dict) -> None:
    for column, (accepts, expected) in types.items():
        if column in schema.names and not accepts(dtype := schema.field(column).type):
            raise DataValidationError(f"{file}: column '{column}' has type {dtype}; expected {expected}")


def _missing(path: str, hint: str = "") -> None:
    if not storage.exists(path):
        raise DataValidationError(f"{path}: file not found{hint}")


def _read_file(path: str, hint: str = "") -> pa.Table:
    _missing(path, hint)
    table = storage.read_table(path)
    if table.num_rows == 0:
        raise DataValidationError(f"{path}: the file is empty (0 rows)")
    return table


def _validate_interactions_columns(file: str, schema: pa.Schema) -> None:
    names = set(schema.names)
    missing = [c for c in ("user_id", "item_id") if c not in names]
    if missing:
        raise DataValidationError(f"{file}: missing required column(s) {missing}; found {sorted(names)}")
    if "timestamp" not in names and "seq_pos" not in names:
        raise DataValidationError(
            f"{file}: needs 'timestamp' and/or 'seq_pos' to order each user's items; found {sorted(names)}"
        )
    _check_types(file, schema, INTERACTION_TYPES)


def _validate_items_columns(file: str, schema: pa.Schema) -> None:
    names = set(schema.names)
    if "item_id" not in names:
        raise DataValidationError(f"{file}: missing required column ['item_id']; found {sorted(names)}")
    _check_types(file, schema, ITEM_TYPES)


def _to_frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    if "item_id" in frame and pa.types.is_integer(table.schema.field("item_id").type):
        frame["item_id"] = frame["item_id"].astype("Int64").astype(str)
    return frame


# --------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class DatasetFolder:
    """A dataset folder whose interactions' columns and whole items file passed the contract: what every part
    of the interactions is read and checked by."""

    interactions_file: str  # as errors name it: the file, or a folder of Parquet files
    files: tuple[str, ...]  # the interactions' Parquet files, in order (rows are numbered across them)
    row_groups: tuple[tuple[int, ...], ...]  # per file, the rows of each of its row groups
    columns: tuple[str, ...]  # the interactions' columns

    @property
    def rows(self) -> int:
        return sum(map(sum, self.row_groups))

    @property
    def has_timestamps(self) -> bool:
        return "timestamp" in self.columns

    @property
    def has_positions(self) -> bool:
        return "seq_pos" in self.columns

    @property
    def position(self) -> str:
        """What orders a user's items: ``seq_pos`` where the file has it (ties in time stay in file order)."""
        return "seq_pos" if self.has_positions else "timestamp"

    @property
    def shown(self) -> list[str]:
        """The columns an error shows of a row."""
        return ["user_id", "item_id", *(c for c in ("timestamp", "seq_pos") if c in self.columns)]


def _interactions_files(inter_file: str) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...], pa.Schema]:
    """The interactions' files, their row groups and their one schema (read from the files' footers)."""
    try:
        files = storage.parquet_files(inter_file)
    except ValueError as error:
        raise DataValidationError(str(error)) from None
    if not files:
        raise DataValidationError(f"{inter_file}: a folder with no Parquet file")
    footers = []
    for file in files:
        with storage.open_input(file) as source:
            footers.append(pq.ParquetFile(source).metadata)
    schema = footers[0].schema.to_arrow_schema()
    listed = lambda s: "[" + ", ".join(f"{f.name} {f.type}" for f in s) + "]"  # noqa: E731
    for file, footer in zip(files[1:], footers[1:]):
        if not (other := footer.schema.to_arrow_schema()).equals(schema):
            raise DataValidationError(
                f"{file}: columns {listed(other)} differ from those of {files[0]}: {listed(schema)}"
            )
    groups = tuple(tuple(f.row_group(g).num_rows for g in range(f.num_row_groups)) for f in footers)
    return tuple(files), groups, schema


def open_dataset(dataset_path: str) -> tuple[DatasetFolder, pd.DataFrame]:
    """Check a dataset folder's interactions schema (read from the files' footers, not their rows) and its whole
    items file: the folder, and the items (``item_id`` as strings and the metadata fields the file has, in file
    order). Raises DataValidationError naming the file, column and example rows of the first problem."""
    inter_file, items_file = (storage.join(dataset_path, name) for name in (INTERACTIONS_FILE, ITEMS_FILE))
    hint = f" (a dataset folder needs {INTERACTIONS_FILE} and {ITEMS_FILE})"
    _missing(inter_file, hint)
    files, row_groups, schema = _interactions_files(inter_file)
    if not sum(map(sum, row_groups)):
        raise DataValidationError(f"{inter_file}: the file is empty (0 rows)")
    items_table = _read_file(items_file, hint)
    _validate_interactions_columns(inter_file, schema)
    _validate_items_columns(items_file, items_table.schema)
    items = _to_frame(items_table)
    nulls = items[items["item_id"].isna()]
    if len(nulls):
        _fail(items_file, "item_id", "null values", nulls, ["item_id"])
    dup_items = items[items["item_id"].duplicated(keep=False)]
    if len(dup_items):
        _fail(items_file, "item_id", "duplicate item ids", dup_items, ["item_id"])
    _check_item_ids(items_file, items, ["item_id"])
    keep = [c for c in ("item_id", *METADATA_FIELDS) if c in items]
    return DatasetFolder(inter_file, files, row_groups, tuple(schema.names)), items[keep]


def interaction_slices(folder: DatasetFolder, rows_per_slice: int) -> pa.Table:
    """The interactions cut into slices of whole row groups of one file (``file``, its groups ``first_group``
    to ``end_group``, their rows numbered from ``first_row``), each of at least ``rows_per_slice`` rows but a
    file's last (or one row group, if larger): a slice is read without decoding any other.

    >>> folder = DatasetFolder("i", ("a", "b"), ((2, 2, 1), (4,)), ("user_id",))
    >>> interaction_slices(folder, 3).to_pydict()
    {'file': [0, 0, 1], 'first_group': [0, 2, 0], 'end_group': [2, 3, 1], 'first_row': [0, 4, 5]}
    """
    slices: dict[str, list[int]] = {"file": [], "first_group": [], "end_group": [], "first_row": []}
    seen = 0
    for file, groups in enumerate(folder.row_groups):
        first, rows = 0, 0
        for group, size in enumerate(groups):
            rows += size
            if rows >= rows_per_slice or group == len(groups) - 1:
                for key, value in zip(slices, (file, first, group + 1, seen)):
                    slices[key].append(value)
                first, seen, rows = group + 1, seen + rows, 0
    return pa.table(slices, schema=pa.schema([(key, pa.int64()) for key in slices]))


def read_interactions(slices: pa.Table, folder: DatasetFolder) -> pa.Table:
    """The interactions in ``slices`` (``interaction_slices``' rows), numbered by their ``row`` in the files,
    ids as strings, timestamps as integer seconds; the other columns (ratings, reviews) are not read."""
    columns = [c for c in ("user_id", "item_id", "timestamp", "seq_pos") if c in folder.columns]
    parts = []
    for file, first, end, start in zip(*(slices[c].to_pylist() for c in slices.column_names)):
        with storage.open_input(folder.files[file]) as source:
            table = pq.ParquetFile(source).read_row_groups(list(range(first, end)), columns=columns)
        rows = np.arange(start, start + table.num_rows, dtype=np.int64)
        parts.append(table.append_column("row", pa.array(rows)))
    rows = pa.concat_tables(parts, promote_options="permissive")  # files may differ in integer or string widths
    for column in ("user_id", "item_id"):
        rows = rows.set_column(rows.schema.get_field_index(column), column, rows[column].cast(pa.string()))
    if "seq_pos" in columns:
        rows = rows.set_column(rows.schema.get_field_index("seq_pos"), "seq_pos", rows["seq_pos"].cast(pa.int64()))
    if "timestamp" in columns:
        stamps = rows["timestamp"]
        if pa.types.is_timestamp(stamps.type):
            stamps = stamps.cast(pa.timestamp("s")).cast(pa.int64())
        rows = rows.set_column(rows.schema.get_field_index("timestamp"), "timestamp", stamps.cast(pa.int64()))
    return rows


# --------------------------------------------------------------------------- problems, found in parts

#: a part's problems: per check, how many rows break it and the first of them (``EXAMPLES`` at most)
PROBLEMS = pa.schema(
    [
        pa.field("check", pa.string(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("examples", pa.list_(pa.struct([("row", pa.int64()), ("text", pa.string())])), nullable=False),
    ]
)
#: the order checks are reported in (the first one found stops the stage)
CHECKS = ("null user_id", "null item_id", "null timestamp", "null seq_pos", "unknown item", "duplicate", "backwards",
          "short")  # fmt: skip


def _describe(check: str, folder: DatasetFolder, cfg: PrepareConfig) -> tuple[str, str]:
    """(column, problem) of a check, as an error names them."""
    if check.startswith("null "):
        return check.removeprefix("null "), "null values"
    key = ["user_id", "seq_pos"] if folder.has_positions else ["user_id", "item_id", "timestamp"]
    return {
        "unknown item": ("item_id", f"items missing from {ITEMS_FILE}"),
        "duplicate": (folder.position, f"duplicate ({', '.join(key)}) rows"),
        "backwards": ("timestamp", "timestamps decrease along seq_pos"),
        "short": ("user_id", f"users with fewer than {cfg.min_interactions} interactions"),
    }[check]


def _example_text(rows: pa.Table, shown: list[str]) -> list[str]:
    values = rows.select(["row", *shown]).to_pylist()
    return [f"row {v['row']} (" + ", ".join(f"{c}={v[c]!r}" for c in shown) + ")" for v in values]


def _summary(check: str, bad: pa.Table, text: Callable[[pa.Table], list[str]]) -> dict | None:
    """The PROBLEMS row of ``check`` whose broken rows are ``bad`` (None when there are none); ``text`` writes
    the first ones as an error shows them."""
    if bad.num_rows == 0:
        return None
    first = bad.take(pc.sort_indices(bad["row"])[:EXAMPLES])
    examples = [{"row": r, "text": t} for r, t in zip(first["row"].to_pylist(), text(first))]
    return {"check": check, "rows": bad.num_rows, "examples": examples}


def interaction_problems(rows: pa.Table, folder: DatasetFolder, item_ids: pa.Array) -> pa.Table:
    """PROBLEMS of a part of ``read_interactions``' rows: null ids, times or positions, items not among
    ``item_ids`` (the items file's). Parts' summaries concatenate; ``raise_first_problem`` reads them."""
    text = functools.partial(_example_text, shown=folder.shown)
    found = [_summary(f"null {c}", rows.filter(pc.is_null(rows[c])), text) for c in folder.shown]
    unknown = pc.and_(pc.invert(pc.is_in(rows["item_id"], item_ids)), pc.is_valid(rows["item_id"]))
    found.append(_summary("unknown item", rows.filter(unknown), text))
    return pa.Table.from_pylist([f for f in found if f], schema=PROBLEMS)


def raise_first_problem(summaries: pa.Table, folder: DatasetFolder, cfg: PrepareConfig) -> None:
    """Raise DataValidationError for the first check (in ``CHECKS`` order) any part found broken: the file, the
    column, how many rows in all, and the first rows in the file."""
    for check in CHECKS:
        mine = summaries.filter(pc.equal(summaries["check"], check))
        if mine.num_rows:
            examples = sorted((e for part in mine["examples"].to_pylist() for e in part), key=lambda e: e["row"])
            rows = sum(mine["rows"].to_pylist())
            more = f" and {rows - EXAMPLES} more" if rows > EXAMPLES else ""
            column, problem = _describe(check, folder, cfg)
            shown = "; ".join(e["text"] for e in examples[:EXAMPLES])
            raise DataValidationError(
                f"{folder.interactions_file}: column '{column}': {problem} ({rows} rows), e.g. {shown}{more}"
            )


# --------------------------------------------------------------------------- users' sequences

#: a problem a user's own rows show (``user_sequences``): which check, the row in the file, how an error shows it
PROBLEM_ROW = pa.struct([("check", pa.string()), ("row", pa.int64()), ("text", pa.string())])
#: one row per user of ``user_sequences``: the ordered items, where the user first appears in the file, and
#: the problems of its own rows (duplicates, time against order, too few items when they are an error)
USER_SEQUENCES = pa.schema(
    [
        *(schemas.USERS.field(name) for name in ("user_id", "sequence", "timestamps")),
        pa.field("first_row", pa.int64(), nullable=False),
        pa.field("short", pa.bool_(), nullable=False),
        pa.field("problems", pa.list_(PROBLEM_ROW), nullable=False),
    ]
)


def _lists(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def user_sequences(rows: pa.Table, folder: DatasetFolder, cfg: PrepareConfig) -> pa.Table:
    """USER_SEQUENCES of the users in ``rows`` (``read_interactions``' rows without nulls or unknown items,
    holding every row of each of its users), sorted by user id. A user's items are ordered by ``seq_pos``, else
    by time with ties in file order; its problems: rows of a duplicate (user, position) (or (user, item, time)
    without positions), rows whose time goes back along ``seq_pos``, and with ``cfg.short_users == "error"``
    every row of a user with fewer than ``cfg.min_interactions`` items."""
    if rows.num_rows == 0:
        return USER_SEQUENCES.empty_table()
    frame = rows.to_pandas().sort_values(["user_id", folder.position, "row"], kind="stable", ignore_index=True)
    users = frame["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    offsets = np.r_[starts, len(frame)]
    short = np.diff(offsets) < cfg.min_interactions
    key = ["user_id", "seq_pos"] if folder.has_positions else ["user_id", "item_id", "timestamp"]
    broken = {"duplicate": frame.duplicated(key, keep=False).to_numpy()}
    if folder.has_positions and folder.has_timestamps:
        broken["backwards"] = (frame.groupby("user_id", sort=False)["timestamp"].diff() < 0).to_numpy()
    if cfg.short_users == "error":
        broken["short"] = np.repeat(short, np.diff(offsets))
    user_of_row = np.repeat(np.arange(len(starts)), np.diff(offsets))
    found = [(check, np.flatnonzero(mask)) for check, mask in broken.items() if mask.any()]
    at = np.concatenate([positions for _, positions in found]) if found else np.empty(0, np.int64)
    order = np.argsort(user_of_row[at], kind="stable")
    at = at[order]
    checks = np.concatenate([[check] * len(positions) for check, positions in found])[order] if found else []
    shown = pa.Table.from_pandas(frame.iloc[at], preserve_index=False)
    problems = pa.StructArray.from_arrays(
        [
            pa.array(checks, pa.string()),
            shown["row"].combine_chunks(),
            pa.array(_example_text(shown, folder.shown), pa.string()),
        ],
        fields=list(PROBLEM_ROW),
    )
    times = (
        _lists(offsets, pa.array(frame["timestamp"].to_numpy(), pa.int64()))
        if folder.has_timestamps
        else pa.nulls(len(starts), pa.list_(pa.int64()))
    )
    return pa.table(
        {
            "user_id": pa.array(users[starts], pa.string()),
            "sequence": _lists(offsets, pa.array(frame["item_id"].to_numpy(), pa.string())),
            "timestamps": times,
            "first_row": np.minimum.reduceat(frame["row"].to_numpy(), starts),
            "short": short,
            "problems": _lists(np.searchsorted(user_of_row[at], np.arange(len(starts) + 1)), problems),
        },
        schema=USER_SEQUENCES,
    )


def user_problems(users: pa.Table) -> pa.Table:
    """PROBLEMS of some ``user_sequences`` rows (for ``raise_first_problem``)."""
    flat = pa.Table.from_struct_array(pc.list_flatten(users["problems"]))
    text = lambda first: first["text"].to_pylist()  # noqa: E731
    found = [
        _summary(check, flat.filter(pc.equal(flat["check"], check)), text)
        for check in pc.unique(flat["check"]).to_pylist()
    ]
    return pa.Table.from_pylist(found, schema=PROBLEMS)


# --------------------------------------------------------------------------- new items


def read_new_items(path: str, known_ids: set[str]) -> pa.Table:
    """Items to add to a built index: ``item_id`` plus any of the catalogue's metadata columns.

    Returns ``item_id``, ``title`` and ``metadata_text`` (M_i, as the catalogue's are written).
    Fails, naming the file, column and rows, on a missing file or column, a null, duplicate or
    already-indexed id, or a file with no metadata column at all.
    """
    table = _read_file(path)
    _validate_items_columns(path, table.schema)
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
