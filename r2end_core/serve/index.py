"""The item index (paper §3.5): a model's item vectors in faiss, with the item-id map and the model they
came from, saved as a version that serving loads whole.

    <storage_path>/index/<version>/index.faiss     faiss index over the model's item vectors
    <storage_path>/index/<version>/items.parquet   schemas.INDEX_ITEMS, in the index's row order
    <storage_path>/index/<version>/manifest.json   summaries.IndexSummary: the model (name and version),
                                                   index kind and settings, recall (or exact), the
                                                   files' sha256 (checked on load); written last
    <storage_path>/index/latest.json               {"version": the version built last}
    <storage_path>/index/aliases/<alias>.json      what is served: moved by promote and rollback only (aliases)

Scores are inner products: cosine similarities for a model whose vectors are unit length (R2END),
plain dot products otherwise (SASRec). ``flat`` is exact; ``ivf`` and ``hnsw`` are approximate, and the
index stage reports their recall against exact search.
"""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa

from r2end_core import schemas, storage
from r2end_core.config import INDEX_SETTINGS, IndexConfig, IndexKind
from r2end_core.data.contract import read_new_items
from r2end_core.data.histories import Histories
from r2end_core.layout import Layout
from r2end_core.models.base import Recommender
from r2end_core.serve import aliases
from r2end_core.summaries import IndexSummary

INDEX_FILE, ITEMS_FILE, MANIFEST_FILE = "index.faiss", "items.parquet", "manifest.json"


def resolve_version(layout: Layout, version: str) -> str:
    """``"latest"`` -> the version built last; an alias (``aliases``, e.g. ``"live"``) -> the version it names;
    any other name must be a version that exists."""
    if aliases.ALIAS.match(version) and version != "latest":
        record = aliases.read(layout, version)
        if record is None:
            raise FileNotFoundError(
                f"no index version promoted to '{version}' under {layout.path('index')}: build one (ray_jobs.index) "
                f"and promote it (ray_jobs.promote --version VERSION)"
            )
        version = record.version
    elif version == "latest":
        if not storage.exists(layout.index_latest):
            raise FileNotFoundError(
                f"no index under {layout.path('index')}: run the index stage (ray_jobs.index) on this storage "
                "path first"
            )
        version = storage.read_json(layout.index_latest)["version"]
    if not storage.exists(layout.index(version, MANIFEST_FILE)):
        raise FileNotFoundError(f"index version '{version}' not found under {layout.path('index')}")
    return version


def version_name(kind: str, *parts: object) -> str:
    """A version named by what went into it, so the same inputs give the same version.

    >>> version_name("flat", {"model": 1}, ["a", "b"])
    'flat-449988b201'
    """
    return f"{kind}-{storage.digest(parts)}"


def resolved(cfg: IndexConfig, n_items: int) -> IndexConfig:
    """``cfg`` with ``auto`` made the kind it picks for ``n_items`` items.

    >>> resolved(IndexConfig(), 12_101).kind, resolved(IndexConfig(), 1_000_000).kind
    (<IndexKind.FLAT: 'flat'>, <IndexKind.HNSW: 'hnsw'>)
    """
    if cfg.kind != IndexKind.AUTO:
        return cfg
    return cfg.model_copy(update={"kind": IndexKind.FLAT if n_items <= cfg.exact_max_items else IndexKind.HNSW})


def build(vectors: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    """A faiss index over ``vectors``, searched by inner product.

    >>> vectors = np.eye(4, dtype=np.float32)
    >>> build(vectors, IndexConfig(kind="hnsw")).ntotal
    4
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    cfg = resolved(cfg, len(vectors))
    if cfg.kind == IndexKind.FLAT:
        index = faiss.IndexFlatIP(dim)
    elif cfg.kind == IndexKind.IVF:
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


def search(
    index: faiss.Index, queries: np.ndarray, k: int, exclude: list[set[int]] | None = None
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
        out_rows[q, : len(kept)] = [r for r, _ in kept]
        out_scores[q, : len(kept)] = [s for _, s in kept]
    return out_rows, out_scores


def recall(index: faiss.Index, exact: faiss.Index, queries: np.ndarray, k: int) -> float:
    """Mean share of exact search's top-``k`` that ``index`` also returns."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, approx_rows = index.search(queries, k)
    _, exact_rows = exact.search(queries, k)
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx_rows, exact_rows)]))


