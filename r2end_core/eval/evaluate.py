"""Score any recommender on one split of the prepared users: full-item ranking, leave-one-out.

    scored = EvalSet.build(users, items, Split.VALID)       # built once, reused every epoch
    result = evaluate(model, scored)                         # result.metrics["ndcg@10"], result.ranks
    record(layout, model, stored_sets(layout, items, [Split.VALID, Split.TEST]))  # every user, a block at a time

Each user's history is every item before the split's target (texts as the prepare stage wrote them);
those earlier items are masked from the ranking unless ``mask_history`` is False (the target never is).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
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


USERS_PER_BLOCK = 50_000  # users a pass over all of them holds at once (their histories, vectors and ranks)


def stored_sets(
    layout: Layout, items: pa.Table, splits: list[Split], mask_history: bool = True, users: int = USERS_PER_BLOCK
) -> Iterator[EvalSet]:
    """Every prepared user scored on each of ``splits``, as EvalSets of ``users`` users read from storage one
    at a time (``record`` adds them up): the process never holds all users."""
    for split in splits:
        for block in layout.iter_users(["user_id", "sequence", "timestamps", f"{split}_history_text"], users):
            if block.num_rows:
                yield EvalSet.build(block, items, split, mask_history)


def record(
    layout: Layout, model: Recommender, sets: Iterable[EvalSet], rank: metrics.Ranker | None = None, **fields
) -> TrainSummary:
    """Score a saved model on ``sets`` (by ``rank``: see ``evaluate``) and write its ``metrics.json``
    (summaries.TrainSummary, with ``fields``) and ``ranks.parquet`` into its version folder. Sets of one split
    (blocks of its users, as ``stored_sets`` reads them) add up, and each one's ranks are written as it is
    scored. A split scored later (test, once selection is done) joins what was recorded."""
    name, version = model.manifest.name, model.manifest.version
    path, ranks_path = (
        layout.model_version(name, version, "metrics.json"),
        layout.model_version(name, version, "ranks.parquet"),
    )
    sums: dict[Split, metrics.MetricSums] = {}
    with storage.table_writer(ranks_path, schemas.RANKS) as ranks:
        for scored in sets:
            result = evaluate(model, scored, rank=rank)
            split, mask_history = scored.split, scored.mask_history
            sums[split] = sums[split] + result.sums if split in sums else result.sums
            ranks.write_table(result.ranks_table(scored))
        if not sums:
            raise ValueError(f"record: no users to score {name} on")
        if storage.exists(ranks_path):  # the splits recorded before and not now
            scored_now = pa.array([str(s) for s in sums])
            for kept in storage.iter_tables(ranks_path):
                if (kept := kept.filter(pc.invert(pc.is_in(kept["split"], scored_now)))).num_rows:
                    ranks.write_table(kept)
        # validated before the new ranks replace the old ones
        recorded = storage.read_json(path) if storage.exists(path) else {}
        summary = TrainSummary(
            **{
                **recorded,
                **fields,
                "model": name,
                "version": version,
                "kind": model.manifest.kind,
                "mask_history": mask_history,
                **{str(split): s.metrics() for split, s in sums.items()},
            }
        )
    summary.write(path)
    return summary
