"""Score any recommender on one split of the prepared users: full-item ranking, leave-one-out.

    scored = EvalSet.build(users, items, Split.VALID)       # built once, reused every epoch
    result = evaluate(model, scored)                         # result.metrics["ndcg@10"], result.ranks

Each user's history is every item before the split's target (texts as the prepare stage wrote them);
those earlier items are masked from the ranking unless ``mask_history`` is False (the target never is).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from r2end_core import schemas, storage
from r2end_core.data.histories import Histories
from r2end_core.data.splits import Split, index_sequences, split_inputs_targets
from r2end_core.eval import metrics
from r2end_core.layout import Layout
from r2end_core.summaries import Metrics, TrainSummary

if TYPE_CHECKING:  # the models evaluate themselves while they train
    from r2end_core.models.base import Recommender


@dataclass
class EvalSet:
    """The users scored on one split, with everything their scoring needs."""

    split: Split
    user_ids: list[str]
    histories: Histories
    targets: np.ndarray  # each user's target item index
    exclude: list[np.ndarray] | None  # each user's earlier items (None: nothing masked)
    tail: np.ndarray  # [n_items] the long-tail items
    item_ids: list[str]  # the catalogue, in item_index order
    mask_history: bool

    @classmethod
    def build(cls, users: pa.Table, items: pa.Table, split: Split, mask_history: bool = True) -> EvalSet:
        """``users`` (rows of schemas.USERS, any subset) scored against every item of ``items``."""
        inputs, targets = split_inputs_targets(index_sequences(users, items), split)
        return cls(
            split=Split(split),
            user_ids=users.column("user_id").to_pylist(),
            histories=Histories.of_split(users, split),
            targets=targets,
            exclude=inputs if mask_history else None,
            tail=metrics.long_tail_mask(np.asarray(items.column("train_popularity").to_pylist())),
            item_ids=items.column("item_id").to_pylist(),
            mask_history=mask_history,
        )


@dataclass
class Evaluation:
    sums: metrics.MetricSums  # what the metrics are made of (they add up over shards of the users)
    ranks: np.ndarray  # each user's 0-based rank of the target

    @property
    def metrics(self) -> Metrics:
        return self.sums.metrics()

    def ranks_table(self, scored: EvalSet) -> pa.Table:
        """schemas.RANKS rows, for paired comparisons of models scored on the same users."""
        return pa.table(
            {
                "user_id": scored.user_ids,
                "split": [str(scored.split)] * len(scored.user_ids),
                "rank": self.ranks.astype(np.int32),
            },
            schema=schemas.RANKS,
        )


def evaluate(
    model: Recommender, scored: EvalSet, device: str = "cpu", rank: metrics.Ranker | None = None
) -> Evaluation:
    """Rank the whole catalogue for every scored user by ``model``'s scores: in this process on ``device``, or by
    ``rank`` (``metrics.Ranker``; ``ray_jobs.ranking.on_ray`` spreads the users over Ray tasks)."""
    if model.item_ids != scored.item_ids:
        raise ValueError(
            f"model {model.manifest.name} holds {len(model.item_ids)} items that are not the {len(scored.item_ids)} "
            "prepared items in their order: it was trained on another catalogue (run prepare and train again)"
        )
    rank = rank or functools.partial(metrics.rank_vectors, device=device)
    ranks, sums = rank(
        model.user_vectors(scored.histories), model.item_vectors(), scored.targets, scored.exclude, scored.tail
    )
    return Evaluation(sums, ranks)


def record(
    layout: Layout, model: Recommender, sets: list[EvalSet], rank: metrics.Ranker | None = None, **fields
) -> TrainSummary:
    """Score a saved model on ``sets`` (by ``rank``: see ``evaluate``) and write its ``metrics.json``
    (summaries.TrainSummary, with ``fields``) and ``ranks.parquet`` into its version folder. A split scored
    later (test, once selection is done) joins what was recorded."""
    name, version = model.manifest.name, model.manifest.version
    path, ranks_path = (
        layout.model_version(name, version, "metrics.json"),
        layout.model_version(name, version, "ranks.parquet"),
    )
    results = {s.split: (s, evaluate(model, s, rank=rank)) for s in sets}
    recorded = storage.read_json(path) if storage.exists(path) else {}
    summary = TrainSummary(
        **{
            **recorded,
            **fields,
            "model": name,
            "version": version,
            "kind": model.manifest.kind,
            "mask_history": sets[0].mask_history,
            **{str(split): r.metrics for split, (_, r) in results.items()},
        }
    )
    summary.write(path)
    ranks = [r.ranks_table(s) for s, r in results.values()]
    if storage.exists(ranks_path):
        kept = storage.read_table(ranks_path)
        ranks.insert(0, kept.filter(pc.invert(pc.is_in(kept["split"], pa.array([str(s) for s in results])))))
    storage.write_table(pa.concat_tables(ranks), ranks_path)
    return summary
