"""The data contract on real Beauty rows: leave-one-out splits, texts, leakage, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2end_core import schemas
from r2end_core.data import contract
from r2end_core.data.histories import SECONDS_PER_DAY as DAY
from tests.conftest import prepare_tables as prepare
from tests.conftest import write_dataset

# --------------------------------------------------------------------------- the happy path


def test_real_sample_loads_and_splits_leave_one_out(beauty_dir, beauty_frames):
    inter, _ = beauty_frames
    report, users, items = prepare(beauty_dir)
    assert report.users == 300 and report.interactions == len(inter)
    assert report.missing_metadata_fields == ["description"]
    assert users.schema.equals(schemas.USERS) and items.schema.equals(schemas.ITEMS)
    first = users.to_pylist()[0]
    raw = inter[inter["user_id"] == first["user_id"]].sort_values("seq_pos")["item_id"].tolist()
    assert first["sequence"] == raw
    assert (first["train_target"], first["valid_target"], first["test_target"]) == tuple(raw[-3:])
    assert items.column("item_index").to_pylist() == list(range(items.num_rows))
    assert items.column("item_id").to_pylist() == sorted(items.column("item_id").to_pylist())


def test_user_order_is_first_appearance(beauty_dir, beauty_frames):
    inter, _ = beauty_frames
    _, users, _ = prepare(beauty_dir)
    assert users["user_id"].to_pylist() == inter["user_id"].drop_duplicates().tolist()


def test_reading_in_slices_of_row_groups_changes_nothing(tmp_path, beauty_dir, beauty_frames):
    """Users whose rows span slices (and parts) are grouped whole: the tables are those of one slice."""
    report, users, items = prepare(beauty_dir)
    sliced = write_dataset(tmp_path / "d", *beauty_frames, row_group_size=100)
    assert prepare(sliced, interactions_per_part=250) == (report, users, items)


def test_interactions_may_be_a_folder_of_parquet_files(tmp_path, beauty_dir, beauty_frames):
    inter, items = beauty_frames
    path = write_dataset(tmp_path / "d", inter.iloc[:0], items)
    (tmp_path / "d/interactions.parquet").unlink()
    (tmp_path / "d/interactions.parquet").mkdir()
    for n, start in enumerate(range(0, len(inter), 1000)):  # rows are numbered across the files in name order
        part = pa.Table.from_pandas(inter.iloc[start : start + 1000], preserve_index=False)
        pq.write_table(part, tmp_path / f"d/interactions.parquet/part-{n}.parquet")
    assert prepare(path) == prepare(beauty_dir)

    other = pa.Table.from_pandas(inter.iloc[:10].drop(columns=["seq_pos"]), preserve_index=False)
    pq.write_table(other, tmp_path / "d/interactions.parquet/part-9.parquet")
    with pytest.raises(contract.DataValidationError, match=r"part-9.parquet: columns .* differ from those of .*part-0"):
        prepare(path)
    (tmp_path / "d/interactions.parquet/part-9.parquet").unlink()
    (tmp_path / "d/interactions.parquet/year=2014").mkdir()  # a partitioned layout is not read: said, not skipped
    with pytest.raises(contract.DataValidationError, match=r"interactions.parquet: holds \['year=2014'\]"):
        prepare(path)


def test_texts_are_deterministic_and_dated(beauty_dir):
    _, users_a, items_a = prepare(beauty_dir)
    _, users_b, items_b = prepare(beauty_dir)
    assert users_a.equals(users_b) and items_a.equals(items_b)
    text = users_a.column("test_history_text")[0].as_py()
    assert text.startswith("1. 20") and "brand:" in text


def test_validation_and_test_items_never_reach_training_artifacts(tmp_path, beauty_frames):
    """Replace every user's validation and test items: every training artifact must be unchanged."""
    inter, items = beauty_frames
    _, users_a, items_a = prepare(write_dataset(tmp_path / "a", inter, items))

    rng = np.random.default_rng(0)
    changed = inter.copy()
    last_two = changed.groupby("user_id")["seq_pos"].transform(lambda s: s >= s.max() - 1)
    pool = items["item_id"].to_numpy()
    for row in changed.index[last_two]:
        user_items = set(changed.loc[changed["user_id"] == changed.at[row, "user_id"], "item_id"])
        changed.at[row, "item_id"] = next(i for i in rng.permutation(pool) if i not in user_items)
    _, users_b, items_b = prepare(write_dataset(tmp_path / "b", changed, items))

    train_columns = ["user_id", "train_target", "train_history_ids", "train_history_text"]
    assert users_a.select(train_columns).equals(users_b.select(train_columns))
    assert users_a.column("valid_target") != users_b.column("valid_target")
    a = items_a.to_pandas().set_index("item_id")
    b = items_b.to_pandas().set_index("item_id")
    shared = a.index.intersection(b.index)
    for column in ("buyer_context_ids", "buyer_context_text", "train_popularity"):
        assert a.loc[shared, column].astype(str).equals(b.loc[shared, column].astype(str)), column


