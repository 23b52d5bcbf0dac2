"""R2END behind the recommender interface: history -> user encoder -> f -> unit vector; items -> f(Enc(M + D)).

The user encoder is the distilled student (or Enc, or the mean of the history items' embeddings: the
ablations), named in the manifest; f is the projection (none: ablation 5). No LLM at request time.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

from r2end_core import schemas, storage
from r2end_core.config import HistoryRule, PipelineConfig, R2endArgs, UserEncoder
from r2end_core.data.histories import Histories
from r2end_core.data.items import UnknownItemsError
from r2end_core.layout import Layout
from r2end_core.models.base import IN_VERSION, ModelManifest, model_path
from r2end_core.models.r2end.projection import Projection, unit_vectors
from r2end_core.summaries import DistillSummary
from r2end_core.text import encoders

PROJECTION_FILE = "projection.pt"
ITEMS_FILE = "items.parquet"  # schemas.MODEL_ITEM_EMBEDDINGS: the item embeddings f projects

#: Texts per forward pass of the served user encoder. sentence-transformers sorts a call's texts by
#: length before cutting them into passes, so a served batch of 32 pads far less in passes of 8 than in
#: one pass (on 2 CPU cores: 38 vs 20 texts/s; one text at a time: 32 texts/s).
PASS_SIZE = 8


def manifest(
    name: str,
    args: R2endArgs,
    text_encoder: str | None,
    item_encoder: str,
    max_seq_length: int,
    history: HistoryRule,
    n_items: int,
    inputs: dict[str, str],
) -> ModelManifest:
    """``text_encoder``: the student (a path under the storage path) or Enc; None for the item-mean encoder."""
    return ModelManifest(
        kind="r2end",
        name=name,
        args=args.model_dump(mode="json"),
        reads="item_ids" if args.user_encoder == UserEncoder.ITEM_MEAN else "text",
        similarity="cosine",
        history=history,
        text_encoder=text_encoder,
        item_encoder=item_encoder,
        max_seq_length=max_seq_length,
        items=n_items,
        inputs=inputs,
    )


ENCODER_DIR = "encoder"


def packed(manifest: ModelManifest, layout: Layout) -> tuple[ModelManifest, str | None]:
    """(the manifest to save, the folder ``write_files`` copies into the version): a text encoder under the
    storage path (the distilled student, which the next distillation under its run name replaces) is copied into
    the version as ``./encoder``; a bundled encoder (checked by its digest) is named as it is."""
    source = manifest.text_encoder
    if not source or source.startswith(("bundled:", IN_VERSION)):
        return manifest, None
    return manifest.model_copy(update={"text_encoder": IN_VERSION + ENCODER_DIR}), model_path(source, layout)


def user_encoder(cfg: PipelineConfig, layout: Layout) -> tuple[str | None, str | None, str]:
    """Where a project run's user embeddings come from: (the manifest's text encoder, the folder or name to
    encode with, what names its weights). The item-mean encoder reads item embeddings: no text encoder."""
    pc = cfg.project
    if pc.model.user_encoder == UserEncoder.ITEM_MEAN:
        return None, None, "item_mean"
    if pc.model.user_encoder == UserEncoder.STUDENT:
        student = DistillSummary.read(layout.student(pc.student_run, "metrics.json"), "distill")
        return f"students/{pc.student_run}/model", layout.student(pc.student_run, "model"), student.weights_id
    return cfg.embed.encoder, cfg.embed.encoder, cfg.embed.encoder


class R2endRecommender:
    """``items``: schemas.MODEL_ITEM_EMBEDDINGS (or ITEM_EMBEDDINGS). ``embed_users``: histories -> the user
    embeddings e_u, for a caller that has a faster way (Ray Data, a cache, vectors computed already); by
    default the manifest's user encoder runs in this process."""

    def __init__(
        self,
        manifest: ModelManifest,
        items: pa.Table,
        projection: Projection | None,
        embed_users: Callable[[Histories], np.ndarray] | None = None,
        layout: Layout | None = None,
        device: str = "cpu",
    ):
        self.manifest, self.args, self.items_table = manifest, R2endArgs(**manifest.args), items
        self.item_ids = items.column("item_id").to_pylist()
        self.item_embeddings = schemas.to_matrix(items["embedding"])
        self.row = {item_id: r for r, item_id in enumerate(self.item_ids)}
        self.projection, self.device, self.layout = projection, device, layout
        self.embed_users = embed_users

    def encoder(self, which: str):
        """The manifest's ``text_encoder`` or ``item_encoder``, loaded once."""
        loaded = self.__dict__.setdefault("_encoders", {})
        if which not in loaded:
            source = model_path(getattr(self.manifest, which), self.layout, self.manifest)
            keep = "end" if which == "text_encoder" else "start"  # a history text lists the oldest first
            loaded[which] = encoders.load_encoder(source, self.device, self.manifest.max_seq_length, keep=keep)
        return loaded[which]

    def user_embeddings(self, histories: Histories) -> np.ndarray:
        """e_u before f, one row per history."""
        if self.manifest.reads == "text" and histories.texts is None:
            raise ValueError(f"model {self.manifest.name} reads history texts: Histories.texts is missing")
        if self.embed_users is not None:
            return self.embed_users(histories)
        if self.args.user_encoder == UserEncoder.ITEM_MEAN:
            recent = histories.recent_ids(self.manifest.history)
            if unknown := [i for ids in recent for i in ids if i not in self.row]:
                raise UnknownItemsError(list(dict.fromkeys(unknown)))
            return mean_item_embeddings(
                [np.array([self.row[i] for i in ids], dtype=np.int64) for ids in recent], self.item_embeddings
            )
        return encoders.encode(self.encoder("text_encoder"), histories.texts, batch_size=PASS_SIZE)

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """Unit-length f(e) (or e itself without a projection)."""
        return unit_vectors(torch.from_numpy(embeddings).to(self.device), self.projection).cpu().numpy()

    def user_vectors(self, histories: Histories) -> np.ndarray:
        return self.project(self.user_embeddings(histories))

    def item_vectors(self) -> np.ndarray:
        return self.project(self.item_embeddings)

    def new_item_vectors(self, metadata_texts: list[str]) -> np.ndarray:
        """Enc(M_i) through f: a new item has no teacher description, as the catalogue's items without one."""
        return self.project(encoders.encode(self.encoder("item_encoder"), metadata_texts))

    def write_files(
        self, folder: str, encoder_from: str | None = None, encoder_files: dict[str, str] | None = None
    ) -> None:
        """The version folder's files (``models.base.save``): the item embeddings, f if any, and the text
        encoder copied from ``encoder_from`` (``packed``), so the version holds everything it serves.
        ``encoder_files``: the sha256 of that encoder's files as the model was trained with it
        (``storage.folder_sha256``); a copy with other files (the next distillation under its run name replaced
        them meanwhile, or is writing them) is refused, and nothing is saved."""
        if encoder_from:
            encoder = os.path.join(folder, ENCODER_DIR)
            storage.copy_folder_to_local(encoder_from, encoder)
            if encoder_files is not None and (copied := storage.folder_sha256(encoder)) != encoder_files:
                changed = sorted(set(copied.items()) ^ set(encoder_files.items()))[0][0]
                raise storage.DamagedVersionError(
                    f"{encoder_from}: {changed} is not the file this model was trained with (the encoder changed "
                    "since training began: a distillation under the same run name?); nothing was saved: run "
                    "project again"
                )
        items = pa.table(
            {"item_id": self.item_ids, "embedding": schemas.vector_column(self.item_embeddings)},
            schema=schemas.MODEL_ITEM_EMBEDDINGS,
        )
        storage.write_table(items, os.path.join(folder, ITEMS_FILE))
        if self.projection is not None:
            torch.save(
                {
                    "in_dim": self.projection.linear.in_features,
                    "out_dim": self.projection.linear.out_features,
                    "state": self.projection.state_dict(),
                },
                os.path.join(folder, PROJECTION_FILE),
            )

    @classmethod
    def load(cls, layout: Layout, manifest: ModelManifest, device: str = "cpu") -> R2endRecommender:
        folder = layout.model_version(manifest.name, manifest.version)
        projection = None
        if R2endArgs(**manifest.args).use_projection:
            with storage.open_input(storage.join(folder, PROJECTION_FILE)) as src:
                saved = torch.load(src, map_location="cpu", weights_only=True)
            projection = Projection(saved["in_dim"], saved["out_dim"])
            projection.load_state_dict(saved["state"])
            projection = projection.to(device).eval()
        items = storage.read_table(storage.join(folder, ITEMS_FILE))
        return cls(manifest, items, projection, layout=layout, device=device)


def mean_item_embeddings(histories: list[np.ndarray], item_embeddings: np.ndarray) -> np.ndarray:
    """Ablation 4's user embedding: the mean of the history items' embeddings, unit length (zeros for
    an empty history: nothing to go on, so every item scores the same).

    >>> mean_item_embeddings([np.array([0, 1]), np.array([], int)], np.array([[1.0, 0.0], [0.0, 1.0]])).round(3)
    array([[0.707, 0.707],
           [0.   , 0.   ]], dtype=float32)
    """
    dim = item_embeddings.shape[1]
    means = np.stack([item_embeddings[h].mean(0) if len(h) else np.zeros(dim) for h in histories]).astype(np.float32)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)
