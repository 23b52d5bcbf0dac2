"""A generation run's bookkeeping (no Ray, no vLLM): what to ask the teacher, what a row of its output is,
and how outputs are committed, resumed and merged.

Outputs live in one folder per kind under ``<storage>/generated/`` (``teacher.kinds``), as Parquet
files that are each written atomically. A run first reads what is there (and what the committed folders
it extends hold): a key whose latest row for the current prompt version and model succeeded is done and
is not generated again; a failed or empty row is kept (with its error) and retried. At the end each
folder is merged to exactly one row per key (``latest_per_key``).

Why by hand and not with Ray Data's ``CheckpointConfig`` (Ray 2.60): it engages only when a dataset ends
in a file write, which runs to completion, so a run could no longer stop at its time budget and keep what
it made; and it skips every id it wrote, failures included, so failed or empty answers would never be
retried, and an answer made with an older prompt or another teacher would count as done. Deciding what is
done needs the outputs read with their prompt version, model and error, and once they are read the rest
is a filter. ``ray.data.llm``'s ``should_continue_on_error`` is used: a failed request becomes a row with
its error.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from r2end_core import storage
from r2end_core.config import GenerateConfig
from r2end_core.layout import Layout
from r2end_core.summaries import GenerateSummary, KindSummary
from r2end_core.teacher import prompts
from r2end_core.teacher.kinds import KINDS, OutputKind


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


def build_requests(kind: OutputKind, users: pa.Table, items: pa.Table, keys: list[str], max_words: int) -> list[dict]:
    """``{"key", "prompt"}`` for each key, in table order. Oracle prompts show the training target only."""
    metadata = dict(zip(items.column("item_id").to_pylist(), items.column("metadata_text").to_pylist()))
    wanted = set(keys)
    table = users if kind.about == "users" else items
    return [
        {"key": row[kind.key_column], "prompt": kind.prompt(row, metadata, max_words)}
        for row in table.to_pylist()
        if row[kind.key_column] in wanted
    ]


def render_prompts(requests: list[dict], model_folder: str) -> list[dict]:
    """Each request with its prompt rendered by the teacher's chat template, as the teacher reads it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    return [{**r, "prompt": prompts.render_chat(tokenizer, r["kind"], r["prompt"])} for r in requests]


def done_keys(existing: pa.Table | None, kind: OutputKind, model: str) -> set[str]:
    """Keys that already have a successful output for this kind's prompt version and this model."""
    if existing is None or existing.num_rows == 0:
        return set()
    ok = pc.and_(
        pc.and_(pc.equal(existing["prompt_version"], kind.prompt_version), pc.equal(existing["model"], model)),
        pc.is_null(existing["error"]),
    )
    return set(existing.filter(ok).column(kind.key_column).to_pylist())


def extended_keys(extended: pa.Table | None, kind: OutputKind, model: str, folders: list[str]) -> set[str]:
    """Every key the extended ``folders`` hold for ``kind``, failures included (a key lives in one
    folder). Rows made with another prompt version or model are refused: taking their keys as done
    would join two teachers' answers as if they were one run's.

    >>> rows = pa.table({"user_id": ["u1"], "prompt_version": [KINDS["oracle"].prompt_version], "model": ["m"]})
    >>> extended_keys(rows, KINDS["oracle"], "m", ["f"])
    {'u1'}
    >>> extended_keys(rows, KINDS["oracle"], "other", ["f"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: generate.extends (f), oracle: 1 rows were made with prompt oracle-... by m, e.g. user_id 'u1', ...
    """
    if extended is None:
        return set()
    key, version = kind.key_column, kind.prompt_version
    other = extended.filter(
        pc.or_(pc.not_equal(extended["prompt_version"], version), pc.not_equal(extended["model"], model))
    )
    if other.num_rows:
        first = other.slice(0, 1).to_pylist()[0]
        raise ValueError(
            f"generate.extends ({', '.join(folders)}), {kind.name}: {other.num_rows} rows were made with prompt "
            f"{first['prompt_version']} by {first['model']}, e.g. {key} {first[key]!r}, not with this run's prompt "
            f"{version} by {model}; extend only folders of the same teacher and prompt (or generate into a new folder)"
        )
    return set(extended.column(key).to_pylist())


