"""DLLM2Rec on Ray Train: SASRec distilled from a trained teacher model's rankings and r2end's item embeddings.

    ray job submit --working-dir . -- python -m ray_jobs.train_dllm2rec --config configs/beauty-sample.yaml

The teacher (``dllm2rec.teacher``, by default the R2END model) ranks the catalogue for each training
instance once, a block of users at a time (full ranking in Ray tasks); the rankings are kept under
``teacher_rankings/`` (a text teacher's history texts are
encoded on Ray Data). The student trains like ``train_sasrec`` (its ``sasrec`` settings) with the ranking
term and the item embeddings of the embed stage (Enc(M + D): metadata plus the teacher's description
where one was generated). Writes ``models/<dllm2rec.run_name>/<version>/``, a SASRec the Serve app can
serve. The logic: ``r2end_core.models.dllm2rec``.
"""

from __future__ import annotations

import time

from r2end_core import models, schemas, storage
from r2end_core.config import PipelineConfig
from r2end_core.data.items import Catalogue
from r2end_core.layout import Layout
from r2end_core.models import dllm2rec, instances, sasrec
from r2end_core.models.r2end import targets
from r2end_core.summaries import EmbedReport, TrainSummary
from ray_jobs import ranking, ray_data, sequential
from ray_jobs.runtime import log, run_stage

#: Instances whose teacher rankings are made at once: their history vectors and texts are what one block holds.
INSTANCES_PER_BLOCK = 250_000


def rankings(cfg: PipelineConfig, layout: Layout) -> tuple[str, object, float | None]:
    """The teacher's rankings for the configured instances, made once, block of users after block (the driver
    never holds every instance's vectors): (what names them, the table, the seconds making them took, or None
    when an earlier run made them)."""
    dc, max_len = cfg.dllm2rec, cfg.sasrec.model.max_len
    teacher = ray_data.with_bulk_encoding(models.load(layout, dc.teacher), layout, cfg.embed, cfg.resources)
    path = layout.teacher_rankings(dc.teacher, teacher.manifest.version, f"{dc.positions}-top{dc.top_k}-len{max_len}")
    seconds = None
    if not storage.exists(path):
        started, made, catalogue = time.time(), 0, Catalogue(layout.read_items())
        per_user = max_len if dc.positions == "all" else 1  # the most instances a user has
        block = max(1, INSTANCES_PER_BLOCK // per_user)
        top, rule = ranking.top_on_ray(cfg.resources), teacher.manifest.history
        with storage.table_writer(path, schemas.TEACHER_RANKINGS) as out:
            for users in layout.iter_users(["user_id", "sequence", "timestamps"], block):
                ranked = instances.training_instances(users, dc.positions, max_len)
                if len(ranked[0]):  # a block of users whose training part is one item has none
                    out.write_table(dllm2rec.teacher_rankings(teacher, users, catalogue, ranked, dc.top_k, rule, top))
                    made += len(ranked[0])
            if not made:  # nothing is written: a later run would read an empty table
                raise ValueError(f"dllm2rec: no training instance to rank in {layout.users} ({dc.positions} positions)")
        seconds = round(time.time() - started, 1)
        log.info(f"teacher rankings: {made:,} instances in {seconds:.0f} s -> {path}")
    return f"{dc.teacher}/{teacher.manifest.version}", storage.read_table(path), seconds


def run(cfg: PipelineConfig, score_test: bool = True) -> TrainSummary:
    layout, dc = Layout(cfg.storage_path), cfg.dllm2rec
    users, items = layout.read_users(), layout.read_items()
    inputs = {"distillation": storage.digest(dc.model_dump(mode="json"))}
    extras = sasrec.Extras()
    if dc.ranking_weight:
        inputs["teacher"], table, _ = rankings(cfg, layout)
        extras.auxiliary = dllm2rec.RankingDistillation(table, users, dc)
    if dc.embedding_weight:
        inputs["item_embeddings"] = EmbedReport.read(layout.embeddings("report.json"), "embed").inputs_digest
        extras.item_features = schemas.to_matrix(
            targets.read_item_embeddings(layout, items, cfg.dllm2rec.item_text)["embedding"]
        )
        extras.feature_weight = dc.embedding_weight
    return sequential.fit(cfg, cfg.sasrec.model_copy(update={"run_name": dc.run_name}), extras, inputs, score_test)


if __name__ == "__main__":
    run_stage(__doc__, run, "train_dllm2rec")
