"""One index version ready to answer: its model (text towers on the configured CPU backend), faiss index and
item map. What a Serve replica holds, and what the serving benchmark runs in process as its floor::

    served = ServedModel(Layout("artifacts/beauty-sample"), "latest", cpu_encoder="onnx-int8", threads=2)
    history = served.history(["B000052WYN", "B004Z40048"])         # as the model reads it
    ((rows, scores),) = served.search([history], [10], [served.catalogue.rows(["B000052WYN", "B004Z40048"])])
    served.items(rows, scores)      # [{"item_id": ..., "title": ..., "score": ...}, ...], best first
"""

from __future__ import annotations

import numpy as np

from r2end_core import models
from r2end_core.data.histories import Histories
from r2end_core.data.items import Catalogue
from r2end_core.layout import Layout
from r2end_core.serve import index, text_tower


class ServedModel:
    def __init__(self, layout: Layout, version: str, cpu_encoder: str, threads: int, device: str = "cpu"):
        self.faiss_index, items, self.index = index.load(layout, version)
        self.catalogue = Catalogue(items)
        self.model = models.load(layout, self.index.model, self.index.model_version, device)
        if device == "cpu":
            text_tower.with_cpu_encoder(self.model, layout, cpu_encoder, threads)
        self.manifest = self.model.manifest

    def history(self, item_ids: list[str], timestamps: list[int] | None = None, at: int | None = None) -> Histories:
        """A history of ids as the model reads it: with its text written by the model's history rule when the
        model reads text (``UnknownItemsError`` names ids the index does not hold)."""
        rule = self.manifest.history if self.manifest.reads != "item_ids" else None
        return self.catalogue.history(item_ids, timestamps, at, text_rule=rule)

    def search(self, histories: list[Histories], ks: list[int], excludes: list[set[int]]) -> list[tuple]:
        """Each history's top-k (rows, scores), best first: the batch's user vectors in one call, then faiss."""
        vectors = self.model.user_vectors(Histories.concat(histories))
        rows, scores = index.search(self.faiss_index, vectors, max(ks), excludes)
        return [(rows[i, :k], scores[i, :k]) for i, k in enumerate(ks)]

    def items(self, rows: np.ndarray, scores: np.ndarray) -> list[dict]:
        catalogue = self.catalogue
        return [
            {"item_id": catalogue.ids[r], "title": catalogue.titles[r], "score": float(s)}
            for r, s in zip(rows, scores)
            if r >= 0
        ]
