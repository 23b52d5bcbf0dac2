"""DLLM2Rec (Cui et al., RecSys 2024) with r2end as the teacher: a SASRec student that learns from a teacher
recommender's rankings and from r2end's item embeddings, with no LLM at training or serving time.

    instances = training_instances(users, "last", max_len)        # which predictions (models.instances)
    table = teacher_rankings(teacher, users, Catalogue(items), instances, k, rule)  # schemas.TEACHER_RANKINGS
    extras = sasrec.Extras(item_embeddings, cfg.embedding_weight,
                           RankingDistillation(table, users, cfg))
    sasrec.train(users, items, sasrec_cfg, history, device, extras=extras)

- **Ranking distillation.** Each teacher top-K item of a training instance is an extra target of that
  instance's prediction, weighted by importance: the item's teacher rank (``exp(-r / beta)``, normalised over
  the K), the teacher's confidence on the instance (``exp(-d / beta)``, d the squared distance between the
  teacher's user vector and the true next item's vector: the paper's confidence, with r2end's user vector
  in the place of the LLM's generated description) and consistency (1 when the student also ranks the
  item in its own top-K). The paper's term is ``-w log sigmoid(score)``; on a full-softmax student, whose
  scores have no fixed zero, the same weights go on ``-w log softmax(scores)``, a soft-label
  cross-entropy beside the hard one.
- **Embedding distillation**: ``sasrec.SASRec``'s item features (the learned map of Enc(M + D), added to
  the ID embedding, which is the offset that learns the collaborative signal).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from r2end_core import schemas
from r2end_core.config import Dllm2recConfig, HistoryRule
from r2end_core.data.items import Catalogue
from r2end_core.eval import metrics
from r2end_core.models.base import Recommender
from r2end_core.models.instances import InstanceIndex, instance_histories
from r2end_core.models.sasrec import AuxiliaryLoss, Batch, StepOutputs


def teacher_rankings(
    teacher: Recommender,
    users: pa.Table,
    catalogue: Catalogue,
    instances: tuple[np.ndarray, np.ndarray],
    k: int,
    rule: HistoryRule,
    top: metrics.TopK = metrics.top_items,
) -> pa.Table:
    """The teacher's top-``k`` items (history items excluded) for each instance of ``users`` (all of them, or a
    block: the rows of a block's rankings do not depend on the other users), as schemas.TEACHER_RANKINGS.

    ``teacher``: any model of the recommender interface over the prepared items (``catalogue``, built once
    for every block); ``rule``: the history rule its texts are written with (its manifest's); ``top``: what
    finds each instance's best items (in this process, or ``ray_jobs.ranking.top_on_ray``).
    """
    if teacher.item_ids != catalogue.ids:
        raise ValueError(f"teacher {teacher.manifest.name} was trained on another catalogue: train it again")
    rows, positions = instances
    sequences = [np.array([catalogue.row[i] for i in s], dtype=np.int64) for s in users.column("sequence").to_pylist()]
    histories = instance_histories(users, catalogue, rows, positions, rule)
    user_vectors = teacher.user_vectors(histories)  # one call: a text teacher encodes in bulk
    item_vectors = teacher.item_vectors()
    targets = np.array([int(sequences[r][p]) for r, p in zip(rows.tolist(), positions.tolist())], dtype=np.int64)
    exclude = [sequences[r][:p] for r, p in zip(rows.tolist(), positions.tolist())]
    found_items, found_scores = top(user_vectors, item_vectors, k, exclude)
    user_ids = users.column("user_id").to_pylist()
    columns = {
        "user_id": [user_ids[r] for r in rows.tolist()],
        "position": positions.tolist(),
        "items": found_items.tolist(),
        "scores": found_scores.tolist(),
        "target_distance": ((user_vectors - item_vectors[targets]) ** 2).sum(1).tolist(),
    }
    return pa.Table.from_pydict(columns, schema=schemas.TEACHER_RANKINGS)


class RankingDistillation(AuxiliaryLoss):
    """Importance-aware ranking distillation (see the module docstring) as SASRec's auxiliary loss.

    ``rankings``: schemas.TEACHER_RANKINGS for some of ``users``' training instances (rows of ``users``, in
    the order the student trains on); each predicted position with a ranking adds its weighted term.
    Returns ``ranking_weight`` times the summed terms per predicted position of the batch.
    """

    name = "rank_distill"

    def __init__(self, rankings: pa.Table, users: pa.Table, cfg: Dllm2recConfig):
        super().__init__()
        self.cfg = cfg
        positions = rankings.column("position").to_numpy()
        self.index = InstanceIndex(users, rankings.column("user_id").to_pylist(), positions)
        k = len(rankings.column("items")[0])
        self.register_buffer("items", torch.tensor(rankings.column("items").to_pylist()), persistent=False)
        distance = torch.tensor(rankings.column("target_distance").to_numpy(), dtype=torch.float32)
        self.register_buffer("confidence", torch.exp(-distance / cfg.beta), persistent=False)
        position = torch.exp(-torch.arange(1, k + 1, dtype=torch.float32) / cfg.beta)
        self.register_buffer("position_weights", position / position.sum(), persistent=False)

    def importance(self, ranking: torch.Tensor, student_top: torch.Tensor) -> torch.Tensor:
        """[instances, K] weights: teacher rank, teacher confidence, agreement with the student's top-K items
        (``student_top``: [instances, K])."""
        items = self.items[ranking]
        consistent = (items[:, :, None] == student_top[:, None, :]).any(-1).float()
        return (
            self.cfg.gamma_position * self.position_weights[None, :]
            + self.cfg.gamma_confidence * self.confidence[ranking][:, None]
            + self.cfg.gamma_consistency * consistent
        )

    def forward(self, batch: Batch, outputs: StepOutputs, epoch: int) -> tuple[torch.Tensor, float]:
        ranking = self.index.of(batch, outputs.real)
        has = ranking >= 0
        if not has.any():
            return torch.zeros((), device=outputs.hidden.device), 0.0
        rows = has.nonzero().squeeze(1)
        ranking = ranking[rows]
        weights = self.importance(ranking, outputs.scores.top(rows, self.items.shape[1]))
        log_p = outputs.scores.log_probs_of(rows, self.items[ranking])
        term = -(weights * log_p).sum() / len(has)
        return self.cfg.ranking_weight * term, term.item()
