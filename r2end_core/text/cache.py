"""Embeddings of texts kept per encoder, so a text is encoded once whichever run asks for it.

The cache of an encoder lives under ``caches/text_vectors/<encoder id>/`` (schemas.TEXT_VECTORS), keyed
by each text's sha256; the encoder id names the weights and every setting that changes a vector, so a
retrained student or another max length never reads an older encoder's vectors.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from r2end_core import schemas, storage
from r2end_core.layout import Layout


def encoder_id(weights: str, max_seq_length: int, keep: str, backend: str = "torch") -> str:
    """``weights``: what names the encoder's weights (a student's weights id, a bundled name); ``backend``:
    what runs it (``EmbedConfig.cpu_history_encoder``), whose vectors differ by float noise or more."""
    named = {"weights": weights, "max_seq_length": max_seq_length, "keep": keep}
    return storage.digest(named if backend == "torch" else {**named, "backend": backend})


def cached_encode(
    texts: list[str],
    layout: Layout,
    encoder: str,
    encode: Callable[[list[str]], np.ndarray],
    part_size: int = 16_384,
) -> np.ndarray:
    """``[len(texts), dim]`` vectors of ``texts`` by the encoder ``encoder`` (an ``encoder_id``): from its
    cache where present; the rest through ``encode`` (each distinct text once), shortest first, ``part_size``
    texts at a time, each part cached as soon as it is encoded, so a run stopped midway keeps what it did."""
    folder = layout.text_vectors(encoder)
    files = storage.list_files(folder)
    cached = pa.concat_tables([storage.read_table(f) for f in files]) if files else schemas.TEXT_VECTORS.empty_table()
    row = {key: i for i, key in enumerate(cached.column("text_sha256").to_pylist())}
    keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    text_of = dict(zip(keys, texts))
    # Parts of similar lengths pad less (the encoder batches within a part).
    missing = sorted(dict.fromkeys(k for k in keys if k not in row), key=lambda k: len(text_of[k]))
    for start in range(0, len(missing), part_size):
        part = missing[start : start + part_size]
        added = pa.table(
            {"text_sha256": part, "embedding": schemas.vector_column(encode([text_of[k] for k in part]))},
            schema=schemas.TEXT_VECTORS,
        )
        storage.write_table_atomic(added, storage.join(folder, f"part-{uuid.uuid4().hex}.parquet"))
        row.update({k: cached.num_rows + i for i, k in enumerate(part)})
        cached = pa.concat_tables([cached, added])
    return schemas.to_matrix(cached["embedding"])[[row[k] for k in keys]]