def output_row(
    kind: OutputKind,
    key: str,
    model: str,
    generated_text: str | None,
    prompt_tokens: int | None,
    output_tokens: int | None,
    token_cap: int,
    max_words: int,
    error: str | None = None,
) -> dict:
    """One output row (``kind.schema``) from the teacher's continuation (the text after any prefill);
    an empty continuation is an error, so it is retried rather than used."""
    text, cut = (None, None)
    if error is None:
        if not generated_text or not generated_text.strip():
            error = "empty generation"
        else:
            text, cut = prompts.truncate_words(prompts.with_prefill(kind.name, generated_text), max_words)
    row = {
        kind.key_column: key,
        "prompt_version": kind.prompt_version,
        "model": model,
        "text": text,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "finish_reason": None if output_tokens is None else ("length" if output_tokens >= token_cap else "stop"),
        "truncated_to_words": cut,
        "error": error,
        "generated_at": dt.datetime.now(dt.UTC),
    }
    if kind.about == "users":
        row["kind"] = kind.name
        row["predicted_item"] = prompts.extract_predicted_item(text) if (kind.names_an_item and text) else None
    return row


def engine_row(row: dict, gc: GenerateConfig) -> dict:
    """A row as ray.data.llm's engine returns it (the request's ``kind`` and ``key``, its generated text
    and token counts, or its error) as one flat output row with ``key`` and ``kind`` (``commit`` splits
    them by kind)."""
    out = output_row(
        KINDS[row["kind"]],
        row["key"],
        gc.teacher,
        row.get("generated_text"),
        row.get("num_input_tokens"),
        row.get("num_generated_tokens"),
        gc.token_cap,
        gc.max_words,
        error=row.get("__inference_error__") or None,
    )
    return {
        "key": row["key"],
        "kind": row["kind"],
        **{k: v for k, v in out.items() if k not in ("user_id", "item_id", "kind")},
    }


def latest_per_key(table: pa.Table, kind: OutputKind) -> pa.Table:
    """Exactly one row per key: its latest success if it has one, else its latest failure."""
    key = kind.key_column
    ordered = table.append_column("_failed", pc.is_valid(table["error"])).sort_by(
        [(key, "ascending"), ("_failed", "ascending"), ("generated_at", "descending")]
    )
    keys = ordered.column(key).to_pylist()
    first = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    return ordered.take(first).drop_columns(["_failed"])


def read_generated(layout: Layout, kind: OutputKind) -> pa.Table | None:
    """A storage path's outputs of one kind, one row per key (None if none were generated)."""
    files = storage.list_files(layout.generated(kind.folder))
    if not files:
        return None
    return latest_per_key(pa.concat_tables([storage.read_table(f).cast(kind.schema) for f in files]), kind)


def succeeded(outputs: pa.Table) -> pa.Table:
    """Output rows with text (failed and empty generations are kept in storage, not used)."""
    return outputs.filter(pc.and_(outputs["error"].is_null(), outputs["text"].is_valid()))


@dataclass
class Plan:
    """What a run asks for: per kind, the sampled keys left after the extended folders, how many those
    folders held, and the requests not yet done here (a user's kinds side by side, items last, so a time
    budget cuts item descriptions first)."""

    keys: dict[str, list[str]]
    in_extended: dict[str, int]
    requests: list[dict]


def plan(gc: GenerateConfig, layout: Layout, users: pa.Table, items: pa.Table, extended: dict) -> Plan:
    """``extended``: the committed folders' outputs by kind (``folders.read_teacher_outputs`` of ``gc.extends``)."""
    keys, in_extended, requests = {}, {}, []
    for kind in map(KINDS.get, gc.kinds):
        table, limit = (items, gc.max_items) if kind.about == "items" else (users, gc.max_users)
        sample = sample_keys(table.column(kind.key_column).to_pylist(), limit, gc.sample_seed)
        committed = extended_keys(extended.get(kind.name), kind, gc.teacher, gc.extends)
        keys[kind.name] = [k for k in sample if k not in committed]
        in_extended[kind.name] = len(sample) - len(keys[kind.name])
        done = done_keys(read_generated(layout, kind), kind, gc.teacher)
        requests += [
            {"kind": kind.name, "order": i, **r}
            for i, r in enumerate(build_requests(kind, users, items, keys[kind.name], gc.max_words))
            if r["key"] not in done
        ]
    requests.sort(key=lambda r: (KINDS[r["kind"]].about == "items", r["order"]))
    return Plan(keys, in_extended, requests)


