"""Training an R2END model (the project stage): what the driver prepares, the worker's epoch loop for the
projection f, and the model saved and scored at the end. ``ray_jobs/project.py`` runs it on Ray.

    run = ProjectionRun.prepare(cfg, layout, embed_users)   # user embeddings e_u, the scored users
    for state, epoch in train(run.worker_data(), cfg.project, device):    # on a Ray Train worker
        ...
    summary = run.finish(layout, state, started)             # models/<name>/<version>/, scored once on test
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from r2end_core import models, storage
from r2end_core.config import PipelineConfig, ProjectConfig
from r2end_core.data.histories import Histories
from r2end_core.data.splits import Split
from r2end_core.eval.evaluate import EvalSet, evaluate, record
from r2end_core.layout import Layout
from r2end_core.models.r2end import projection, recommender, targets
from r2end_core.summaries import EmbedReport, TrainSummary
from r2end_core.train import selection


@dataclass
class ProjectionRun:
    cfg: ProjectConfig
    scorer: recommender.R2endRecommender  # the model without f: user embeddings e_u and item embeddings e_i
    evals: list[EvalSet]  # the scored users on validation and test
    train_users: np.ndarray  # positions (in the users table) of the users whose training target trains f
    users_table: pa.Table  # the prepared users
    # sha256 of the files of the text encoder that the version copies (the distilled student: ``packed``) as
    # training began; None where it copies none (a bundled encoder, the item mean)
    encoder_files: dict[str, str] | None

    @classmethod
    def prepare(
        cls, cfg: PipelineConfig, layout: Layout, embed_users: Callable[[Histories], np.ndarray] | None
    ) -> ProjectionRun:
        """``embed_users``: histories -> e_u for a text user encoder (None: the item-mean encoder)."""
        pc, ec = cfg.project, cfg.embed
        users, items = layout.read_users(), layout.read_items()
        text_encoder, _, weights = recommender.user_encoder(cfg, layout)
        embedded = EmbedReport.read(layout.embeddings("report.json"), "embed")
        inputs = {"user_encoder": weights, "embeddings": embedded.inputs_digest}
        manifest = recommender.manifest(
            pc.run_name,
            pc.model,
            text_encoder,
            ec.encoder,
            ec.max_seq_length,
            cfg.prepare.history,
            items.num_rows,
            inputs,
        )
        scorer = recommender.R2endRecommender(
            manifest, targets.read_item_embeddings(layout, items, pc.model.item_text), None, embed_users, layout
        )
        train_pos, eval_pos = projection.user_samples(users.num_rows, pc.train_users, pc.eval_users, pc.sample_seed)
        evals = [
            EvalSet.build(users.take(eval_pos), items, split, pc.mask_history) for split in (Split.VALID, Split.TEST)
        ]
        copied = recommender.packed(manifest, layout)[1]  # hashed before any user is encoded with it
        return cls(pc, scorer, evals, train_pos, users, storage.folder_sha256(copied) if copied else None)

    @property
    def run_name(self) -> str:
        return projection.run_name(self.cfg, self.scorer.manifest.inputs, self.scorer.layout.root)

    def worker_data(self) -> dict:
        """What a worker trains f from: the training users' e_u and targets, the validation users' e_u."""
        train = self.users_table.take(self.train_users)
        return {
            "manifest": self.scorer.manifest,
            "items": self.scorer.items_table,
            "train_users": self.scorer.user_embeddings(Histories.of_split(train, Split.TRAIN)),
            "train_targets": np.array([self.scorer.row[t] for t in train.column("train_target").to_pylist()]),
            "valid": self.evals[0],
            "valid_users": self.scorer.user_embeddings(self.evals[0].histories),
        }

    def finish(self, layout: Layout, state: dict | None, started: float) -> TrainSummary:
        """Save the model (f from the best validation epoch; none without a projection) and score it."""
        f, fields = None, {}
        if state is not None:
            f = projection.Projection(self.scorer.item_embeddings.shape[1], self.cfg.model.dim)
            f.load_state_dict(state["best"]["weights"]["projection"])
            fields = selection.summary_fields(state)
        manifest, encoder_from = recommender.packed(self.scorer.manifest, layout)
        model = recommender.R2endRecommender(manifest, self.scorer.items_table, f, self.scorer.embed_users, layout)
        model.manifest = models.save(
            layout, manifest, lambda folder: model.write_files(folder, encoder_from, self.encoder_files)
        )
        return record(
            layout,
            model,
            self.evals,
            **fields,
            train_users=len(self.train_users),
            eval_users=len(self.evals[0].user_ids),
            config=self.cfg.model_dump(mode="json"),
            wall_time_s=round(time.time() - started, 1),
        )


def train(
    data: dict, cfg: ProjectConfig, device: torch.device, restored: dict | None = None
) -> Iterator[tuple[dict, dict]]:
    """The projection's epoch loop (``data``: ``ProjectionRun.worker_data``): InfoNCE + L2 on the training
    users, validation NDCG@10 each epoch; yields ``selection.epochs``' (state, record)."""
    torch.manual_seed(cfg.seed)
    scorer = recommender.R2endRecommender(
        data["manifest"], data["items"], None, lambda _: data["valid_users"], device=str(device)
    )
    items, users = torch.tensor(scorer.item_embeddings, device=device), torch.tensor(data["train_users"], device=device)
    positives = torch.tensor(data["train_targets"])  # indices stay on the CPU, with the sampler
    f = scorer.projection = projection.Projection(items.shape[1], cfg.model.dim).to(device)
    optimizer, generator = (
        torch.optim.Adam(f.parameters(), lr=cfg.learning_rate),
        torch.Generator().manual_seed(cfg.seed),
    )
    if restored:
        f.load_state_dict(restored["current"]["projection"])
        optimizer.load_state_dict(restored["current"]["optimizer"])  # moves the optimizer state to f's device
        generator.set_state(restored["current"]["generator"])
    yield from selection.epochs(
        restored,
        cfg.epochs,
        lambda epoch: projection.train_epoch(f, optimizer, users, positives, items, cfg, generator),
        lambda: evaluate(scorer, data["valid"], str(device)).metrics,
        lambda: {"projection": f.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state()},
    )
