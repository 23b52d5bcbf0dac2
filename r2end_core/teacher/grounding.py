"""Rejection sampling for unguided reasoning (paper ablation 2), grounded BIGRec-style.

An unguided answer names the item the teacher expects next (``prompts.extract_predicted_item``).
That name, or the whole answer when it names none, is embedded with a text encoder, every
catalogue item's metadata text likewise, and the catalogue is ranked by cosine similarity. A user
is *accepted* when their true next item (the training target) ranks within ``top_k`` (100 in the
paper's setting); only accepted users' reasoning trains the rejection-sampled ablation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

from r2end_core import schemas
from r2end_core.eval.metrics import target_ranks


def ground_unguided(
    unguided: pa.Table, users: pa.Table, items: pa.Table, encode: Callable[[list[str]], np.ndarray], top_k: int = 100
) -> pa.Table:
    """Rank each user's training target against the catalogue by similarity to what the teacher named.

    ``unguided``: rows of ``schemas.USER_OUTPUTS`` (failed rows are skipped: they have no
    answer); ``encode``: texts -> unit-length vectors.
    """
    ok = unguided.filter(unguided["error"].is_null())
    index = {item: i for i, item in enumerate(items.column("item_id").to_pylist())}
    target = dict(zip(users.column("user_id").to_pylist(), users.column("train_target").to_pylist()))
    rows = ok.select(["user_id", "text", "predicted_item"]).to_pylist()
    unknown = [r["user_id"] for r in rows if r["user_id"] not in target]
    if unknown:  # before the catalogue's encode, which is the slow part
        raise ValueError(
            f"unguided outputs for {len(unknown)} users not in the prepared users, e.g. {unknown[:3]}: "
            "outputs and prepared data come from different storage paths or samples"
        )
    queries = [r["predicted_item"] or r["text"] for r in rows]
    item_vectors = torch.from_numpy(encode(items.column("metadata_text").to_pylist()))
    query_vectors = torch.from_numpy(encode(queries))
    targets = torch.tensor([index[target[r["user_id"]]] for r in rows], dtype=torch.long)
    ranks = (target_ranks(query_vectors @ item_vectors.T, targets) + 1).numpy() if rows else np.zeros(0, np.int64)
    return pa.table(
        {
            "user_id": [r["user_id"] for r in rows],
            "grounded_on": ["named_item" if r["predicted_item"] else "answer" for r in rows],
            "target_rank": ranks.astype(np.int64),
            "accepted": ranks <= top_k,
        },
        schema=schemas.GROUNDING,
    )
