"""Generation bookkeeping (no Ray, no vLLM): what to ask the teacher, and what a row of output is.

Outputs live in one folder per kind under ``<storage>/generated/`` (``oracle``, ``unguided``,
``items``), as Parquet files that are each written atomically. A run first reads what is there:
a key whose latest row for the current prompt version and model succeeded is done and is not
generated again; a failed or empty row is kept (with its error) and retried. At the end the
folder is merged to exactly one row per key (``latest_per_key``).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from r2end_core import prompts

USER_KINDS = ("oracle", "unguided")

_COMMON_FIELDS = [
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("text", pa.string()),  # the reasoning or description; null when generation failed
    pa.field("prompt_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("finish_reason", pa.string()),  # "stop", or "length" when the token cap cut it
    pa.field("truncated_to_words", pa.bool_()),  # the answer ran past max_words and was cut there
    pa.field("error", pa.string()),  # null on success
    pa.field("generated_at", pa.timestamp("us", tz="UTC"), nullable=False),
]

#: One row per (user, kind). ``predicted_item`` is the item an unguided answer names.
USER_OUTPUT_SCHEMA = pa.schema(
    [pa.field("user_id", pa.string(), nullable=False), pa.field("kind", pa.string(), nullable=False)]
    + _COMMON_FIELDS
    + [pa.field("predicted_item", pa.string())]
)

#: One row per item; ``text`` is its description D_i.
ITEM_OUTPUT_SCHEMA = pa.schema([pa.field("item_id", pa.string(), nullable=False)] + _COMMON_FIELDS)


def key_column(kind: str) -> str:
    return "item_id" if kind == "item" else "user_id"


def output_schema(kind: str) -> pa.Schema:
    return ITEM_OUTPUT_SCHEMA if kind == "item" else USER_OUTPUT_SCHEMA


def sample_keys(keys: list[str], limit: int | None, seed: int) -> list[str]:
    """A fixed random sample, in input order. Samples are nested: raising ``limit`` keeps every
    key of the smaller sample, so a bigger run reuses everything already generated.

    >>> small, big = sample_keys(list("abcdefgh"), 3, 0), sample_keys(list("abcdefgh"), 5, 0)
    >>> set(small) <= set(big), len(big)
    (True, 5)
    """
    if limit is None or limit >= len(keys):
        return list(keys)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(keys))[:limit])
    return [keys[i] for i in chosen]


def build_requests(kind: str, users: pa.Table, items: pa.Table, keys: list[str], max_words: int) -> list[dict]:
    """``{"key", "prompt"}`` for each key. Oracle prompts show the training target only."""
    metadata = dict(zip(items.column("item_id").to_pylist(), items.column("metadata_text").to_pylist()))
    wanted = set(keys)
    if kind == "item":
        rows = [r for r in items.select(["item_id", "metadata_text", "buyer_context_text"]).to_pylist() if r["item_id"] in wanted]
        return [
            {"key": r["item_id"], "prompt": prompts.item_prompt(r["metadata_text"], r["buyer_context_text"], max_words=max_words)}
            for r in rows
        ]
    columns = ["user_id", "train_history_text", "train_target"]
    rows = [r for r in users.select(columns).to_pylist() if r["user_id"] in wanted]
    if kind == "oracle":
        return [
            {"key": r["user_id"], "prompt": prompts.oracle_prompt(r["train_history_text"], metadata[r["train_target"]], max_words)}
            for r in rows
        ]
    if kind == "unguided":
        return [{"key": r["user_id"], "prompt": prompts.unguided_prompt(r["train_history_text"], max_words)} for r in rows]
    raise ValueError(f"unknown generation kind '{kind}'")


def done_keys(existing: pa.Table | None, prompt_version: str, model: str) -> set[str]:
    """Keys that already have a successful output for this prompt version and model."""
    if existing is None or existing.num_rows == 0:
        return set()
    key = "item_id" if "item_id" in existing.column_names else "user_id"
    ok = pc.and_(
        pc.and_(pc.equal(existing["prompt_version"], prompt_version), pc.equal(existing["model"], model)),
        pc.is_null(existing["error"]),
    )
    return set(existing.filter(ok).column(key).to_pylist())


def extended_keys(extended: pa.Table | None, kind: str, prompt_version: str, model: str, folders: list[str]) -> set[str]:
    """Every key the extended ``folders`` hold for ``kind``, failures included (a key lives in one
    folder). Rows made with another prompt version or model are refused: taking their keys as done
    would join two teachers' answers as if they were one run's.

    >>> rows = pa.table({"user_id": ["u1"], "prompt_version": ["v1"], "model": ["m"], "error": [None]})
    >>> extended_keys(rows, "oracle", "v1", "m", ["f"])
    {'u1'}
    >>> extended_keys(rows, "oracle", "v2", "m", ["f"])
    Traceback (most recent call last):
    ...
    ValueError: generate.extends (f), oracle: 1 rows were made with prompt v1 by m, e.g. user_id 'u1', not with this run's prompt v2 by m; extend only folders of the same teacher and prompt (or generate into a new folder)
    """
    if extended is None:
        return set()
    key = key_column(kind)
    other = extended.filter(pc.or_(pc.not_equal(extended["prompt_version"], prompt_version), pc.not_equal(extended["model"], model)))
    if other.num_rows:
        first = other.slice(0, 1).to_pylist()[0]
        raise ValueError(
            f"generate.extends ({', '.join(folders)}), {kind}: {other.num_rows} rows were made with prompt "
            f"{first['prompt_version']} by {first['model']}, e.g. {key} {first[key]!r}, not with this run's prompt "
            f"{prompt_version} by {model}; extend only folders of the same teacher and prompt (or generate into a new folder)"
        )
    return set(extended.column(key).to_pylist())


def output_row(
    kind: str,
    key: str,
    model: str,
    generated_text: str | None,
    prompt_tokens: int | None,
    output_tokens: int | None,
    token_cap: int,
    max_words: int,
    error: str | None = None,
) -> dict:
    """One output row from the teacher's continuation (the text after any prefill); an empty
    continuation is an error, so it is retried rather than used."""
    text, cut = (None, None)
    if error is None:
        if not generated_text or not generated_text.strip():
            error = "empty generation"
        else:
            text, cut = prompts.truncate_words(prompts.with_prefill(kind, generated_text), max_words)
    row = {
        key_column(kind): key,
        "prompt_version": prompts.PROMPT_VERSIONS[kind],
        "model": model,
        "text": text,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "finish_reason": None if output_tokens is None else ("length" if output_tokens >= token_cap else "stop"),
        "truncated_to_words": cut,
        "error": error,
        "generated_at": dt.datetime.now(dt.timezone.utc),
    }
    if kind != "item":
        row["kind"] = kind
        row["predicted_item"] = prompts.extract_predicted_item(text) if (kind == "unguided" and text) else None
    return row


def latest_per_key(table: pa.Table) -> pa.Table:
    """Exactly one row per key: its latest success if it has one, else its latest failure."""
    key = "item_id" if "item_id" in table.column_names else "user_id"
    ordered = table.append_column("_failed", pc.is_valid(table["error"])).sort_by(
        [(key, "ascending"), ("_failed", "ascending"), ("generated_at", "descending")]
    )
    keys = ordered.column(key).to_pylist()
    first = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    return ordered.take(first).drop_columns(["_failed"])