#: The setting ``reach_recall`` widens, per approximate kind: how many candidates (HNSW) or clusters (IVF) a
#: query visits.
SEARCH_WIDTH = {IndexKind.HNSW: "ef_search", IndexKind.IVF: "nprobe"}


def reach_recall(
    index: faiss.Index, exact: faiss.Index, queries: np.ndarray, cfg: IndexConfig
) -> tuple[int | None, float]:
    """(search width, recall@recall_k): an approximate ``index``'s search width (HNSW: efSearch, from
    ``cfg.ef_search`` to at most ``cfg.max_ef_search``; IVF: nprobe, from ``cfg.nprobe`` to at most its nlist,
    where it searches every cluster) doubled until its recall against ``exact`` on ``queries`` reaches
    ``cfg.recall_target``; the index keeps the width found. Exact search, or no target: (None, its recall)."""
    found = recall(index, exact, queries, cfg.recall_k)
    if isinstance(index, faiss.IndexHNSW):
        params, name, most = index.hnsw, "efSearch", cfg.max_ef_search
    elif isinstance(index, faiss.IndexIVF):
        params, name, most = index, "nprobe", index.nlist
    else:
        return None, found
    if cfg.recall_target is None:
        return None, found
    while found < cfg.recall_target and getattr(params, name) < most:
        setattr(params, name, min(2 * getattr(params, name), most))
        found = recall(index, exact, queries, cfg.recall_k)
    return getattr(params, name), found


def save(layout: Layout, index: faiss.Index, items: pa.Table, manifest: IndexSummary) -> IndexSummary:
    """Write one version and return its manifest, with its files' sha256; then move ``latest.json``. A version
    is immutable: one saved whole already (the same inputs) is left as it is, so a version being served never
    changes under its replicas. The manifest is written last, so a reader never sees half a version; a damaged
    version loses its manifest before it is written again. What is served does not change (``aliases``)."""
    if items.num_rows != index.ntotal:
        raise ValueError(f"{items.num_rows} items for an index of {index.ntotal} vectors")
    saved = layout.index(manifest.version, MANIFEST_FILE)
    existing = IndexSummary.read(saved, "index") if storage.exists(saved) else None
    if existing and not storage.damaged_file(layout.index(manifest.version), existing.files):
        manifest = existing
    else:
        if existing:
            storage.delete_file(saved)
        with storage.open_output(layout.index(manifest.version, INDEX_FILE)) as out:
            out.write(faiss.serialize_index(index).tobytes())
        storage.write_table(items.cast(schemas.INDEX_ITEMS), layout.index(manifest.version, ITEMS_FILE))
        files = {name: storage.sha256(layout.index(manifest.version, name)) for name in (INDEX_FILE, ITEMS_FILE)}
        manifest = manifest.model_copy(update={"files": files})
        manifest.write(saved)
    storage.write_json({"version": manifest.version}, layout.index_latest)
    return manifest


def verify(layout: Layout, manifest: IndexSummary, read: dict[str, bytes] | None = None) -> None:
    """Every file of a version has the sha256 its manifest recorded, or ``storage.DamagedVersionError``
    (``read``: files already read, checked as read)."""
    storage.check_files(
        layout.index(manifest.version),
        manifest.files,
        f"index version {manifest.version}",
        "build it again (ray_jobs.index with the settings in its manifest): that writes it whole",
        read,
    )


