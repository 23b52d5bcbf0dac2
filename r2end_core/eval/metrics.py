"""Full-item ranking metrics: HR@K, NDCG@K, long-tail HR/NDCG and catalogue coverage.

Every user is ranked against the whole catalogue (no sampled candidates). Scores are computed
in chunks of users, so memory stays at ``chunk_size x n_items`` floats (at most ``CHUNK_SCORES``)
whatever the user count.

Ties are counted against the target (pessimistic rank): a model that scores everything equal
gets no credit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

DEFAULT_KS = (5, 10, 20)
CHUNK_SCORES = 1 << 24  # most scores a chunk holds (64 MB of floats): fewer users per chunk on a large catalogue
DEFAULT_CHUNK = 1024  # users scored at once on a catalogue small enough

ScoreFn = Callable[[np.ndarray], torch.Tensor]
"""Maps an array of user positions (rows of the evaluation set) to a [len, n_items] score tensor."""


def long_tail_mask(popularity: np.ndarray, head_fraction: float = 0.2) -> np.ndarray:
    """True for the least popular ``1 - head_fraction`` of items (ties broken by item index).

    >>> long_tail_mask(np.array([5, 0, 9, 1, 3]), head_fraction=0.2).tolist()
    [True, True, False, True, True]
    """
    n_items = len(popularity)
    n_head = int(round(head_fraction * n_items))
    order = np.lexsort((np.arange(n_items), -np.asarray(popularity)))  # most popular first
    tail = np.ones(n_items, dtype=bool)
    tail[order[:n_head]] = False
    return tail


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target among all items; ties count against the target.

    >>> target_ranks(torch.tensor([[0.1, 0.9, 0.5], [1.0, 1.0, 0.0]]), torch.tensor([2, 0])).tolist()
    [1, 1]
    """
    target_scores = scores[torch.arange(scores.shape[0]), targets]
    return (scores >= target_scores[:, None]).sum(1) - 1


def mask_excluded(scores: torch.Tensor, targets: torch.Tensor, exclude: Sequence[np.ndarray]) -> torch.Tensor:
    """Set each row's excluded items to -inf in place, except the row's target.

    >>> s = mask_excluded(torch.zeros(2, 3), torch.tensor([0, 1]), [np.array([0, 2]), np.array([], dtype=int)])
    >>> s.tolist()
    [[0.0, 0.0, -inf], [0.0, 0.0, 0.0]]
    """
    lengths = [len(items) for items in exclude]
    if sum(lengths):
        rows = torch.as_tensor(np.repeat(np.arange(len(exclude)), lengths))
        cols = torch.as_tensor(np.concatenate([np.asarray(i, dtype=np.int64) for i in exclude]))
        keep = cols != targets[rows]
        scores[rows[keep], cols[keep]] = float("-inf")
    return scores


class Ranking(NamedTuple):
    """Every user's full ranking, reduced to what the metrics need."""

    ranks: np.ndarray  #: [n_users] 0-based rank of the user's target
    top: np.ndarray  #: [n_users, max_k] the top-ranked item indices, best first


