"""Recommendation at request time, no LLM: history -> text -> user encoder -> f -> top-k search.

The parts serving composes (``serve_app`` puts the user tower and the index in their own
deployments), usable alone::

    faiss_index, items, manifest = index.load(root, "latest")
    catalogue = Catalogue(items)                    # the version's items (index.INDEX_ITEMS_SCHEMA)
    text = catalogue.history_text(history)          # or the client's own history text
    user_tower = UserTower.load(manifest["model"], root)  # the student (or Enc) and the projection f
    rows, scores = index.search(faiss_index, user_tower([text]), k=10, exclude=[catalogue.rows(history)])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from r2end_core import data, encoders, storage
from r2end_core.projection import Projection, unit_vectors


class UnknownItemsError(KeyError):
    """Item ids the catalogue does not hold (``.ids``)."""

    def __init__(self, ids: list[str]):
        super().__init__(ids)
        self.ids = ids


class Catalogue:
    """The indexed items: ids <-> faiss rows, titles, and the metadata text histories are written from.

    >>> c = Catalogue(pa.table({"item_id": ["B1", "B2"], "title": ["Balm", "Soap"], "metadata_text": ["Balm", "Soap"]}))
    >>> c.history_text(["B2", "B1"])
    '1. Soap\\n2. Balm'
    >>> c.history_text(["B1", "B2"], timestamps=[0, 200 * 86_400])  # only B2 is within 60 days of the last
    '1. 1970-07-20: Soap'
    """

    def __init__(self, items: pa.Table):
        self.ids = items.column("item_id").to_pylist()
        self.titles = items.column("title").to_pylist()
        self.metadata_text = dict(zip(self.ids, items.column("metadata_text").to_pylist()))
        self.row = {item_id: r for r, item_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def unknown(self, item_ids: list[str]) -> list[str]:
        return [i for i in dict.fromkeys(item_ids) if i not in self.row]

    def rows(self, item_ids: list[str]) -> set[int]:
        if missing := self.unknown(item_ids):
            raise UnknownItemsError(missing)
        return {self.row[i] for i in item_ids}

    def history_text(self, item_ids: list[str], timestamps: list[int] | None = None, at: int | None = None,
                     max_items: int = 8, window_days: float = 60) -> str:
        """The history text H_u, selected the way the prepare stage selects training histories.

        With timestamps, the prediction time ``at`` (default: the last timestamp) sets the window:
        up to ``max_items`` items in the ``window_days`` before it, else the latest one. Without,
        the last ``max_items`` ids in the order given (oldest first).
        """
        if missing := self.unknown(item_ids):
            raise UnknownItemsError(missing)
        if timestamps is None:
            positions = data.select_history(None, len(item_ids), max_items, window_days)
            return data.history_text([item_ids[p] for p in positions], None, self.metadata_text)
        order = sorted(range(len(item_ids)), key=lambda p: timestamps[p])
        ids, times = [item_ids[p] for p in order], [timestamps[p] for p in order]
        positions = data.select_history([*times, times[-1] if at is None else at], len(ids), max_items, window_days)
        return data.history_text([ids[p] for p in positions], [times[p] for p in positions], self.metadata_text)


@dataclass
class UserTower:
    """History text -> the student (or Enc) -> f -> unit vector, the query of the item index."""

    encoder: object  # SentenceTransformer
    projection: Projection | None
    device: str = "cpu"

    @classmethod
    def load(cls, model: dict, root: str, device: str = "cpu") -> "UserTower":
        """From an index manifest's ``model`` (see ``r2end_core.index``; paths relative to ``root``)."""
        encoder = encoders.load_encoder(model_path(model["user_model"], root), device, model["max_seq_length"], keep="end")
        f = load_projection(model_path(model["projection"], root)).to(device) if model["projection"] else None
        return cls(encoder, f, device)

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """Unit-length f(e) (or e itself without a projection)."""
        return unit_vectors(torch.from_numpy(embeddings).to(self.device), self.projection).cpu().numpy()

    #: Texts per forward pass. sentence-transformers sorts a call's texts by length before cutting
    #: them into passes, so a served batch of 32 pads far less in passes of 8 than in one pass
    #: (on 2 CPU cores: 38 vs 20 texts/s; one text at a time: 32 texts/s).
    pass_size: int = 8

    def __call__(self, history_texts: list[str]) -> np.ndarray:
        """``[len(history_texts), dim]`` unit query vectors."""
        return self.project(encoders.encode(self.encoder, history_texts, batch_size=self.pass_size))


def model_path(path: str, root: str) -> str:
    """A manifest's model path: bundled names, URIs and absolute paths as they are; the rest under ``root``."""
    if path.startswith("bundled:") or storage.is_uri(path) or path.startswith("/"):
        return path
    return storage.join(root, path)


def load_projection(path: str) -> Projection:
    """The projection f saved by the project stage (``<run>/projection.pt``)."""
    with storage.open_input(path) as f:
        saved = torch.load(f, map_location="cpu", weights_only=False)
    projection = Projection(saved["in_dim"], saved["out_dim"])
    projection.load_state_dict(saved["projection"])
    return projection
