"""Our student: trained recommenders' scores summed, with weights chosen on validation.

A user's score for item i is ``sum_k w_k * (u_k · v_k,i)``: for example SASRec's logit (``w = 1``, which
fixes the scale) plus R2END's cosine between the history text and the item's text, and DLLM2Rec's logit.
The parts are trained on their own and stay as they are; the fusion learns only the weights, each other
part's from a grid, every combination scored by validation NDCG@10 in one pass over the users. The ID
models are strong on the items many users bought, the text path on the long tail (an item with few
interactions has little to learn an ID embedding from), so their errors differ and the sum beats each.
The best NDCG@10 leans on the first part (SASRec) and gives back some of the tail; with a floor
(``min_long_tail_ratio``) the weights are the best among those whose long-tail HR@10 on validation is at
least that multiple of the first part's alone.

    parts = [models.load(layout, "sasrec"), models.load(layout, "r2end")]
    valid = EvalSet.build(users, items, Split.VALID)
    candidates = weight_grid(len(parts), grid)
    sums = weight_search([p.user_vectors(valid.histories) for p in parts], [p.item_vectors() for p in parts],
                         valid, candidates)   # a block of users at a time: sums add up
    best = best_weights(searched(candidates, sums))   # e.g. [1.0, 10.0]
    fused = FusionRecommender(parts, best, manifest("fusion", parts, best))

Served, the user vector is ``[w_1 u_1, ..., w_K u_K]`` and the item vector ``[v_1, ..., v_K]``: a faiss
inner-product index over the concatenation ranks exactly as the fused score. A fused model's folder holds
its weights and the parts it sums (by name and version), which are loaded from their own folders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch

from r2end_core import storage
from r2end_core.eval import metrics
from r2end_core.eval.evaluate import EvalSet
from r2end_core.layout import Layout
from r2end_core.models.base import ModelManifest, Recommender, stored_path

FUSION_FILE = "fusion.json"
SELECTED_BY = "ndcg@10"


class FusionRecommender:
    """The weighted sum of ``parts``' scores behind the recommender interface (see the module docstring)."""

    def __init__(self, parts: Sequence[Recommender], weights: Sequence[float], manifest: ModelManifest):
        if len(parts) != len(weights) or len(parts) < 2:
            raise ValueError(f"a fusion sums two or more models, one weight each: got {len(parts)} and {len(weights)}")
        for part in parts[1:]:
            if part.item_ids != parts[0].item_ids:
                raise ValueError(
                    f"models {parts[0].manifest.name} and {part.manifest.name} hold different catalogues: "
                    "train every part on the same prepared data"
                )
        self.parts, self.weights, self.manifest = list(parts), [float(w) for w in weights], manifest
        self.item_ids = parts[0].item_ids

    def user_vectors(self, histories) -> np.ndarray:
        return np.concatenate([w * p.user_vectors(histories) for p, w in zip(self.parts, self.weights)], 1)

    def item_vectors(self) -> np.ndarray:
        return np.concatenate([p.item_vectors() for p in self.parts], 1)

    def new_item_vectors(self, metadata_texts: list[str]) -> np.ndarray:
        """Every part's vectors for the new items (an ID model among the parts cannot: its ValueError says so)."""
        return np.concatenate([p.new_item_vectors(metadata_texts) for p in self.parts], 1)

    def write_files(self, folder: str) -> None:
        """The weights and the parts they weigh, by name and version (the parts keep their own folders)."""
        parts = [{"name": p.manifest.name, "version": p.manifest.version} for p in self.parts]
        with open(os.path.join(folder, FUSION_FILE), "w") as out:
            json.dump({"parts": parts, "weights": self.weights}, out)

    @classmethod
    def load(cls, layout: Layout, manifest: ModelManifest, device: str = "cpu") -> FusionRecommender:
        from r2end_core import models  # the registry imports this module

        saved = storage.read_json(storage.join(layout.model_version(manifest.name, manifest.version), FUSION_FILE))
        parts = [models.load(layout, p["name"], p["version"], device) for p in saved["parts"]]
        return cls(parts, saved["weights"], manifest)