def test_dataset_without_timestamps_uses_positions(tmp_path, beauty_frames):
    inter, items = beauty_frames
    path = write_dataset(tmp_path / "d", inter.drop(columns=["timestamp"]), items)
    report, users, _ = prepare(path)
    assert not report.has_timestamps
    row = users.to_pylist()[0]
    assert row["timestamps"] is None
    assert row["test_history_ids"] == row["sequence"][:-1][-8:]
    assert not row["test_history_text"][3:].startswith("20")  # no dates


def test_integer_ids_and_extra_metadata(tmp_path, beauty_frames):
    inter, items = beauty_frames
    codes = {item: n for n, item in enumerate(items["item_id"])}
    inter = inter.assign(item_id=inter["item_id"].map(codes))
    items = items.assign(item_id=items["item_id"].map(codes), description="A real description.")
    report, _, table = prepare(write_dataset(tmp_path / "d", inter, items))
    assert report.missing_metadata_fields == []
    assert table.column("item_id").type == pa.string()
    assert "description: A real description." in table.column("metadata_text")[0].as_py()


def test_sampling_is_seeded(beauty_dir):
    report, a, _ = prepare(beauty_dir, sample_users=50, sample_seed=1)
    _, b, _ = prepare(beauty_dir, sample_users=50, sample_seed=1)
    _, c, _ = prepare(beauty_dir, sample_users=50, sample_seed=2)
    assert a["user_id"].to_pylist() == b["user_id"].to_pylist()
    assert a["user_id"].to_pylist() != c["user_id"].to_pylist()
    assert report.users == 50 and a.num_rows == 50


# --------------------------------------------------------------------------- bad input


def first_user_rows(inter: pd.DataFrame) -> pd.Index:
    return inter.index[inter["user_id"] == inter["user_id"].iloc[0]]


def corrupt(tmp_path, beauty_frames, change):
    inter, items = (f.copy() for f in beauty_frames)
    inter, items = change(inter, items)
    return write_dataset(tmp_path / "bad", inter, items)


def drop_column(column):
    return lambda inter, items: (inter.drop(columns=[column]), items)


def unknown_item(inter, items):
    inter.loc[5, "item_id"] = "NOT-AN-ITEM"
    return inter, items


def duplicate_row(inter, items):
    return pd.concat([inter, inter.iloc[[7]]], ignore_index=True), items


def backwards_time(inter, items):
    rows = first_user_rows(inter)
    inter.loc[rows[-1], "timestamp"] = inter.loc[rows[0], "timestamp"] - DAY
    return inter, items


def string_timestamps(inter, items):
    return inter.assign(timestamp=inter["timestamp"].astype(str)), items


def null_user(inter, items):
    inter.loc[3, "user_id"] = None
    return inter, items


def duplicate_item_ids(inter, items):
    return inter, pd.concat([items, items.iloc[[0]]], ignore_index=True)


def float_price_as_text(inter, items):
    return inter, items.assign(price=items["price"].astype(str))


def item_id_with_a_space(inter, items):
    renamed = {items.loc[4, "item_id"]: "B00 SPACE"}
    return inter.replace({"item_id": renamed}), items.replace({"item_id": renamed})