def rank_users(
    score_fn: ScoreFn,
    targets: np.ndarray,
    n_items: int,
    exclude: Sequence[np.ndarray] | None = None,
    max_k: int = max(DEFAULT_KS),
    chunk_size: int = DEFAULT_CHUNK,
) -> Ranking:
    """Rank every item for every user.

    Args:
        score_fn: user positions -> [len, n_items] scores (higher is better).
        targets: [n_users] item index of each user's held-out item.
        exclude: per user, item indices removed from the ranking (None: nothing masked).
        max_k: how many top items to keep per user (for coverage).
        chunk_size: most users scored at once (fewer when ``chunk_size x n_items`` passes ``CHUNK_SCORES``).

    >>> scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    >>> ranking = rank_users(lambda rows: scores[torch.as_tensor(rows)], np.array([2, 1]), 3)
    >>> ranking.ranks.tolist(), ranking.top[:, 0].tolist()
    ([1, 0], [0, 1])
    """
    n_users = len(targets)
    if n_users == 0:
        raise ValueError("ranking needs at least one user")
    max_k = min(max_k, n_items)
    chunk_size = max(1, min(chunk_size, CHUNK_SCORES // n_items))
    ranks = np.empty(n_users, dtype=np.int64)
    top = np.empty((n_users, max_k), dtype=np.int64)
    for start in range(0, n_users, chunk_size):
        rows = np.arange(start, min(start + chunk_size, n_users))
        with torch.no_grad():
            scores = score_fn(rows).float()
        chunk_targets = torch.as_tensor(targets[rows], dtype=torch.long)
        if exclude is not None:
            mask_excluded(scores, chunk_targets, exclude[start : start + len(rows)])
        ranks[rows] = target_ranks(scores, chunk_targets).numpy()
        top[rows] = torch.topk(scores, max_k, dim=1).indices.numpy()
    return Ranking(ranks, top)


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k with one relevant item: 1 / log2(rank + 2) inside the top k, else 0.

    >>> ndcg_gains(np.array([0, 2, 10]), k=10).round(3).tolist()
    [1.0, 0.5, 0.0]
    """
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


@dataclass
class MetricSums:
    """What the ranking metrics are made of, summed over some users: the sums of shards of the users add up
    (``+``) to those of all of them, so users can be ranked in parts (Ray tasks) and ``metrics()`` is the same.
    ``covered[k]``: [n_items] whether some user's top k holds the item; the tail fields count the users whose
    target is a long-tail item (None: no tail given)."""

    n_items: int
    ks: tuple[int, ...]
    users: int
    hits: dict[int, int]
    ndcg: dict[int, float]
    covered: dict[int, np.ndarray]
    tail_users: int | None = None
    tail_hits: dict[int, int] | None = None
    tail_ndcg: dict[int, float] | None = None

    @classmethod
    def of(
        cls,
        ranking: Ranking,
        targets: np.ndarray,
        n_items: int,
        tail_items: np.ndarray | None = None,
        ks: Sequence[int] = DEFAULT_KS,
    ) -> MetricSums:
        ks, ranks = tuple(sorted(ks)), ranking.ranks
        covered = {}
        for k in ks:
            covered[k] = np.zeros(n_items, dtype=bool)
            covered[k][ranking.top[:, :k].ravel()] = True
        sums = cls(
            n_items,
            ks,
            len(ranks),
            {k: int((ranks < k).sum()) for k in ks},
            {k: float(ndcg_gains(ranks, k).sum()) for k in ks},
            covered,
        )
        if tail_items is not None:
            tail = ranks[tail_items[targets]]
            sums.tail_users = len(tail)
            sums.tail_hits = {k: int((tail < k).sum()) for k in ks}
            sums.tail_ndcg = {k: float(ndcg_gains(tail, k).sum()) for k in ks}
        return sums

    def __add__(self, other: MetricSums) -> MetricSums:
        if (self.n_items, self.ks, self.tail_users is None) != (other.n_items, other.ks, other.tail_users is None):
            raise ValueError("only sums over the same catalogue, ks and tail rule add up")
        add = lambda a, b: None if a is None else {k: a[k] + b[k] for k in self.ks}  # noqa: E731
        return MetricSums(
            self.n_items,
            self.ks,
            self.users + other.users,
            add(self.hits, other.hits),
            add(self.ndcg, other.ndcg),
            {k: self.covered[k] | other.covered[k] for k in self.ks},
            None if self.tail_users is None else self.tail_users + other.tail_users,
            add(self.tail_hits, other.tail_hits),
            add(self.tail_ndcg, other.tail_ndcg),
        )

    def metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {"users": self.users}
        for k in self.ks:
            metrics[f"hr@{k}"] = self.hits[k] / self.users
            metrics[f"ndcg@{k}"] = self.ndcg[k] / self.users
            metrics[f"coverage@{k}"] = int(self.covered[k].sum()) / self.n_items
        if self.tail_users is not None:
            metrics["tail_users"] = self.tail_users
            for k in self.ks:
                metrics[f"tail_hr@{k}"] = self.tail_hits[k] / self.tail_users if self.tail_users else 0.0
                metrics[f"tail_ndcg@{k}"] = self.tail_ndcg[k] / self.tail_users if self.tail_users else 0.0
        return metrics


Ranker = Callable[
    [np.ndarray, np.ndarray, np.ndarray, Sequence[np.ndarray] | None, np.ndarray | None], tuple[np.ndarray, MetricSums]
]
"""(user vectors, item vectors, targets, exclude, tail items) -> (each user's target rank, ``MetricSums``):
``rank_vectors`` in this process, or one that spreads the users over workers (``ray_jobs.ranking``)."""


def rank_vectors(
    users: np.ndarray,
    items: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[np.ndarray] | None,
    tail_items: np.ndarray | None,
    device: str = "cpu",
) -> tuple[np.ndarray, MetricSums]:
    """Rank every item for every user by the inner product ``users @ items.T`` (``rank_users``, chunked).

    >>> ranks, sums = rank_vectors(np.eye(2, dtype=np.float32), np.eye(3, 2, dtype=np.float32), np.array([0, 2]),
    ...                            None, None)
    >>> ranks.tolist(), sums.metrics()["hr@5"]
    ([0, 2], 1.0)
    """
    u, it = torch.from_numpy(users).to(device), torch.from_numpy(items).to(device)
    ranking = rank_users(
        lambda rows: (u[torch.as_tensor(rows, device=device)] @ it.T).cpu(), targets, len(items), exclude
    )
    return ranking.ranks, MetricSums.of(ranking, targets, len(items), tail_items)


TopK = Callable[[np.ndarray, np.ndarray, int, Sequence[np.ndarray] | None], tuple[np.ndarray, np.ndarray]]
"""(user vectors, item vectors, k, exclude) -> ([users, k] best items, their scores): ``top_items`` in this
process, or spread over workers (``ray_jobs.ranking.top_on_ray``)."""


def top_items(
    users: np.ndarray,
    items: np.ndarray,
    k: int,
    exclude: Sequence[np.ndarray] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's ``k`` best items by inner product, best first, never one of its ``exclude``; scored in chunks
    of users holding at most ``CHUNK_SCORES`` scores.

    >>> rows, scores = top_items(np.eye(2, dtype=np.float32), np.eye(3, 2, dtype=np.float32), 2, [np.array([0]), []])
    >>> rows.tolist(), scores.tolist()
    ([[1, 2], [1, 0]], [[0.0, 0.0], [1.0, 0.0]])
    """
    u, it = torch.from_numpy(users), torch.from_numpy(items)
    chunk_size = max(1, min(chunk_size, CHUNK_SCORES // len(items)))
    found = np.empty((len(users), k), dtype=np.int64), np.empty((len(users), k), dtype=np.float32)
    none = torch.full((chunk_size,), -1)  # no target to keep: every excluded item is masked
    for start in range(0, len(users), chunk_size):
        rows = slice(start, min(start + chunk_size, len(users)))
        with torch.no_grad():
            scores = u[rows] @ it.T
        if exclude is not None:
            mask_excluded(scores, none[: len(scores)], exclude[rows])
        top = scores.topk(k, dim=1)
        found[0][rows], found[1][rows] = top.indices.numpy(), top.values.numpy()
    return found


def ranking_metrics(
    ranking: Ranking,
    targets: np.ndarray,
    n_items: int,
    tail_items: np.ndarray | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """HR, NDCG and coverage at each k of a ``Ranking``, and with ``tail_items`` ([n_items] bool, the
    long-tail items) ``tail_hr@k`` / ``tail_ndcg@k`` over the users whose target is a tail item.

    Returns a dict like ``{"hr@10": 0.09, "ndcg@10": 0.05, "coverage@10": 0.41, "users": 22363, ...}``.

    >>> scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    >>> ranking = rank_users(lambda rows: scores[torch.as_tensor(rows)], np.array([2, 1]), 3, max_k=1)
    >>> m = ranking_metrics(ranking, np.array([2, 1]), 3, ks=(1,))
    >>> m["hr@1"], round(m["ndcg@1"], 3)
    (0.5, 0.5)
    """
    return MetricSums.of(ranking, targets, n_items, tail_items, ks).metrics()


def user_gains(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Each user's HR@k and NDCG@k with one relevant item: what a paired difference averages.

    >>> {m: g.round(3).tolist() for m, g in user_gains(np.array([0, 2, 10]), k=10).items()}
    {'hr@10': [1.0, 1.0, 0.0], 'ndcg@10': [1.0, 0.5, 0.0]}
    """
    return {f"hr@{k}": (ranks < k).astype(float), f"ndcg@{k}": ndcg_gains(ranks, k)}


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int = 10) -> dict:
    """Method A minus method B on the same users (same order): HR@k and NDCG@k with the paired
    standard error, and how many users only one of them hits.

    >>> d = paired_difference(np.array([0, 20, 3, 50]), np.array([30, 1, 40, 60]))
    >>> d["hr@10"]["difference"], round(d["hr@10"]["se"], 3), d["only_a_hits"], d["only_b_hits"]
    (0.25, 0.479, 2, 1)
    """
    if len(ranks_a) != len(ranks_b) or len(ranks_a) < 2:
        raise ValueError(
            f"paired_difference needs the same users (at least two): got {len(ranks_a)} and {len(ranks_b)}"
        )
    ranks_a, ranks_b = np.asarray(ranks_a), np.asarray(ranks_b)
    hits_a, hits_b = ranks_a < k, ranks_b < k
    out: dict = {
        "users": len(ranks_a),
        "only_a_hits": int((hits_a & ~hits_b).sum()),
        "only_b_hits": int((hits_b & ~hits_a).sum()),
    }
    gains_a, gains_b = user_gains(ranks_a, k), user_gains(ranks_b, k)
    for measure in gains_a:
        diff = gains_a[measure] - gains_b[measure]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
        out[measure] = {"difference": float(diff.mean()), "se": se, "z": float(diff.mean() / se) if se else 0.0}
    return out


def format_table(results: dict[str, dict], ks: Sequence[int] = DEFAULT_KS) -> str:
    """A Markdown table of HR/NDCG per method and split.

    ``results`` maps a method name to ``{"valid": metrics, "test": metrics}``.

    >>> print(format_table({"m": {"test": {"hr@5": 0.1, "ndcg@5": 0.05}}}, ks=(5,)))
    | method | split | HR@5 | NDCG@5 |
    |---|---|---|---|
    | m | test | 0.1000 | 0.0500 |
    """
    header = ["method", "split"] + [f"{name}@{k}" for k in ks for name in ("HR", "NDCG")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, splits in results.items():
        for split in ("valid", "test"):
            if split in splits:
                values = [f"{splits[split][f'{name}@{k}']:.4f}" for k in ks for name in ("hr", "ndcg")]
                lines.append("| " + " | ".join([method, split, *values]) + " |")
    return "\n".join(lines)