def manifest(name: str, parts: Sequence[Recommender], weights: Sequence[float]) -> ModelManifest:
    """A fused model reads what its parts read; a history is written by its text part's rule (the first
    part's when none reads text). Its inputs name each part's version."""
    kinds = [p.manifest for p in parts]
    reads = {r for m in kinds for r in m.reads.split("+")}
    text = next((m for m in kinds if "text" in m.reads), kinds[0])
    return ModelManifest(
        kind="fusion",
        name=name,
        args={"parts": [m.name for m in kinds], "weights": [float(w) for w in weights]},
        reads="item_ids+text" if reads == {"item_ids", "text"} else reads.pop(),
        similarity="dot",
        history=text.history,
        text_encoder=stored_path(text.text_encoder, text),
        item_encoder=stored_path(text.item_encoder, text),
        max_seq_length=text.max_seq_length,
        items=kinds[0].items,
        inputs={m.name: m.version for m in kinds},
    )


def weight_grid(n_parts: int, grid: Sequence[float]) -> list[tuple[float, ...]]:
    """Every weight combination: the first part's weight is 1, each other part's from ``grid``.

    >>> weight_grid(3, [0, 2])
    [(1.0, 0.0, 0.0), (1.0, 0.0, 2.0), (1.0, 2.0, 0.0), (1.0, 2.0, 2.0)]
    """
    combos = np.stack(np.meshgrid(*[np.asarray(grid, dtype=float)] * (n_parts - 1), indexing="ij"), -1)
    return [(1.0, *map(float, c)) for c in combos.reshape(-1, n_parts - 1)]


#: What ``weight_search`` sums over users for each weight combination (``searched`` makes the metrics).
SEARCH_SUMS = ("users", "hits@10", "ndcg@10", "tail_users", "tail_hits@10")


