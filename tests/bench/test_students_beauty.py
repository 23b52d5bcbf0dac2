"""The students benchmark's run records: what a record's key holds decides which runs a change retrains."""

import time
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
    """Each method's key for seed 22, a student keyed by the records of what it learns from, as the
    benchmark chains them."""
    records: dict[str, dict] = {}
    for m in bench.METHODS:
        records[m] = {"key": bench.record_key(cfg, m, 22, "embedded", records)[1]}
    return {m: r["key"] for m, r in records.items()}


def test_a_lever_retrains_only_the_methods_that_read_it(storage_paths):
    cfg = PipelineConfig(storage_path=storage_paths[0], prepare={"dataset_path": "/data"})
    before = keys(cfg)
    changed = {m for m, key in keys(cfg.with_section("project", epochs=40)).items() if key != before[m]}
    students = {m for m, spec in bench.METHODS.items() if bench.TEXT_MODEL in spec.learns_from}
    assert changed == {bench.TEXT_MODEL} | students
    changed = {m for m, key in keys(cfg.with_section("sasrec", model={"dropout": 0.3})).items() if key != before[m]}
    assert changed == set(bench.METHODS) - {bench.TEXT_MODEL}
    changed = {m for m, key in keys(cfg.with_section("fusion", weight_grid=[0, 1])).items() if key != before[m]}
    assert changed == {"fusion", "fusion_dllm2rec", "fusion_dllm2rec_tail", "fusion_without_sasrec"}
    assert bench.record_key(cfg, bench.BASELINE, 23, "embedded", {})[1] != before[bench.BASELINE]  # the seed


def test_where_things_lie_is_not_keyed_but_their_content_is(storage_paths):
    here, elsewhere = storage_paths
    cfg = PipelineConfig(storage_path=here, prepare={"dataset_path": "/data"})
    moved = PipelineConfig(storage_path=elsewhere, prepare={"dataset_path": "/copy/of/data"})
    assert keys(moved) == keys(cfg)
    pq.write_table(pq.read_table(Layout(elsewhere).items).slice(1), Layout(elsewhere).items)  # other content
    assert all(key != keys(cfg)[m] for m, key in keys(moved).items())


def test_a_run_cut_by_its_time_budget_counts_every_attempt(tmp_path):
    ledger, attempts_made = str(tmp_path / "logs" / "run.attempts.json"), []

    def train(cut_first: bool) -> str:
        attempts_made.append(1)
        time.sleep(0.3)
        if cut_first and len(attempts_made) == 1:
            raise KeyboardInterrupt  # what the budget's SIGINT raises
        return "summary"

    with pytest.raises(KeyboardInterrupt):
        bench.over_attempts(ledger, "key-a", train, True)
    summary, seconds, attempts = bench.over_attempts(ledger, "key-a", train, True)
    assert (summary, attempts) == ("summary", 2) and 0.6 <= seconds < 3
    assert not Path(ledger).exists()  # the record holds it now
    attempts_made.clear()
    with pytest.raises(KeyboardInterrupt):
        bench.over_attempts(ledger, "key-a", train, True)
    _, seconds, attempts = bench.over_attempts(ledger, "key-b", train, True)  # another run: its own count
    assert attempts == 1 and 0.3 <= seconds < 1.5
