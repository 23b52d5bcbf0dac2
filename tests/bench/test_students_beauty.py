"""The students benchmark's run records: what a record's key holds decides which runs a change retrains."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench import students_beauty as bench
from r2end_core.config import PipelineConfig
from r2end_core.layout import Layout
from tests.conftest import prepare_tables


@pytest.fixture
def storage_paths(tmp_path, beauty_dir) -> tuple[str, str]:
    """Two storage paths holding the same prepared tables (the 300-user slice)."""
    _, users, items = prepare_tables(beauty_dir)
    paths = []
    for name in ("here", "elsewhere"):
        layout = Layout(str(tmp_path / name))
        Path(layout.users).mkdir(parents=True)
        pq.write_table(users, Path(layout.users) / "part-0.parquet")
        pq.write_table(items, layout.items)
        paths.append(layout.root)
    return paths[0], paths[1]


def keys(cfg: PipelineConfig) -> dict[str, str]:
    """Each method's key for seed 22, its students keyed by that R2END key, as the benchmark chains them."""
    r2end = {"key": bench.record_key(cfg, bench.TEXT_MODEL, 22, "embedded", None)[1]}
    return {m: bench.record_key(cfg, m, 22, "embedded", r2end)[1] for m in bench.METHODS}


def test_a_lever_retrains_only_the_methods_that_read_it(storage_paths):
    cfg = PipelineConfig(storage_path=storage_paths[0], prepare={"dataset_path": "/data"})
    before = keys(cfg)
    changed = {m for m, key in keys(cfg.with_section("project", epochs=40)).items() if key != before[m]}
    assert changed == {bench.TEXT_MODEL} | {m for m, spec in bench.METHODS.items() if spec.reads_r2end}
    changed = {m for m, key in keys(cfg.with_section("sasrec", model={"dropout": 0.3})).items() if key != before[m]}
    assert changed == set(bench.METHODS) - {bench.TEXT_MODEL}
    assert bench.record_key(cfg, bench.BASELINE, 23, "embedded", None)[1] != before[bench.BASELINE]  # the seed


def test_where_things_lie_is_not_keyed_but_their_content_is(storage_paths):
    here, elsewhere = storage_paths
    cfg = PipelineConfig(storage_path=here, prepare={"dataset_path": "/data"})
    moved = PipelineConfig(storage_path=elsewhere, prepare={"dataset_path": "/copy/of/data"})
    assert keys(moved) == keys(cfg)
    pq.write_table(pq.read_table(Layout(elsewhere).items).slice(1), Layout(elsewhere).items)  # other content
    assert all(key != keys(cfg)[m] for m, key in keys(moved).items())