def load(layout: Layout, version: str) -> tuple[faiss.Index, pa.Table, IndexSummary]:
    """(index, items, manifest) of one version (``"latest"`` or an alias allowed), its files checked against
    their sha256; the index file is read once, and what was checked is what is loaded."""
    manifest = load_manifest(layout, version)
    with storage.open_input(layout.index(manifest.version, INDEX_FILE)) as f:
        serialized = f.read()
    verify(layout, manifest, {INDEX_FILE: serialized})
    index = faiss.deserialize_index(np.frombuffer(serialized, dtype=np.uint8))
    return index, load_items(layout, manifest.version), manifest


def load_items(layout: Layout, version: str) -> pa.Table:
    """A version's items (schemas.INDEX_ITEMS, in row order), without its index."""
    return storage.read_table(layout.index(resolve_version(layout, version), ITEMS_FILE))


def load_manifest(layout: Layout, version: str) -> IndexSummary:
    return IndexSummary.read(layout.index(resolve_version(layout, version), MANIFEST_FILE), "index")


def build_version(
    layout: Layout, model: Recommender, items: pa.Table, ic: IndexConfig, queries: Histories
) -> IndexSummary:
    """A new version over every item of ``model`` (``items``: the prepared catalogue, for titles and
    metadata text). An approximate kind's recall against exact search is measured with ``queries``."""
    if model.item_ids != items.column("item_id").to_pylist():
        raise ValueError(f"model {model.manifest.name} was trained on another catalogue than the prepared items")
    vectors = model.item_vectors()
    ic = resolved(ic, len(vectors))
    index = build(vectors, ic)
    quality = {"exact": True}
    if ic.kind != IndexKind.FLAT:
        exact = build(vectors, ic.model_copy(update={"kind": IndexKind.FLAT}))
        width, found = reach_recall(index, exact, model.user_vectors(queries), ic)
        if width is not None:
            ic = ic.model_copy(update={SEARCH_WIDTH[ic.kind]: width})
        if ic.kind == IndexKind.IVF:  # what the index holds: nlist capped by the items, nprobe by nlist
            ic = ic.model_copy(update={"nlist": index.nlist, "nprobe": index.nprobe})
        quality = {"exact": False, f"recall@{ic.recall_k}": found, "queries": len(queries)}
    settings = ic.model_dump(mode="json", include={"kind", *INDEX_SETTINGS[ic.kind]})
    catalogue = items.select(["item_id", "title", "metadata_text"])
    manifest = IndexSummary(
        version=version_name(ic.kind, model.manifest.model_dump(mode="json"), settings, model.item_ids),
        items=index.ntotal,
        model=model.manifest.name,
        model_version=model.manifest.version,
        similarity=model.manifest.similarity,
        settings=settings,
        quality=quality,
        base_version=None,
        added_items=0,
    )
    return save(layout, index, catalogue, manifest)


def add_items(layout: Layout, model: Recommender, base_version: str, new_items_path: str) -> IndexSummary:
    """A new version: a built one (whose model is ``model``) plus the items of ``new_items_path`` (checked by
    ``contract.read_new_items``: no id already indexed), embedded by the model from their metadata text."""
    index, catalogue, manifest = load(layout, base_version)
    new_items = read_new_items(new_items_path, set(catalogue.column("item_id").to_pylist()))
    texts = new_items.column("metadata_text").to_pylist()
    index.add(np.ascontiguousarray(model.new_item_vectors(texts), dtype=np.float32))
    catalogue = pa.concat_tables([catalogue, new_items.cast(schemas.INDEX_ITEMS)])
    manifest = manifest.model_copy(
        update={
            "version": version_name(
                manifest.settings["kind"], manifest.version, new_items.column("item_id").to_pylist(), texts
            ),
            "items": index.ntotal,
            "base_version": manifest.version,
            "added_items": manifest.added_items + new_items.num_rows,
        }
    )
    return save(layout, index, catalogue, manifest)
