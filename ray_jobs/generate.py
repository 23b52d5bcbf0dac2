"""Stage 1: teacher outputs with vLLM through Ray Data (ray.data.llm), resumable exactly once.

    ray job submit --working-dir . -- python -m ray_jobs.generate --config configs/beauty-sample.yaml

Keys already done for this prompt version and model, here or in the committed folders the run extends
(``generate.extends``), are skipped; the rest go through one ``ray.data.llm`` processor (continuous
batching in vLLM) and are committed every ``write_every`` rows as atomically written Parquet files; at
the end each kind's folder is merged to one row per key. A killed run re-run loses nothing and redoes
nothing done (bookkeeping: ``r2end_core.teacher.outputs``).
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
from ray.data.llm import build_processor, vLLMEngineProcessorConfig

from r2end_core.config import GenerateConfig, PipelineConfig
from r2end_core.layout import Layout
from r2end_core.summaries import GenerateSummary
from r2end_core.teacher import outputs
from r2end_core.teacher.folders import read_teacher_outputs
from r2end_core.teacher.model import resolve_teacher
from ray_jobs.runtime import log, quiet_console, run_stage

SMALL_STAGE = {"num_cpus": 0.25}  # the pre/post-processing tasks must not starve the engine on 2 cores


def processor(gc: GenerateConfig, model_folder: str):
    """One ray.data.llm processor for every kind (one engine start)."""
    config = vLLMEngineProcessorConfig(
        model_source=model_folder,
        engine_kwargs=gc.engine_kwargs,
        batch_size=gc.batch_size,
        concurrency=gc.concurrency,
        accelerator_type=gc.accelerator_type,
        should_continue_on_error=True,  # a failed request becomes a row with its error, not a crash
        runtime_env=None if gc.on_gpu else {"env_vars": gc.cpu_env},
        # Without an explicit CPU bundle the engine stage asks for a GPU and never schedules on CPU.
        placement_group_config=None if gc.on_gpu else {"bundles": [{"CPU": 1}]},
        # The driver renders the chat (outputs.render_prompts) and vLLM tokenises and detokenises inside the
        # engine, as it does anyway: Ray's three separate stages would each be one more actor to start.
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )
    return build_processor(
        config,
        preprocess=lambda row: {**row, "sampling_params": gc.sampling},
        postprocess=lambda row: outputs.engine_row(row, gc),
        preprocess_map_kwargs=SMALL_STAGE,
        postprocess_map_kwargs=SMALL_STAGE,
    )


def run(cfg: PipelineConfig) -> GenerateSummary:
    gc, layout = cfg.generate, Layout(cfg.storage_path)
    extended = read_teacher_outputs(gc.extends, layout) if gc.extends else {}
    plan = outputs.plan(gc, layout, layout.read_users(), layout.read_items(), extended)
    started, batches, budget_hit, first_commit = time.time(), [], False, None
    if plan.requests:
        model_folder = resolve_teacher(gc.teacher)
        requests = [
            {k: r[k] for k in ("kind", "key", "prompt")} for r in outputs.render_prompts(plan.requests, model_folder)
        ]
        answers = processor(gc, model_folder)(ray.data.from_items(requests))
        quiet_console()  # ray.llm sets up its loggers as the processor is built
        for batch in answers.iter_batches(batch_size=gc.write_every, batch_format="pyarrow"):
            first_commit = first_commit or time.time() - started  # engine start and the first answers
            outputs.commit(batch, layout)
            batches.append(batch.select(["kind", "prompt_tokens", "output_tokens"]))
            if gc.time_budget_s and time.time() - started > gc.time_budget_s:
                budget_hit = True  # leaving the loop shuts the pipeline down; nothing committed is lost
                break
    new = pa.concat_tables(batches) if batches else None
    summary = outputs.summarize(gc, layout, plan, new, time.time() - started, first_commit, budget_hit)
    summary.write(layout.generation_summary)
    for line in summary.lines():
        log.info(line)
    return summary


if __name__ == "__main__":
    run_stage(__doc__, run, "generate")
