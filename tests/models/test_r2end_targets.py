"""What the encoder is given: item and target texts built from real Beauty rows and real teacher outputs."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from r2end_core.layout import Layout
from r2end_core.models.r2end import targets
from r2end_core.teacher.folders import check_users_known
from r2end_core.teacher.kinds import KINDS


def outputs(kind: str, rows: list[dict]) -> pa.Table:
    """Teacher-output rows of one kind (text and error given per row)."""
    base = {
        "prompt_version": "v",
        "model": "m",
        "prompt_tokens": 1,
        "output_tokens": 1,
        "finish_reason": "stop",
        "truncated_to_words": False,
        "generated_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }
    return pa.Table.from_pylist(
        [{**base, "kind": kind, "predicted_item": None, **r} for r in rows], schema=KINDS[kind].schema
    )


def test_item_texts_put_metadata_first_and_count_descriptions(prepared_tables):
    _, items = prepared_tables
    first = items.column("item_id")[0].as_py()
    described = outputs("item", [{"item_id": first, "text": "Users who prefer gentle soaps.", "error": None}])
    texts, has = targets.item_texts(items, described)
    assert texts[0] == items.column("metadata_text")[0].as_py() + "\nUsers who prefer gentle soaps."
    assert texts[1:] == items.column("metadata_text").to_pylist()[1:]
    assert has.sum() == 1 and has[0]


def test_target_texts_skip_failed_rows_and_use_the_training_target(prepared_tables):
    users, items = prepared_tables
    u0, u1 = users.column("user_id").to_pylist()[:2]
    reasoning = outputs(
        "oracle",
        [
            {"user_id": u0, "text": "Likes lip care.", "error": None},
            {"user_id": u1, "text": None, "error": "empty generation"},
        ],
    )
    ids, texts = targets.target_texts(targets.TARGET_KINDS["oracle"], users, items, reasoning)
    target = users.column("train_target")[0].as_py()
    metadata = dict(zip(items.column("item_id").to_pylist(), items.column("metadata_text").to_pylist()))
    assert ids == [u0] and texts == [metadata[target] + "\nLikes lip care."]
    # metadata targets need no teacher: every user's, the training target's metadata alone
    ids, texts = targets.target_texts(targets.TARGET_KINDS["metadata"], users, items, None)
    assert ids == users.column("user_id").to_pylist() and texts[0] == metadata[target]
    profile = outputs("profile", [{"user_id": u1, "text": "This shopper's preferences: lip care.", "error": None}])
    # a profile is the teacher's text alone: it never names the training target
    assert targets.target_texts(targets.TARGET_KINDS["profile"], users, items, profile) == (
        [u1],
        ["This shopper's preferences: lip care."],
    )


def test_missing_teacher_outputs_and_unknown_users_are_named(prepared_tables):
    users, items = prepared_tables
    with pytest.raises(ValueError, match="needs the teacher's oracle outputs"):
        targets.target_texts(targets.TARGET_KINDS["oracle"], users, items, None)
    stray = outputs("oracle", [{"user_id": "no-such-user", "text": "x", "error": None}])
    with pytest.raises(ValueError, match="1 users that are not in the prepared users.*no-such-user"):
        check_users_known(stray, users, "teacher_outputs/x (oracle)")


def test_a_missing_embed_stage_output_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="items.parquet not found: run the embed stage"):
        targets.read_item_embeddings(Layout(str(tmp_path)), pa.table({"item_id": ["i1"]}))
