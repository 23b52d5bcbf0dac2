"""The item index (paper §3.5): projected item vectors in faiss, with the item-id map and the model
they came from, saved as a version that serving loads whole.

    <storage_path>/index/<version>/index.faiss     faiss index over unit vectors z_i = f(e_i) / |f(e_i)|
    <storage_path>/index/<version>/items.parquet   INDEX_ITEMS_SCHEMA, in the index's row order
    <storage_path>/index/<version>/manifest.json   the model, index kind and settings, recall (or exact)
    <storage_path>/index/latest.json               {"version": the version built last}

A manifest's ``model`` names everything that decides a user's or item's vector: ``project_run``,
``user_encoder`` (student or encoder), ``user_model`` and ``projection`` (paths under the storage
path, or bundled names), ``user_model_id`` (the student's Ray Train run and steps),
``projection_sha256``, ``item_encoder`` and ``max_seq_length``.

Scores are inner products of unit vectors, i.e. cosine similarities. ``flat`` is exact; ``ivf`` and
``hnsw`` are approximate, and the index job reports their recall against exact search.
"""

from __future__ import annotations

import hashlib
import json

import faiss
import numpy as np
import pyarrow as pa

from r2end_core import storage
from r2end_core.config import IndexConfig

#: One row per indexed item, in faiss row order. ``metadata_text`` is M_i, which serving uses to
#: turn a history of item ids into the history text the user encoder reads.
INDEX_ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("metadata_text", pa.string(), nullable=False),
    ]
)


def folder(root: str, version: str) -> str:
    return storage.join(root, "index", version)


def latest_path(root: str) -> str:
    return storage.join(root, "index", "latest.json")


def resolve_version(root: str, version: str) -> str:
    """``"latest"`` -> the version built last; any other name must exist."""
    if version == "latest":
        if not storage.exists(latest_path(root)):
            raise FileNotFoundError(f"no index under {storage.join(root, 'index')}: run the index stage "
                                    "(ray_jobs.index) on this storage path first")
        version = storage.read_json(latest_path(root))["version"]
    if not storage.exists(storage.join(folder(root, version), "manifest.json")):
        raise FileNotFoundError(f"index version '{version}' not found under {storage.join(root, 'index')}")
    return version


def version_name(kind: str, *parts: object) -> str:
    """A version named by what went into it, so the same inputs give the same version.

    >>> version_name("flat", {"model": 1}, ["a", "b"])
    'flat-449988b201'
    """
    return f"{kind}-{_digest(parts)}"


def model_version(model: dict) -> str:
    """A short name for a manifest's model: changes whenever the student or projection does."""
    return _digest(model)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def build(vectors: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    """A faiss index over ``vectors`` (unit rows), searched by inner product.

    >>> vectors = np.eye(4, dtype=np.float32)
    >>> build(vectors, IndexConfig(kind="hnsw")).ntotal
    4
    """
    dim = vectors.shape[1]
    if cfg.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif cfg.kind == "ivf":
        # faiss wants about 39 training points per cluster; fewer clusters on a small catalogue.
        nlist = max(1, min(cfg.nlist, len(vectors) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(cfg.nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = cfg.ef_search
    index.add(vectors)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, exclude: list[set[int]] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows and scores per query, best first, never a row in that query's ``exclude``.

    Rows are -1 (score -inf) where the index has fewer than ``k`` items left.

    >>> index = build(np.eye(3, dtype=np.float32), IndexConfig())
    >>> rows, scores = search(index, np.array([[1, 0.5, 0]], dtype=np.float32), 2, exclude=[{0}])
    >>> rows.tolist(), scores.round(2).tolist()
    ([[1, 2]], [[0.5, 0.0]])
    """
    exclude = exclude or [set()] * len(queries)
    fetch = min(index.ntotal, k + max(len(e) for e in exclude))
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
    out_rows = np.full((len(queries), k), -1, dtype=np.int64)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for q in range(len(queries)):
        kept = [(r, s) for r, s in zip(rows[q], scores[q]) if r >= 0 and r not in exclude[q]][:k]
        out_rows[q, :len(kept)] = [r for r, _ in kept]
        out_scores[q, :len(kept)] = [s for _, s in kept]
    return out_rows, out_scores


def recall(index: faiss.Index, exact: faiss.Index, queries: np.ndarray, k: int) -> float:
    """Mean share of exact search's top-``k`` that ``index`` also returns."""
    _, approx_rows = index.search(queries, k)
    _, exact_rows = exact.search(queries, k)
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx_rows, exact_rows)]))


def save(root: str, version: str, index: faiss.Index, items: pa.Table, manifest: dict) -> None:
    """Write one version; ``latest.json`` moves last, so a reader never sees half a version."""
    if items.num_rows != index.ntotal:
        raise ValueError(f"{items.num_rows} items for an index of {index.ntotal} vectors")
    path = folder(root, version)
    with storage.open_output(storage.join(path, "index.faiss")) as out:
        out.write(faiss.serialize_index(index).tobytes())
    storage.write_table(items.cast(INDEX_ITEMS_SCHEMA), storage.join(path, "items.parquet"))
    storage.write_json({**manifest, "version": version, "items": index.ntotal}, storage.join(path, "manifest.json"))
    storage.write_json({"version": version}, latest_path(root))


def load(root: str, version: str) -> tuple[faiss.Index, pa.Table, dict]:
    """(index, items, manifest) of one version (``"latest"`` allowed)."""
    path = folder(root, resolve_version(root, version))
    with storage.open_input(storage.join(path, "index.faiss")) as f:
        index = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
    return index, load_items(root, version), load_manifest(root, version)


def load_items(root: str, version: str) -> pa.Table:
    """A version's items (INDEX_ITEMS_SCHEMA, in row order), without its index."""
    return storage.read_table(storage.join(folder(root, resolve_version(root, version)), "items.parquet"))


def load_manifest(root: str, version: str) -> dict:
    return storage.read_json(storage.join(folder(root, resolve_version(root, version)), "manifest.json"))
