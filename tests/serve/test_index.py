"""The faiss item index and new-item files (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2end_core import storage
from r2end_core.config import HistoryRule, IndexConfig, SasrecArgs
from r2end_core.data.contract import DataValidationError, read_new_items
from r2end_core.data.histories import Histories
from r2end_core.layout import Layout
from r2end_core.models import sasrec
from r2end_core.serve import index
from r2end_core.summaries import IndexSummary


def unit_rows(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def catalogue(n: int) -> pa.Table:
    return pa.table(
        {"item_id": [f"I{i}" for i in range(n)], "title": [None] * n, "metadata_text": [f"item {i}" for i in range(n)]}
    )


def summary(version: str, n: int, kind: str = "flat") -> IndexSummary:
    return IndexSummary(
        version=version,
        items=n,
        model="m",
        model_version="v",
        similarity="cosine",
        settings={"kind": kind},
        quality={},
        base_version=None,
        added_items=0,
    )


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_every_kind_finds_the_nearest_item_and_survives_a_save(tmp_path, kind):
    items = unit_rows(2000)
    built = index.build(items, IndexConfig(kind=kind, nlist=16, nprobe=16))
    queries = items[:50] + 0.01 * unit_rows(50, seed=1)  # each query sits next to one item
    rows, scores = index.search(built, queries, 5)
    assert (rows[:, 0] == np.arange(50)).mean() >= 0.95 and np.all(np.diff(scores, axis=1) <= 1e-6)
    layout = Layout(str(tmp_path))
    index.save(layout, built, catalogue(2000), summary(f"{kind}-v1", 2000, kind))
    loaded, items_back, manifest = index.load(layout, "latest")
    assert manifest.version == f"{kind}-v1" and items_back.num_rows == loaded.ntotal == 2000
    # Search settings (nprobe, efSearch) travel with the saved index: same answers after loading.
    assert np.array_equal(index.search(loaded, queries, 5)[0], rows)


def test_a_version_is_written_once_checked_as_it_loads_and_written_again_when_damaged(tmp_path):
    layout, items = Layout(str(tmp_path)), unit_rows(300)
    saved = index.save(layout, index.build(items, IndexConfig(kind="flat")), catalogue(300), summary("flat-v1", 300))
    assert set(saved.files) == {index.INDEX_FILE, index.ITEMS_FILE}
    stored = tmp_path / "index" / "flat-v1" / index.INDEX_FILE
    whole = stored.read_bytes()
    # the same version name again, other bytes (a rebuild need not be byte-identical): the saved one stands
    other = index.build(unit_rows(300, seed=5), IndexConfig(kind="flat"))
    assert index.save(layout, other, catalogue(300), summary("flat-v1", 300)) == saved
    assert stored.read_bytes() == whole
    # a file changed under a saved version: loading it says so; saving it again writes it whole
    stored.write_bytes(whole[:-8])
    with pytest.raises(storage.DamagedVersionError, match="index version flat-v1: index.faiss has sha256 .* damaged"):
        index.load(layout, "flat-v1")
    index.save(layout, index.build(items, IndexConfig(kind="flat")), catalogue(300), summary("flat-v1", 300))
    loaded, _, manifest = index.load(layout, "latest")
    assert stored.read_bytes() == whole and manifest == saved and loaded.ntotal == 300
    # a manifest that records no files (written before versions recorded them): refused, and the next build
    # writes the version whole
    saved.model_copy(update={"files": {}}).write(str(tmp_path / "index" / "flat-v1" / "manifest.json"))
    with pytest.raises(storage.DamagedVersionError, match="records no files' sha256"):
        index.load(layout, "flat-v1")
    index.save(layout, index.build(items, IndexConfig(kind="flat")), catalogue(300), summary("flat-v1", 300))
    assert index.load(layout, "flat-v1")[2] == saved


def test_hnsw_raises_ef_search_until_it_reaches_the_recall_asked():
    items, queries = unit_rows(5000), unit_rows(200, seed=3)
    exact = index.build(items, IndexConfig(kind="flat"))
    cfg = IndexConfig(kind="hnsw", hnsw_m=4, ef_search=2, recall_target=0.97)
    graph = index.build(items, cfg)
    first = index.recall(graph, exact, queries, 10)
    ef_search, found = index.reach_recall(graph, exact, queries, cfg)
    assert first < 0.97 <= found and ef_search > 2 and graph.hnsw.efSearch == ef_search
    assert index.recall(graph, exact, queries, 10) == found  # the index keeps what it found
    capped = index.build(items, cfg.model_copy(update={"max_ef_search": 4}))
    assert index.reach_recall(capped, exact, queries, cfg.model_copy(update={"max_ef_search": 4}))[0] == 4


def test_ivf_raises_nprobe_until_it_reaches_the_recall_asked():
    items, queries = unit_rows(5000), unit_rows(200, seed=3)
    exact = index.build(items, IndexConfig(kind="flat"))
    cfg = IndexConfig(kind="ivf", nlist=64, nprobe=1, recall_target=0.97)
    clusters = index.build(items, cfg)
    first = index.recall(clusters, exact, queries, 10)
    nprobe, found = index.reach_recall(clusters, exact, queries, cfg)
    assert first < 0.97 <= found and 1 < nprobe <= 64 and clusters.nprobe == nprobe
    assert index.recall(clusters, exact, queries, 10) == found  # the index keeps what it found
    unreachable = cfg.model_copy(update={"recall_target": 1.0})
    assert index.reach_recall(index.build(items, cfg), exact, queries, unreachable) == (64, 1.0)  # all clusters


def test_an_ivf_version_records_the_settings_its_index_holds(tmp_path, prepared_tables):
    """nlist capped by the catalogue, nprobe raised to the recall target: the manifest says what is served."""
    users, items = prepared_tables
    args = SasrecArgs(hidden_size=16, num_heads=1, inner_size=16, max_len=20)
    manifest = sasrec.manifest("m", args, items.num_rows, HistoryRule(), {})
    model = sasrec.SasrecRecommender(sasrec.SASRec(items.num_rows, args).eval(), items["item_id"].to_pylist(), manifest)
    cfg = IndexConfig(kind="ivf", nlist=100_000, nprobe=1, recall_target=0.9)
    layout = Layout(str(tmp_path))
    version = index.build_version(layout, model, items, cfg, Histories.of_split(users.slice(0, 200), "valid"))
    built, _, saved = index.load(layout, version.version)
    assert saved.settings == {"kind": "ivf", "nlist": built.nlist, "nprobe": built.nprobe}
    assert built.nlist == items.num_rows // 39 and built.nprobe > 1 and saved.quality["recall@10"] >= 0.9


def test_auto_is_exact_up_to_its_threshold_and_a_graph_past_it():
    items = unit_rows(300)
    assert isinstance(index.build(items, IndexConfig(exact_max_items=300)), index.faiss.IndexFlatIP)
    assert isinstance(index.build(items, IndexConfig(exact_max_items=299)), index.faiss.IndexHNSWFlat)


def test_approximate_recall_is_measured_against_exact():
    items, queries = unit_rows(3000), unit_rows(100, seed=2)
    exact = index.build(items, IndexConfig())
    assert index.recall(exact, exact, queries, 10) == 1.0
    coarse = index.build(items, IndexConfig(kind="ivf", nlist=64, nprobe=1))
    assert 0 < index.recall(coarse, exact, queries, 10) < 1


def test_search_skips_excluded_rows_and_pads_a_small_index():
    built = index.build(np.eye(3, dtype=np.float32), IndexConfig())
    rows, scores = index.search(built, np.array([[1, 0.5, 0.1]], dtype=np.float32), 3, exclude=[{0}])
    assert rows.tolist() == [[1, 2, -1]] and scores[0, 2] == -np.inf


def test_version_names_follow_their_inputs():
    assert index.version_name("flat", {"a": 1}) == index.version_name("flat", {"a": 1})
    assert index.version_name("flat", {"a": 1}) != index.version_name("flat", {"a": 2})


def test_unknown_version_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the index stage"):
        index.resolve_version(Layout(str(tmp_path)), "latest")


def test_new_items_file_is_checked(tmp_path):
    path = str(tmp_path / "new.parquet")
    pq.write_table(pa.table({"item_id": ["N1", "N2"], "title": ["Rose balm", None], "price": [3.5, None]}), path)
    new = read_new_items(path, known_ids={"B1"})
    assert new.column("metadata_text").to_pylist() == ["Rose balm; price: $3.50", "item N2"]
    for table, problem in (
        (pa.table({"item_id": ["N1", "N1"], "title": ["a", "b"]}), "duplicate ids"),
        (pa.table({"item_id": ["B1"], "title": ["a"]}), "already in the index"),
        (
            pa.table(
                {"item_id": [None, "N3"], "title": ["a", "b"]},
                schema=pa.schema([("item_id", pa.string()), ("title", pa.string())]),
            ),
            "null ids",
        ),
        (pa.table({"item_id": ["N1"]}), "no metadata column"),
        (pa.table({"title": ["a"]}), "missing required column"),
    ):
        pq.write_table(table, path)
        with pytest.raises(DataValidationError, match=problem):
            read_new_items(path, known_ids={"B1"})
    with pytest.raises(DataValidationError, match="file not found"):
        read_new_items(str(tmp_path / "absent.parquet"), set())