def empty_interactions(inter, items):
    return inter.iloc[:0], items


@pytest.mark.parametrize(
    "change, expected",
    [
        (drop_column("item_id"), r"interactions.parquet: missing required column\(s\) \['item_id'\]"),
        (lambda i, it: (i.drop(columns=["timestamp", "seq_pos"]), it), "needs 'timestamp' and/or 'seq_pos'"),
        (
            unknown_item,
            r"interactions.parquet: column 'item_id': items missing from items.parquet \(1 rows\), "
            r"e.g. row 5 .*NOT-AN-ITEM",
        ),
        (duplicate_row, r"column 'seq_pos': duplicate \(user_id, seq_pos\) rows \(2 rows\), e.g. row 7"),
        (backwards_time, r"column 'timestamp': timestamps decrease along seq_pos \(1 rows\)"),
        (string_timestamps, r"column 'timestamp' has type (large_)?string; expected integer unix seconds"),
        (null_user, r"column 'user_id': null values \(1 rows\), e.g. row 3"),
        (duplicate_item_ids, r"items.parquet: column 'item_id': duplicate item ids \(2 rows\)"),
        (float_price_as_text, r"items.parquet: column 'price' has type (large_)?string; expected a number"),
        (
            item_id_with_a_space,
            r"items.parquet: column 'item_id': ids that are not 1 to 128 characters free of whitespace and control "
            r"characters \(1 rows\), e.g. row 4 .*B00 SPACE",
        ),
        (empty_interactions, r"interactions.parquet: the file is empty"),
    ],
    ids=[
        "missing-column",
        "no-order-column",
        "unknown-item",
        "duplicate-position",
        "time-contradicts-order",
        "wrong-type",
        "null-id",
        "duplicate-item",
        "wrong-item-type",
        "item-id-the-api-refuses",
        "empty-file",
    ],
)
def test_bad_input_is_named(tmp_path, beauty_frames, change, expected):
    path = corrupt(tmp_path, beauty_frames, change)
    with pytest.raises(contract.DataValidationError, match=expected):
        prepare(path)


def test_missing_file_is_named(tmp_path, beauty_frames):
    path = write_dataset(tmp_path / "d", *beauty_frames)
    (tmp_path / "d" / "items.parquet").unlink()
    with pytest.raises(contract.DataValidationError, match=r"items.parquet: file not found"):
        prepare(path)


def test_duplicate_timestamp_rows_without_positions(tmp_path, beauty_frames):
    path = corrupt(tmp_path, beauty_frames, lambda i, it: duplicate_row(i.drop(columns=["seq_pos"]), it))
    with pytest.raises(contract.DataValidationError, match=r"duplicate \(user_id, item_id, timestamp\) rows"):
        prepare(path)


def shorten_first_user(inter, items):
    rows = first_user_rows(inter)
    return inter.drop(index=rows[2:]), items


def test_short_users_are_dropped_and_counted(tmp_path, beauty_frames):
    path = corrupt(tmp_path, beauty_frames, shorten_first_user)
    report, _, _ = prepare(path)
    assert report.dropped_short_users == 1 and report.users == 299


def test_short_users_can_be_an_error(tmp_path, beauty_frames):
    path = corrupt(tmp_path, beauty_frames, shorten_first_user)
    with pytest.raises(
        contract.DataValidationError,
        match=r"column 'user_id': users with fewer than 3 interactions \(2 rows\), e.g. row 0",
    ):
        prepare(path, short_users="error")


def test_arrow_timestamp_column_is_read_as_seconds(tmp_path, beauty_frames):
    inter, items = beauty_frames
    table = pa.Table.from_pandas(inter, preserve_index=False)
    stamps = table.column("timestamp").cast(pa.timestamp("s"))
    table = table.set_column(table.column_names.index("timestamp"), "timestamp", stamps)
    _, users, _ = prepare(write_dataset(tmp_path / "d", table, items))
    first = inter[inter["user_id"] == users["user_id"][0].as_py()].sort_values("seq_pos")
    assert users["timestamps"][0].as_py() == first["timestamp"].tolist()