def commit(batch: pa.Table, layout: Layout) -> None:
    """Write a batch of outputs (flat rows with ``key`` and ``kind``), one atomically written file per kind."""
    for name in set(batch.column("kind").to_pylist()):
        kind = KINDS[name]
        rows = batch.filter(pc.equal(batch["kind"], name))
        rows = rows.rename_columns([kind.key_column if n == "key" else n for n in rows.column_names])
        path = storage.join(layout.generated(kind.folder), f"part-{time.time_ns()}.parquet")
        storage.write_table_atomic(rows.select(kind.schema.names).cast(kind.schema), path)


def merge(layout: Layout, kind: OutputKind) -> pa.Table | None:
    """Merge a kind's folder to one file with one row per key (None if it is empty)."""
    files = storage.list_files(layout.generated(kind.folder))
    if not files:
        return None
    merged = latest_per_key(pa.concat_tables([storage.read_table(f).cast(kind.schema) for f in files]), kind)
    storage.write_table_atomic(merged, storage.join(layout.generated(kind.folder), f"merged-{time.time_ns()}.parquet"))
    for f in files:  # a kill in this loop leaves duplicates that the next merge (and readers) resolve
        storage.delete_file(f)
    return merged


def summarize(
    gc: GenerateConfig,
    layout: Layout,
    run: Plan,
    new: pa.Table | None,
    seconds: float,
    first_commit: float | None,
    budget_hit: bool,
) -> GenerateSummary:
    """Merge every kind's folder and count what the run asked for, made and left (``new``: this run's rows,
    with ``kind``, ``prompt_tokens`` and ``output_tokens``)."""
    kinds = {}
    for kind in map(KINDS.get, gc.kinds):
        keys = run.keys[kind.name]
        merged = merge(layout, kind)
        sample = merged.filter(pc.is_in(merged[kind.key_column], pa.array(keys, pa.string()))) if merged else None
        made = new.filter(pc.equal(new["kind"], kind.name)) if new is not None else None

        def count(table, mask) -> int:
            return 0 if table is None or table.num_rows == 0 else int(pc.sum(mask(table)).as_py() or 0)

        pending = sum(r["kind"] == kind.name for r in run.requests)
        kinds[kind.name] = KindSummary(
            prompt_version=kind.prompt_version,
            requested=len(keys),
            skipped_done=len(keys) - pending,
            generated_now=0 if made is None else made.num_rows,
            rows=0 if merged is None else merged.num_rows,
            not_generated=len(keys) - (0 if sample is None else sample.num_rows),
            failures=count(sample, lambda t: pc.is_valid(t["error"])),
            truncated_by_token_cap=count(sample, lambda t: pc.equal(t["finish_reason"], "length")),
            truncated_to_words=count(sample, lambda t: pc.fill_null(t["truncated_to_words"], False)),
            prompt_tokens=count(made, lambda t: t["prompt_tokens"]),
            output_tokens=count(made, lambda t: t["output_tokens"]),
            seconds=round(seconds, 1),
            in_extended_folders=run.in_extended[kind.name],
        )
    output_tokens = sum(k.output_tokens for k in kinds.values())
    return GenerateSummary(
        teacher=gc.teacher,
        max_words=gc.max_words,
        token_cap=gc.token_cap,
        seconds=round(seconds, 1),
        seconds_to_first_commit=None if first_commit is None else round(first_commit, 1),
        output_tokens=output_tokens,
        stopped_by_time_budget=budget_hit,
        output_tokens_per_s=round(output_tokens / seconds, 2) if new is not None else None,
        kinds=kinds,
        extends=gc.extends,
        engine=gc.engine_kwargs,
        finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