def weight_search(
    user_vectors: Sequence[np.ndarray],
    item_vectors: Sequence[np.ndarray],
    scored: EvalSet,
    candidates: Sequence[Sequence[float]],
    chunk_size: int = 1024,
) -> np.ndarray:
    """[len(candidates), len(SEARCH_SUMS)]: for each candidate, the fused model's full ranking of ``scored``'s
    users (a block of the validation users) summed: users, hits@10, NDCG@10, long-tail users and their hits@10.
    The sums of blocks of users add up to those of all of them, so the validation users can be searched a block
    at a time. Each part's scores (``user_vectors[k]`` of ``scored``'s users against ``item_vectors[k]``) are
    computed once per chunk of users (the parts' scores together at most ``metrics.CHUNK_SCORES``) and summed
    under every candidate."""
    users = [torch.from_numpy(u) for u in user_vectors]
    items = [torch.from_numpy(i) for i in item_vectors]
    n_users = len(scored.targets)
    chunk_size = max(1, min(chunk_size, metrics.CHUNK_SCORES // (len(items) * len(scored.item_ids))))  # all parts
    ranks = np.empty((len(candidates), n_users), dtype=np.int64)
    for start in range(0, n_users, chunk_size):
        rows = np.arange(start, min(start + chunk_size, n_users))
        targets = torch.as_tensor(scored.targets[rows], dtype=torch.long)
        with torch.no_grad():
            scores = [u[rows] @ i.T for u, i in zip(users, items)]
            for c, weights in enumerate(candidates):
                fused = torch.zeros_like(scores[0])
                for w, part_scores in zip(weights, scores):
                    if w:
                        fused.add_(part_scores, alpha=w)
                if scored.exclude is not None:
                    metrics.mask_excluded(fused, targets, scored.exclude[start : start + len(rows)])
                ranks[c, rows] = metrics.target_ranks(fused, targets).numpy()
    in_tail = scored.tail[scored.targets]
    return np.array(
        [
            [n_users, (r < 10).sum(), metrics.ndcg_gains(r, 10).sum(), in_tail.sum(), (r[in_tail] < 10).sum()]
            for r in ranks
        ],
        dtype=np.float64,
    ).reshape(len(candidates), len(SEARCH_SUMS))


def searched(candidates: Sequence[Sequence[float]], sums: np.ndarray) -> list[dict]:
    """``[{"weights", "hr@10", "ndcg@10", "tail_hr@10"}]``, one per candidate, from ``weight_search``'s sums
    (over every block of the validation users); ``tail_hr@10`` over the users whose target is a long-tail item.

    >>> found = searched([(1.0, 0.0), (1.0, 2.0)], np.array([[4, 1, 0.5, 2, 0], [4, 2, 1.0, 2, 1]]))
    >>> [(f["weights"], f["hr@10"], f["ndcg@10"], f["tail_hr@10"]) for f in found]
    [([1.0, 0.0], 0.25, 0.125, 0.0), ([1.0, 2.0], 0.5, 0.25, 0.5)]
    """
    return [
        {
            "weights": [float(w) for w in weights],
            "hr@10": float(hits / users),
            "ndcg@10": float(ndcg / users),
            "tail_hr@10": float(tail_hits / tail_users) if tail_users else 0.0,
        }
        for weights, (users, hits, ndcg, tail_users, tail_hits) in zip(candidates, sums)
    ]


def best_weights(searched: Sequence[dict], min_long_tail_ratio: float = 0.0) -> list[float]:
    """The candidate with the best validation NDCG@10 among those whose ``tail_hr@10`` is at least
    ``min_long_tail_ratio`` times the first part's alone (the candidate weighing every other part 0); among
    equals, the first (the grid's smaller weights). When no candidate reaches the floor, the one with the most
    long-tail HR@10 (the floor comes first; among equals, the best NDCG@10): ``floor_missed`` says so.

    >>> searched = [{"weights": [1.0, 0.0], "ndcg@10": 0.05, "tail_hr@10": 0.02},
    ...             {"weights": [1.0, 2.0], "ndcg@10": 0.06, "tail_hr@10": 0.025},
    ...             {"weights": [1.0, 8.0], "ndcg@10": 0.055, "tail_hr@10": 0.03}]
    >>> best_weights(searched), best_weights(searched, min_long_tail_ratio=1.5), best_weights(searched, 2.0)
    ([1.0, 2.0], [1.0, 8.0], [1.0, 8.0])
    """
    floor = tail_floor(searched, min_long_tail_ratio)
    eligible = [s for s in searched if s["tail_hr@10"] >= floor]
    if not eligible:
        return max(searched, key=lambda s: (s["tail_hr@10"], s[SELECTED_BY]))["weights"]
    return max(eligible, key=lambda s: s[SELECTED_BY])["weights"]


def tail_floor(searched: Sequence[dict], min_long_tail_ratio: float) -> float:
    """``min_long_tail_ratio`` times the first part's validation ``tail_hr@10`` alone; 0 without a floor."""
    if min_long_tail_ratio <= 0:
        return 0.0
    alone = [s for s in searched if not any(s["weights"][1:])]
    if not alone:
        raise ValueError("a long-tail floor needs the first part alone among the candidates: put 0 in the grid")
    return min_long_tail_ratio * alone[0]["tail_hr@10"]


def floor_missed(searched: Sequence[dict], weights: list[float], min_long_tail_ratio: float) -> str | None:
    """What to report when ``weights`` (``best_weights``'s choice) fall below the long-tail floor on
    validation, else None."""
    floor = tail_floor(searched, min_long_tail_ratio)
    chosen = next(s["tail_hr@10"] for s in searched if s["weights"] == weights)
    if chosen >= floor:
        return None
    return (
        f"no weight combination reaches {min_long_tail_ratio}x the first part's long-tail HR@10 on validation "
        f"({floor:.4f}); chose the most, {chosen:.4f} at weights {weights}"
    )
