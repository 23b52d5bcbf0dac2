"""Stage 1: teacher outputs with vLLM through Ray Data (ray.data.llm), resumable exactly once.

    ray job submit --working-dir . -- python -m ray_jobs.generate --config configs/beauty-sample.yaml

Per kind (oracle, unguided, item): keys already done for this prompt version and model, here or
in the committed folders the run extends (``generate.extends``), are skipped; the rest go through
one ``ray.data.llm`` processor (continuous batching in vLLM) and are committed every
``write_every`` rows as atomically written Parquet files; at the end the folder is merged to
exactly one row per key. A killed run re-run loses nothing and redoes nothing done.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.llm import build_processor, vLLMEngineProcessorConfig
from transformers import AutoTokenizer

from r2end_core import artifacts, embeddings, generation, prompts, storage
from r2end_core.config import GenerateConfig, PipelineConfig
from r2end_core.teacher import resolve_teacher
from ray_jobs.runtime import run_stage

SMALL_STAGE = {"num_cpus": 0.25}  # the pre/post-processing tasks must not starve the engine on 2 cores


def engine_config(gc: GenerateConfig, model_folder: str) -> vLLMEngineProcessorConfig:
    """CPU and GPU differ only here, and only by config."""
    on_gpu = gc.accelerator_type is not None
    return vLLMEngineProcessorConfig(
        model_source=model_folder,
        engine_kwargs={
            "dtype": gc.dtype,
            "max_model_len": gc.max_model_len,
            "max_num_seqs": gc.max_num_seqs,
            "tensor_parallel_size": gc.tensor_parallel_size,
            "enforce_eager": not on_gpu,
        },
        batch_size=gc.batch_size,
        concurrency=gc.concurrency,
        accelerator_type=gc.accelerator_type,
        should_continue_on_error=True,  # a failed request becomes a row with its error, not a crash
        runtime_env=None if on_gpu else {
            "env_vars": {"VLLM_CPU_OMP_THREADS_BIND": gc.cpu_threads_bind, "VLLM_CPU_KVCACHE_SPACE": str(gc.cpu_kv_cache_gib)}
        },
        # Without an explicit CPU bundle the engine stage asks for a GPU and never schedules on CPU.
        placement_group_config=None if on_gpu else {"bundles": [{"CPU": 1}]},
        # The driver renders the chat (render_prompts) and vLLM tokenises and detokenises inside the
        # engine, which it does anyway. Ray's three separate stages would each be one more actor to
        # start (each imports transformers) and CPU reserved beside the engine for the whole run.
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
    )


def _processor(gc: GenerateConfig, model_folder: str):
    cap, max_words, model, penalty = gc.token_cap, gc.max_words, gc.teacher, gc.repetition_penalty

    def preprocess(row: dict) -> dict:
        return {
            "kind": row["kind"],
            "key": row["key"],
            "prompt": row["prompt"],  # already rendered as a chat, a prefilled answer left open
            "sampling_params": {"temperature": 0.0, "max_tokens": cap, "repetition_penalty": penalty},  # greedy
        }

    def postprocess(row: dict) -> dict:
        out = generation.output_row(
            row["kind"], row["key"], model, row.get("generated_text"), row.get("num_input_tokens"),
            row.get("num_generated_tokens"), cap, max_words, error=row.get("__inference_error__") or None,
        )
        # One flat row shape for every kind; split by kind when written.
        return {"key": row["key"], "kind": row["kind"], **{k: v for k, v in out.items() if k not in ("user_id", "item_id", "kind")}}

    return build_processor(
        engine_config(gc, model_folder), preprocess=preprocess, postprocess=postprocess,
        preprocess_map_kwargs=SMALL_STAGE, postprocess_map_kwargs=SMALL_STAGE,
    )


def render_prompts(requests: list[dict], model_folder: str) -> list[dict]:
    """Each request with its prompt rendered by the teacher's chat template, as the teacher reads it."""
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    return [{**r, "prompt": prompts.render_chat(tokenizer, r["kind"], r["prompt"])} for r in requests]


def _merge(folder: str, schema: pa.Schema) -> pa.Table:
    files = storage.list_files(folder)
    merged = generation.latest_per_key(pa.concat_tables([storage.read_table(f).cast(schema) for f in files]))
    storage.write_table_atomic(merged, storage.join(folder, f"merged-{time.time_ns()}.parquet"))
    for f in files:  # a kill in this loop leaves duplicates that the next merge (and readers) resolve
        storage.delete_file(f)
    return merged


def _commit(batch: pa.Table, root: str) -> None:
    """Write a batch of outputs, one atomically written file per kind."""
    for kind in set(batch.column("kind").to_pylist()):
        rows = batch.filter(pc.equal(batch["kind"], kind)).rename_columns(
            [generation.key_column(kind) if n == "key" else n for n in batch.column_names]
        )
        schema = generation.output_schema(kind)
        rows = rows.select(schema.names).cast(schema)
        storage.write_table_atomic(rows, storage.join(artifacts.generated_path(root, kind), f"part-{time.time_ns()}.parquet"))


