"""Generation bookkeeping on real prepared Beauty rows: requests, output rows, exactly-once merge."""

import datetime as dt

import pyarrow as pa

from r2end_core import schemas
from r2end_core.teacher import outputs, prompts
from r2end_core.teacher.kinds import KINDS

MODEL = "bundled:smollm2-135m-instruct"


def test_oracle_prompts_show_the_training_target_never_validation_or_test(prepared_tables):
    users, items = prepared_tables
    meta = dict(zip(items.column("item_id").to_pylist(), items.column("metadata_text").to_pylist()))
    keys = users.column("user_id").to_pylist()[:50]
    requests = outputs.build_requests(KINDS["oracle"], users, items, keys, max_words=100)
    assert [r["key"] for r in requests] == keys
    for request, user in zip(requests, users.slice(0, 50).to_pylist()):
        target_block = request["prompt"].split("Target item:\n")[1].split("\n\nRequirements")[0]
        assert target_block == meta[user["train_target"]]
        assert user["train_history_text"] in request["prompt"]
        for held_out in (user["valid_target"], user["test_target"]):
            if held_out not in user["sequence"][:-2]:  # unless it was also bought earlier
                assert meta[held_out] not in request["prompt"]


def test_item_prompts_use_buyer_context(prepared_tables):
    users, items = prepared_tables
    row = next(r for r in items.to_pylist() if r["buyer_context_ids"])
    (request,) = outputs.build_requests(KINDS["item"], users, items, [row["item_id"]], max_words=100)
    assert row["metadata_text"] in request["prompt"] and row["buyer_context_text"] in request["prompt"]


def row(kind, key, text, error=None, minutes=0, version=None):
    out = outputs.output_row(KINDS[kind], key, MODEL, text, 10, 5, token_cap=50, max_words=100, error=error)
    out["generated_at"] = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minutes)
    if version:
        out["prompt_version"] = version
    return out


def test_empty_generations_are_errors_and_long_ones_are_cut():
    assert row("oracle", "u1", "   ")["error"] == "empty generation"
    long = outputs.output_row(KINDS["oracle"], "u1", MODEL, "w " * 120, 10, 50, token_cap=50, max_words=100)
    assert long["truncated_to_words"] and len(long["text"].split()) == 100 and long["finish_reason"] == "length"
    unguided = row("unguided", "u1", "likes lips\nPredicted next item: Rose Balm")
    assert unguided["predicted_item"] == "Rose Balm"


def test_failures_are_retried_and_merge_keeps_one_row_per_key():
    table = pa.Table.from_pylist(
        [
            row("oracle", "u1", "first", minutes=0),
            row("oracle", "u1", "second", minutes=5),
            row("oracle", "u2", None, error="engine died", minutes=0),
            row("oracle", "u3", None, error="engine died", minutes=0),
            row("oracle", "u3", "recovered", minutes=9),
            row("oracle", "u4", "old prompt", version="oracle-000000000000"),
        ],
        schema=schemas.USER_OUTPUTS,
    )
    assert outputs.done_keys(table, KINDS["oracle"], MODEL) == {"u1", "u3"}
    assert outputs.done_keys(table, KINDS["oracle"], "another-model") == set()
    merged = {r["user_id"]: r for r in outputs.latest_per_key(table, KINDS["oracle"]).to_pylist()}
    assert sorted(merged) == ["u1", "u2", "u3", "u4"]
    assert merged["u1"]["text"].endswith(" second") and merged["u3"]["text"].endswith(" recovered")
    assert merged["u2"]["error"] == "engine died"  # kept, never silently dropped


def test_oracle_and_item_answers_start_with_the_lead_in():
    oracle = outputs.output_row(KINDS["oracle"], "u1", MODEL, " they like roses.", 10, 5, token_cap=50, max_words=100)
    assert oracle["text"] == prompts.ORACLE_LEAD_IN + " they like roses."
    item = outputs.output_row(KINDS["item"], "i1", MODEL, "dry skin.", 10, 5, token_cap=50, max_words=100)
    assert item["text"].startswith(prompts.ITEM_LEAD_IN + " dry skin")
    assert (
        outputs.output_row(KINDS["item"], "i1", MODEL, " ", 10, 1, token_cap=50, max_words=100)["error"]
        == "empty generation"
    )
