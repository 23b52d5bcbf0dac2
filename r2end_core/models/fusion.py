"""Our student: SASRec that learns what R2END's text path misses, served as one inner product.

A user's score for item i is ``h_u · e_i + w · cos(u_u, v_i)``: SASRec's score over item ids plus a
learned weight ``w`` times R2END's cosine between the user's history text and the item's text. SASRec
trains with full cross-entropy on the *sum*, so it fits the residual of R2END's scores rather than the
whole preference: the text path carries the long tail (items with few interactions have little to learn
an ID embedding from), the ID path what co-purchases teach. R2END stays frozen.

    text = known_texts(r2end, texts)                                  # R2END, its users embedded once
    prior = TextPrior(instance_index, text.user_vectors(instance_histories), text.item_vectors())
    extras = FusionExtras(prior=prior, text_model=text)
    sasrec.train(users, items, cfg, history, device, extras=extras)   # validates the fused model
    model = extras.recommender(SasrecRecommender(module, item_ids, manifest))   # what is saved

Served, the user vector is ``[h_u, w · u_u]`` and the item vector ``[e_i, v_i]``: a faiss inner-product
index over the concatenation ranks exactly as the fused score. The model reads item ids and the history
text (written with R2END's history rule).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from r2end_core import storage
from r2end_core.data.histories import Histories
from r2end_core.layout import Layout
from r2end_core.models.base import ModelManifest, Recommender
from r2end_core.models.instances import InstanceIndex
from r2end_core.models.r2end.recommender import R2endRecommender
from r2end_core.models.sasrec import Batch, Extras, SasrecRecommender

FUSION_FILE = "fusion.json"


class TextPrior(nn.Module):
    """``w · (u · v_i)`` for each predicted position of a batch: R2END's user vector of that position's
    history (``vectors``, one per instance of ``index``) against every item's (``item_vectors``)."""

    def __init__(self, index: InstanceIndex, vectors: np.ndarray, item_vectors: np.ndarray, weight: float = 10.0):
        super().__init__()
        self.index = index
        self.register_buffer("vectors", torch.from_numpy(vectors), persistent=False)
        self.register_buffer("item_vectors", torch.from_numpy(item_vectors), persistent=False)
        # cosines lie in [-1, 1] and SASRec's logits span tens: the weight starts where the text can count
        self.weight = nn.Parameter(torch.tensor(float(weight)))

    def forward(self, batch: Batch, real: torch.Tensor) -> torch.Tensor:
        instance = self.index.of(batch, real)
        if (instance < 0).any():
            raise ValueError("a predicted position has no R2END user vector: build the prior on every position")
        return self.weight * (self.vectors[instance] @ self.item_vectors.T)


class FusionRecommender:
    """SASRec plus a weighted text model behind the recommender interface (see the module docstring).
    ``weight``: the learnt ``w``, or a callable giving its current value (during training)."""

    def __init__(self, sasrec: SasrecRecommender, text: Recommender, weight, manifest: ModelManifest):
        self.sasrec, self.text, self.manifest = sasrec, text, manifest
        self.item_ids = sasrec.item_ids
        self._weight = weight
        if text.item_ids != sasrec.item_ids:
            raise ValueError(f"text model {text.manifest.name} holds another catalogue than the SASRec")

    @property
    def weight(self) -> float:
        return float(self._weight() if callable(self._weight) else self._weight)

    def user_vectors(self, histories: Histories) -> np.ndarray:
        return np.concatenate([self.sasrec.user_vectors(histories), self.weight * self.text.user_vectors(histories)], 1)

    def item_vectors(self) -> np.ndarray:
        return np.concatenate([self.sasrec.item_vectors(), self.text.item_vectors()], 1)

    def new_item_vectors(self, metadata_texts: list[str]) -> np.ndarray:
        raise ValueError("the fused SASRec learns one embedding per item id: new items need a model trained with them")

    def write_files(self, folder: str) -> None:
        """The SASRec's files, and the weight with the text model it fuses (by name and version)."""
        self.sasrec.write_files(folder)
        text = self.text.manifest
        with open(os.path.join(folder, FUSION_FILE), "w") as out:
            json.dump({"weight": self.weight, "text_model": text.name, "text_version": text.version}, out)

    @classmethod
    def load(cls, layout: Layout, manifest: ModelManifest, device: str = "cpu") -> FusionRecommender:
        from r2end_core import models  # the registry imports this module

        saved = storage.read_json(storage.join(layout.model_version(manifest.name, manifest.version), FUSION_FILE))
        sasrec = SasrecRecommender.load(layout, manifest, device)
        text = models.load(layout, saved["text_model"], saved["text_version"], device)
        return cls(sasrec, text, saved["weight"], manifest)


def known_texts(model: R2endRecommender, texts: list[str]) -> R2endRecommender:
    """A copy of ``model`` whose user embeddings come from a table of ``texts``, embedded once now (with the
    model's own ``embed_users`` if it has a fast one): training and scoring look them up, and a text not
    in it is an error."""
    distinct = list(dict.fromkeys(texts))
    embeddings = dict(zip(distinct, model.user_embeddings(Histories([[] for _ in distinct], texts=distinct))))

    def lookup(histories: Histories) -> np.ndarray:
        if unknown := [t for t in histories.texts if t not in embeddings]:
            raise KeyError(f"{len(unknown)} history texts were not embedded ahead, e.g. {unknown[0][:80]!r}")
        return np.stack([embeddings[t] for t in histories.texts])

    known = copy.copy(model)
    known.embed_users = lookup
    return known


def manifest(sasrec_manifest: ModelManifest, text: ModelManifest) -> ModelManifest:
    """The fused model reads item ids and the history text, written by the text model's history rule."""
    return sasrec_manifest.model_copy(
        update={
            "kind": "fusion",
            "reads": "item_ids+text",
            "history": text.history,
            "inputs": {**sasrec_manifest.inputs, "text_model": f"{text.name}/{text.version}"},
        }
    )


@dataclass
class FusionExtras(Extras):
    """The SASRec's training extras when it fuses a text model: the ``prior`` (a ``TextPrior``) and the
    ``text_model`` validation and the saved model score with."""

    text_model: Recommender | None = None

    def recommender(self, model: SasrecRecommender) -> FusionRecommender:
        fused = manifest(model.manifest, self.text_model.manifest)
        return FusionRecommender(model, self.text_model, lambda: self.prior.weight.item(), fused)