def _kind_summary(root: str, kind: str, keys: list[str], pending: int, new: pa.Table | None, seconds: float) -> dict:
    folder = artifacts.generated_path(root, kind)
    merged = _merge(folder, generation.output_schema(kind)) if storage.list_files(folder) else None
    sample = merged.filter(pc.is_in(merged[generation.key_column(kind)], pa.array(keys, pa.string()))) if merged else None
    new = new.filter(pc.equal(new["kind"], kind)) if new is not None else None

    def count(table, mask) -> int:
        return 0 if table is None or table.num_rows == 0 else int(pc.sum(mask(table)).as_py() or 0)

    return {
        "prompt_version": prompts.PROMPT_VERSIONS[kind],
        "requested": len(keys),
        "skipped_done": len(keys) - pending,
        "generated_now": 0 if new is None else new.num_rows,
        "rows": 0 if merged is None else merged.num_rows,
        "not_generated": len(keys) - (0 if sample is None else sample.num_rows),
        "failures": count(sample, lambda t: pc.is_valid(t["error"])),
        "truncated_by_token_cap": count(sample, lambda t: pc.equal(t["finish_reason"], "length")),
        "truncated_to_words": count(sample, lambda t: pc.fill_null(t["truncated_to_words"], False)),
        "prompt_tokens": count(new, lambda t: t["prompt_tokens"]),
        "output_tokens": count(new, lambda t: t["output_tokens"]),
        "seconds": round(seconds, 1),
    }


def run(cfg: PipelineConfig) -> dict:
    gc, root = cfg.generate, cfg.storage_path
    users, items = artifacts.read_users(root), artifacts.read_items(root)
    extended = embeddings.read_teacher_outputs(gc.extends, root) if gc.extends else {}
    keys, in_extended, requests = {}, {}, []
    for kind in gc.kinds:
        all_keys = items.column("item_id").to_pylist() if kind == "item" else users.column("user_id").to_pylist()
        sample = generation.sample_keys(all_keys, gc.max_items if kind == "item" else gc.max_users, gc.sample_seed)
        committed = generation.extended_keys(extended.get(kind), kind, prompts.PROMPT_VERSIONS[kind], gc.teacher, gc.extends)
        keys[kind] = [k for k in sample if k not in committed]
        in_extended[kind] = len(sample) - len(keys[kind])
        done = generation.done_keys(artifacts.read_generated(root, kind), prompts.PROMPT_VERSIONS[kind], gc.teacher)
        requests += [
            {"kind": kind, "order": i, **r}
            for i, r in enumerate(generation.build_requests(kind, users, items, keys[kind], gc.max_words))
            if r["key"] not in done
        ]

    # A user's reasoning kinds side by side, items last, so a time budget cuts item descriptions first.
    requests.sort(key=lambda r: (r["kind"] == "item", r["order"]))
    started, batches, budget_hit, first_output = time.time(), [], False, None
    if requests:
        # One processor, so one engine start, for every kind; committed every write_every rows.
        model_folder = resolve_teacher(gc.teacher)
        outputs = _processor(gc, model_folder)(ray.data.from_items(render_prompts(requests, model_folder)))
        for batch in outputs.iter_batches(batch_size=gc.write_every, batch_format="pyarrow"):
            first_output = first_output or time.time() - started  # engine start and the first answers
            _commit(batch, root)
            batches.append(batch.select(["kind", "prompt_tokens", "output_tokens"]))
            if gc.time_budget_s and time.time() - started > gc.time_budget_s:
                budget_hit = True  # leaving the loop shuts the pipeline down; nothing committed is lost
                break
    seconds = time.time() - started
    new = pa.concat_tables(batches) if batches else None
    pending = {kind: sum(r["kind"] == kind for r in requests) for kind in gc.kinds}
    kinds = {kind: {**_kind_summary(root, kind, keys[kind], pending[kind], new, seconds), "in_extended_folders": in_extended[kind]}
             for kind in gc.kinds}
    output_tokens = sum(k["output_tokens"] for k in kinds.values())
    summary = {
        "teacher": gc.teacher, "max_words": gc.max_words, "token_cap": gc.token_cap, "seconds": round(seconds, 1),
        "seconds_to_first_commit": None if first_output is None else round(first_output, 1),
        "output_tokens": output_tokens,
        "stopped_by_time_budget": budget_hit,
        "output_tokens_per_s": round(output_tokens / seconds, 2) if new is not None else None,
        "kinds": kinds,
        "extends": gc.extends,
    }
    storage.write_json(summary, artifacts.generation_summary_path(root))
    for kind, s in kinds.items():
        print(f"generate {kind}: {s['rows']} rows ({s['generated_now']} new, {s['skipped_done']} already done, "
              f"{s['not_generated']} not generated), "
              f"{s['output_tokens']} output tokens, {s['failures']} failures, {s['truncated_by_token_cap']} cut by the token cap")
    print(f"generate: {output_tokens} output tokens in {summary['seconds']} s ({summary['output_tokens_per_s']} tok/s)"
          + (" - stopped by the time budget; re-run to continue" if budget_hit else ""))
    return summary


if __name__ == "__main__":
    run_stage(__doc__, run)
