"""User-profile distillation on Ray Train: SASRec whose hidden states learn each user's profile embedding.

    ray job submit --working-dir . -- python -m ray_jobs.train_profile --config configs/beauty-sample.yaml

The profile embedding (``profile.source``) is the teacher's generated profile or R2END's oracle target
(both embedded by the embed stage), or the distilled R2END student's embedding of the user's training
history (encoded here on Ray Data, for every user). The student trains like ``train_sasrec`` (its
``sasrec`` settings) plus the distillation term. Writes ``models/<profile.run_name>/<version>/``, a SASRec
the Serve app can serve. The logic: ``r2end_core.models.profile``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from r2end_core import schemas, storage
from r2end_core.config import PipelineConfig, ProfileSource
from r2end_core.layout import Layout
from r2end_core.models import profile, sasrec
from r2end_core.summaries import DistillSummary, EmbedReport, TrainSummary
from ray_jobs import ray_data, sequential
from ray_jobs.runtime import run_stage


def profile_embeddings(cfg: PipelineConfig, layout: Layout, users: pa.Table) -> tuple[str, pa.Table]:
    """(what names them, a table of user_id and embedding) for the configured source."""
    source = cfg.profile.source
    if source == ProfileSource.STUDENT:
        student = DistillSummary.read(layout.student(cfg.profile.student_run, "metrics.json"), "distill")
        model = layout.student(cfg.profile.student_run, "model")
        encode = ray_data.history_text_encoder(layout, model, student.weights_id, cfg.embed, cfg.resources)
        # the history before the validation target: the training part, as a generated profile reads it
        vectors = encode(users.column("valid_history_text").to_pylist())
        return f"student/{student.weights_id}", pa.table(
            {"user_id": users["user_id"], "embedding": schemas.vector_column(vectors)}
        )
    name = "profile" if source == ProfileSource.GENERATED else "oracle"
    embedded = EmbedReport.read(layout.embeddings("report.json"), "embed")
    targets = storage.read_table(layout.embeddings("targets.parquet"))
    table = targets.filter(pc.equal(targets["target"], name)).select(["user_id", "embedding"])
    if not table.num_rows:
        raise ValueError(
            f"profile.source {source}: the embed stage's targets hold no '{name}' rows (run generate with kind "
            f"'{name}', or set embed.teacher_outputs to a folder with {name}.parquet, then embed)"
        )
    return f"{name}/{embedded.inputs_digest}", table


def run(cfg: PipelineConfig, score_test: bool = True) -> TrainSummary:
    layout, settings = Layout(cfg.storage_path), cfg.profile
    users = layout.read_users()
    named, table = profile_embeddings(cfg, layout, users)
    profiles, has = profile.profile_matrix(users, table)
    loss = profile.ProfileDistillation(profiles, has, cfg.sasrec.model.hidden_size, settings)
    inputs = {"profiles": named, "distillation": storage.digest(settings.model_dump(mode="json"))}
    sc = cfg.sasrec.model_copy(update={"run_name": settings.run_name})
    return sequential.fit(cfg, sc, sasrec.Extras(auxiliary=loss), inputs, score_test)


if __name__ == "__main__":
    run_stage(__doc__, run, "train_profile")
