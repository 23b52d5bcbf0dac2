"""Every table r2end writes, in one place. Where each one lives: ``r2end_core.layout``.

Vectors are stored as ``list<float32>`` columns (``vector_column`` writes one, ``to_matrix`` reads it).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VECTOR = pa.list_(pa.float32())

_HISTORY_COLUMNS = [
    pa.field(f"{split}_history_{part}", pa.list_(pa.string()) if part == "ids" else pa.string())
    for split in ("train", "valid", "test")
    for part in ("ids", "text")
]

#: prepared/users: one row per user. ``sequence`` holds every item in order, validation and test
#: included (evaluation needs them); training code reads it through ``data.splits.training_part``.
#: ``<split>_history_ids/_text`` are the items before that split's target that the history rule keeps,
#: and the history text H_u written from them.
USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("sequence", pa.list_(pa.string()), nullable=False),
        pa.field("timestamps", pa.list_(pa.int64())),  # null when the dataset has none
        pa.field("train_target", pa.string(), nullable=False),
        pa.field("valid_target", pa.string(), nullable=False),
        pa.field("test_target", pa.string(), nullable=False),
        *_HISTORY_COLUMNS,
    ]
)

#: prepared/items.parquet: one row per catalogue item, in ``item_index`` order (sorted by item_id).
ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_index", pa.int32(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("price", pa.float64()),
        pa.field("description", pa.string()),
        pa.field("metadata_text", pa.string(), nullable=False),
        # Items that this item's buyers had just before it, most frequent first (training part only).
        pa.field("buyer_context_ids", pa.list_(pa.string()), nullable=False),
        pa.field("buyer_context_text", pa.string(), nullable=False),
        pa.field("train_popularity", pa.int64(), nullable=False),
    ]
)

_OUTPUT_FIELDS = [
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("text", pa.string()),  # the reasoning or description; null when generation failed
    pa.field("prompt_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("finish_reason", pa.string()),  # "stop", or "length" when the token cap cut it
    pa.field("truncated_to_words", pa.bool_()),  # the answer ran past max_words and was cut there
    pa.field("error", pa.string()),  # null on success
    pa.field("generated_at", pa.timestamp("us", tz="UTC"), nullable=False),
]

#: Teacher outputs about a user, one row per (user, kind). ``predicted_item``: what an unguided answer names.
USER_OUTPUTS = pa.schema(
    [pa.field("user_id", pa.string(), nullable=False), pa.field("kind", pa.string(), nullable=False)]
    + _OUTPUT_FIELDS
    + [pa.field("predicted_item", pa.string())]
)

#: Teacher outputs about an item, one row per item; ``text`` is its description D_i.
ITEM_OUTPUTS = pa.schema([pa.field("item_id", pa.string(), nullable=False)] + _OUTPUT_FIELDS)

#: Rejection sampling of unguided answers, one row per answer (r2end_core.teacher.grounding).
GROUNDING = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("grounded_on", pa.string(), nullable=False),  # "named_item", or "answer" when none was named
        pa.field("target_rank", pa.int64(), nullable=False),  # 1-based rank of the true item by similarity
        pa.field("accepted", pa.bool_(), nullable=False),
    ]
)

#: embeddings/items.parquet: Enc(M_i + D_i) and Enc(M_i) per catalogue item, in item_index order; R2END models
#: keep a copy of the one they use.
ITEM_EMBEDDINGS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_index", pa.int32(), nullable=False),
        pa.field("has_description", pa.bool_(), nullable=False),  # False: metadata alone was embedded
        pa.field("embedding", VECTOR, nullable=False),  # unit length
        pa.field("metadata_embedding", VECTOR, nullable=False),  # Enc(M_i) alone: item vectors with no LLM text
    ]
)

#: embeddings/targets.parquet: one row per (user, target kind). ``accepted``: rejection sampling kept
#: this user (unguided only).
TARGET_EMBEDDINGS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("accepted", pa.bool_()),
        pa.field("embedding", VECTOR, nullable=False),
    ]
)

#: A text encoder's cache: one row per distinct text it has embedded (keyed by the text's sha256).
TEXT_VECTORS = pa.schema(
    [pa.field("text_sha256", pa.string(), nullable=False), pa.field("embedding", VECTOR, nullable=False)]
)

#: A distill run's examples: each distilled user's history text and target embedding.
DISTILL_EXAMPLES = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("history_text", pa.string(), nullable=False),
        pa.field("target", VECTOR, nullable=False),
    ]
)

#: Per held-out user of a distill run: L2 and cosine between the target and Enc (before) / the student (after).
DISTANCES = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("l2_before", pa.float32(), nullable=False),
        pa.field("l2_after", pa.float32(), nullable=False),
        pa.field("cos_before", pa.float32(), nullable=False),
        pa.field("cos_after", pa.float32(), nullable=False),
    ]
)

#: teacher_rankings/: a teacher model's top-K items for training instances, each the prediction of the item at
#: ``position`` of a user's sequence from the items before it; history items are never ranked.
TEACHER_RANKINGS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("items", pa.list_(pa.int32()), nullable=False),  # item_index, best first
        pa.field("scores", VECTOR, nullable=False),
        pa.field("target_distance", pa.float32(), nullable=False),  # squared L2, user vector to the true item's
    ]
)

#: A model's items, in the row order of its item vectors (an R2END model adds the item embeddings f projects).
MODEL_ITEMS = pa.schema([pa.field("item_id", pa.string(), nullable=False)])
MODEL_ITEM_EMBEDDINGS = MODEL_ITEMS.append(pa.field("embedding", VECTOR, nullable=False))

#: One row per (scored user, split): the 0-based rank of the user's target in the full ranking.
RANKS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
    ]
)

#: An index version's items, in faiss row order. ``metadata_text`` is M_i, which serving uses to turn
#: a history of item ids into the history text a text model reads.
INDEX_ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("metadata_text", pa.string(), nullable=False),
    ]
)


def vector_column(vectors: np.ndarray) -> pa.Array:
    """A ``[rows, dim]`` matrix as a ``list<float32>`` column."""
    return pa.array(list(np.asarray(vectors, dtype=np.float32)), type=VECTOR)


def to_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float32> column as a ``[rows, dim]`` float32 matrix.

    >>> to_matrix(vector_column(np.eye(2))).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), -1).astype(np.float32)  # a writable copy (torch wants one)
