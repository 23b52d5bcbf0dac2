"""Distill stage: the student encoder learns history text -> target embedding, on Ray Train + DeepSpeed.

    ray job submit --working-dir . -- python -m ray_jobs.distill --config configs/beauty-sample.yaml

Checkpoints every ``distill.checkpoint_every`` steps; a run killed part-way and started again with the
same settings resumes from its last checkpoint. With ``distill.patience``, every epoch ends with the
held-out users' loss and the best epoch is kept. Writes ``students/<run_name>/`` (``model/``, a
sentence-transformers folder that loads without DeepSpeed, and metrics, examples, distances). The loop:
``r2end_core.models.r2end.distill.train_student``.
"""

from __future__ import annotations

import time

from r2end_core import schemas, storage
from r2end_core.config import DistillConfig, EmbedConfig, PipelineConfig
from r2end_core.layout import Layout
from r2end_core.models.r2end import distill
from r2end_core.summaries import DistillSummary, EmbedReport
from ray_jobs import ray_train
from ray_jobs.ray_data import encode_texts
from ray_jobs.runtime import log, run_stage


def train_loop_per_worker(config: dict) -> None:
    me, examples = ray_train.worker(config), storage.read_table(config["examples_path"])
    cfg, ec = DistillConfig(**config["distill"]), EmbedConfig(**config["embed"])
    held = storage.read_table(config["held_out_path"]) if config["held_out_path"] else None
    with ray_train.restored_folder() as restored:
        steps = distill.train_student(
            cfg, ec, examples, config["model_path"], me.device, me.rank, me.world, restored, held
        )
        for report, save in steps:
            ray_train.report(config, report, save=save)


def run(cfg: PipelineConfig) -> DistillSummary:
    layout, dc, ec, started = Layout(cfg.storage_path), cfg.distill, cfg.embed, time.time()
    embedded = EmbedReport.read(layout.embeddings("report.json"), "embed")
    targets = storage.read_table(layout.embeddings("targets.parquet"))
    examples, held, with_text = distill.examples(layout.read_users(), targets, dc)
    if dc.patience and not held.num_rows:
        raise ValueError(
            f"distill.patience={dc.patience} validates on held-out users, and holdout_fraction="
            f"{dc.holdout_fraction} of {examples.num_rows} users holds out none: raise it or unset patience"
        )
    distill.start_run(layout, dc, examples, held)
    if earlier := distill.distilled_before(layout, dc, ec):
        return copied(layout, *earlier, dc, started)
    name, model = distill.run_name(dc, embedded.inputs_digest, layout.root), layout.student(dc.run_name, "model")
    config = {
        "distill": dc.model_dump(),
        "embed": ec.model_dump(),
        "model_path": model,
        "examples_path": layout.student(dc.run_name, "examples.parquet"),
        "held_out_path": layout.student(dc.run_name, "held_out.parquet") if dc.patience else None,
    }
    result = ray_train.fit(
        train_loop_per_worker,
        config,
        name=name,
        layout=layout,
        resources=cfg.resources,
        max_failures=cfg.ray.max_failures,
        num_workers=dc.num_workers,
        describe=lambda r: (
            f"distill step {r['step']}/{r['total_steps']}: loss {r['loss']:.4f}"
            + (f", held-out loss by epoch {r['held_out_losses']}" if r.get("held_out_losses") else "")
        ),
    )
    trained, distances = result.metrics, None
    if held.num_rows:  # the held-out users' targets against Enc's and the student's embeddings of their history
        texts = held.column("history_text").to_pylist()
        before, after = (encode_texts(texts, source, ec, cfg.resources, keep="end") for source in (ec.encoder, model))
        table, distances = distill.distance_table(
            held["user_id"].to_pylist(), schemas.to_matrix(held["target"]), before, after
        )
        storage.write_table(table, layout.student(dc.run_name, "distances.parquet"))
    summary = DistillSummary(
        target=dc.target,
        users=dc.users,
        users_distilled=examples.num_rows,
        users_with_teacher_text=with_text,
        held_out_losses=trained.get("held_out_losses", []),
        best_epoch=trained.get("best_epoch") or None,
        users_held_out=held.num_rows,
        steps=trained["step"],
        resumed_from_step=trained["resumed_from_step"],
        loss_first=trained["losses"][0],
        loss_last=trained["losses"][-1],
        losses=trained["losses"],
        train_seconds=trained["train_seconds"],
        ray_train_run=name,
        encoder=ec.encoder,
        config=dc.model_dump(mode="json"),
        max_seq_length=ec.max_seq_length,
        distances_held_out=distances,
        wall_time_s=round(time.time() - started, 1),
    )
    summary.write(layout.student(dc.run_name, "metrics.json"))
    return summary


def copied(layout: Layout, earlier: str, summary: DistillSummary, dc: DistillConfig, started: float) -> DistillSummary:
    """``earlier``'s student, which learnt the same examples with the same settings, as ``dc.run_name``'s: its
    model and distances copied, its summary (its weights' id included, so caches of its vectors hold)."""
    log.info(f"distill: {earlier} learnt the same examples with the same settings; its student is copied")
    storage.copy_folder(layout.student(earlier, "model"), layout.student(dc.run_name, "model"))
    distances, mine = layout.student(earlier, "distances.parquet"), layout.student(dc.run_name, "distances.parquet")
    if storage.exists(distances):
        storage.write_table(storage.read_table(distances), mine)
    elif storage.exists(mine):  # an earlier run's of this name
        storage.delete_file(mine)
    mine = summary.model_copy(
        update={"config": dc.model_dump(mode="json"), "copied_from": earlier, "wall_time_s": time.time() - started}
    )
    mine.write(layout.student(dc.run_name, "metrics.json"))
    return mine


if __name__ == "__main__":
    run_stage(__doc__, run, "distill")
