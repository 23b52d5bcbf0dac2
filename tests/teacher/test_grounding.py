"""Rejection sampling: unguided answers grounded in a slice of the real Beauty catalogue with real MiniLM."""

import pyarrow as pa
import pytest

from r2end_core import schemas
from r2end_core.teacher import grounding
from r2end_core.teacher.kinds import KINDS
from r2end_core.teacher.outputs import output_row
from tests.conftest import catalogue_slice
from tests.teacher.test_outputs import MODEL


def test_naming_the_true_item_is_accepted_and_an_unrelated_answer_is_not(prepared_tables, minilm_encode):
    users, items = prepared_tables
    meta = dict(zip(items.column("item_id").to_pylist(), items.column("metadata_text").to_pylist()))
    u1, u2, u3 = users.slice(0, 3).to_pylist()
    items = catalogue_slice(items, 500, [u1["train_target"], u2["train_target"]])
    title = meta[u1["train_target"]].split(";")[0]
    rows = [
        output_row(
            KINDS["unguided"], u1["user_id"], MODEL, f"They like it.\nPredicted next item: {title}", 10, 5, 50, 100
        ),
        output_row(
            KINDS["unguided"], u2["user_id"], MODEL, "A garden hose for watering tomato plants.", 10, 5, 50, 100
        ),
        output_row(KINDS["unguided"], u3["user_id"], MODEL, None, 10, None, 50, 100, error="engine died"),
    ]
    table = pa.Table.from_pylist(rows, schema=schemas.USER_OUTPUTS)
    result = grounding.ground_unguided(table, users, items, minilm_encode, top_k=5)
    assert result.schema.equals(schemas.GROUNDING)
    by_user = {r["user_id"]: r for r in result.to_pylist()}
    assert set(by_user) == {u1["user_id"], u2["user_id"]}  # a failed answer has nothing to ground
    named = by_user[u1["user_id"]]
    assert named["grounded_on"] == "named_item" and named["accepted"] and named["target_rank"] <= 5
    assert by_user[u2["user_id"]]["grounded_on"] == "answer"
    assert not by_user[u2["user_id"]]["accepted"] and by_user[u2["user_id"]]["target_rank"] > 5


def test_outputs_for_users_outside_the_prepared_data_are_refused(prepared_tables):
    users, items = prepared_tables
    row = output_row(KINDS["unguided"], "NOT-A-USER", MODEL, "Lip balm.", 10, 5, 50, 100)

    def encode(texts):
        raise AssertionError("refused before any encoding")

    with pytest.raises(ValueError, match="1 users not in the prepared users.*NOT-A-USER"):
        grounding.ground_unguided(pa.Table.from_pylist([row], schema=schemas.USER_OUTPUTS), users, items, encode)
