"""The students benchmark's run records (what a record's key holds decides which runs a change retrains),
and its controls run for real on the 300-user sample."""

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench import results
from bench import students_beauty as bench
from r2end_core import models, schemas, storage
from r2end_core.config import PipelineConfig
from r2end_core.layout import Layout
from r2end_core.summaries import DistillSummary
from tests.conftest import REPO, prepare_tables, stage_config

FULL_COVERAGE = REPO / "teacher_outputs/beauty-cpu-full"  # the teacher's outputs for every user and item


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
    return {m: key for (m, _), key in bench.keyed(cfg, list(bench.METHODS), [22], "embedded").items()}


def reading(section: str) -> set[str]:
    """The methods whose training reads ``section``, and every student of theirs."""
    direct = {m for m, spec in bench.METHODS.items() if section in spec.sections}
    return {m for m in bench.METHODS if direct & set(bench.closure([m]))}


def test_a_lever_retrains_only_the_methods_that_read_it(storage_paths):
    cfg = PipelineConfig(storage_path=storage_paths[0], prepare={"dataset_path": "/data"})
    before = keys(cfg)
    for section, change in (
        ("project", {"epochs": 40}),
        ("sasrec", {"model": {"dropout": 0.3}}),
        ("fusion", {"weight_grid": [0, 1]}),
    ):
        changed = {m for m, key in keys(cfg.with_section(section, **change)).items() if key != before[m]}
        assert changed == reading(section), section
    assert {bench.TEXT_MODEL, "r2end_twin", "item_mean", "fusion"} <= reading("project")
    assert not {bench.TEXT_MODEL, "r2end_twin"} & reading("sasrec")
    assert bench.record_key(cfg, bench.BASELINE, 23, "embedded", {})[1] != before[bench.BASELINE]  # the seed


def test_only_llm_informed_methods_are_keyed_by_the_teacher_outputs(storage_paths):
    cfg = PipelineConfig(storage_path=storage_paths[0], prepare={"dataset_path": "/data"})
    more = {m: key for (m, _), key in bench.keyed(cfg, list(bench.METHODS), [22], "more teacher outputs").items()}
    changed = {m for m, key in keys(cfg).items() if key != more[m]}
    assert changed == {m for m, spec in bench.METHODS.items() if spec.uses_llm}
    # each student's controls read no LLM text, and have as many parts where it is an ensemble
    for m in bench.CONTROLLED:
        spec, twin = bench.METHODS[m], bench.METHODS[bench.METHODS[m].twin]
        ensemble = bench.METHODS[spec.id_ensemble]
        assert spec.uses_llm and not twin.uses_llm and not ensemble.uses_llm
        assert len(twin.learns_from) == len(spec.learns_from) and twin.sections == spec.sections
        assert len(ensemble.learns_from) == (len(spec.learns_from) if "fusion" in spec.sections else 0)


def test_a_level_names_only_the_llm_informed_models_and_samples_every_folder():
    assert bench.model_name("r2end", 23, "users-18") == "r2end-seed23-users-18"
    assert bench.model_name("r2end_twin", 23, "users-18") == "r2end_twin-seed23"  # the same at every level
    assert bench.level_of("fusion-seed23-users-50") == "users-50" and bench.level_of("fusion-seed23") == "all"
    cfg = PipelineConfig(storage_path="/s", prepare={"dataset_path": "/d"}, embed={"teacher_outputs": ["a", "b"]})
    sampled = bench.at_level(cfg, "users-18").embed.teacher_outputs
    assert [(f.folder, f.sample_users, f.sample_items) for f in sampled] == [("a", 4000, None), ("b", 4000, None)]
    assert bench.at_level(cfg, "all") is cfg


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


def test_an_attempt_killed_outright_has_its_seconds_in_the_ledger(tmp_path, caplog):
    """A SIGKILL runs no handler: what the attempt spent is already in the ledger, from its heartbeat."""
    ledger = str(tmp_path / "logs" / "run.attempts.json")
    seen = []

    def train() -> str:
        time.sleep(0.5)
        seen.append(json.loads(Path(ledger).read_text()))  # what a kill here would leave
        return "summary"

    bench.over_attempts(ledger, "key-a", train, every_s=0.1)
    assert seen[0]["key"] == "key-a" and 0.2 <= seen[0]["seconds"][-1] <= 0.6
    # a ledger that cannot be written (its folder is a file) costs the count, not the run
    (tmp_path / "not-a-folder").write_text("")
    unwritable = str(tmp_path / "not-a-folder" / "run.attempts.json")
    assert bench.over_attempts(unwritable, "key-a", lambda: time.sleep(0.5) or "summary", every_s=0.1)[0] == "summary"
    assert sum(f"writing {unwritable} failed" in r.message for r in caplog.records) >= 2  # it kept beating


@pytest.fixture
def full_coverage_sample(tmp_path, beauty_dir, ray_cluster) -> PipelineConfig:
    """The 300-user sample prepared, with the committed full-coverage teacher outputs restricted to it: every
    user's oracle reasoning and every item's description the teacher wrote (and the summary of the runs that
    wrote them)."""
    from ray_jobs import prepare

    interactions, items = (pq.read_table(Path(beauty_dir) / f"{name}.parquet") for name in ("interactions", "items"))
    folder = tmp_path / "teacher_outputs"
    folder.mkdir()
    for name, key, wanted in (("oracle", "user_id", interactions["user_id"]), ("items", "item_id", items["item_id"])):
        table = pq.read_table(FULL_COVERAGE / f"{name}.parquet")
        pq.write_table(table.filter(pc.is_in(table[key], wanted.unique())), folder / f"{name}.parquet")
    shutil.copy(FULL_COVERAGE / "summary.json", folder)  # the runs that made them: what they cost
    cfg = stage_config(tmp_path, beauty_dir, [str(folder)])[0]
    prepare.run(cfg)
    return cfg


def test_the_controls_run_through_the_benchmark(full_coverage_sample, tmp_path, monkeypatch):
    """The benchmark for real on the 300-user sample with the teacher's full coverage: the best fused student,
    its no-LLM twins (R2END's and DLLM2Rec's, fused) and the ID-only ensemble of as many parts, recorded,
    compared and costed; and a point of the teacher-data curve."""
    cfg = (
        full_coverage_sample.with_section(
            "sasrec", max_epochs=2, batch_size=32, model={"hidden_size": 16, "inner_size": 16}
        )
        # as the benchmark's config distills (bfloat16, length buckets), on texts cut shorter; the item texts
        # encoded in this process (an encoder actor's start costs ~10 s; Ray Data's encoding is tested elsewhere)
        .with_section("embed", max_seq_length=64, ray_data_min_texts=100_000)
        .with_section(
            "distill",
            users="all",
            epochs=2,
            patience=1,
            batch_size=16,
            length_buckets=True,
            dtype="bfloat16",
            checkpoint_every=1000,  # the last step's alone: nothing here resumes a distillation
        )
        .with_section("project", epochs=1)
        .with_section("fusion", weight_grid=[0, 1, 4])
    )
    monkeypatch.setattr(results, "FOLDER", tmp_path)
    monkeypatch.setattr(bench, "RUNS", tmp_path / "students_beauty_runs")
    # a point of the teacher-data curve first: five items described (as items-6 samples 6% of them)
    monkeypatch.setitem(bench.LEVELS, "items-6", {"sample_items": 5})
    bench.benchmark(
        cfg, argparse.Namespace(methods=None, seeds="23,22", level="items-6", records_only=False, plan=False)
    )
    bench.benchmark(
        cfg, argparse.Namespace(methods="fusion_dllm2rec", seeds="23", level="all", records_only=False, plan=False)
    )

    # the level's run trained R2END and its fusion at that level, and their no-LLM controls (level-free)
    curve_point = {bench.model_name(m, 23, "items-6") for m in bench.closure(bench.controls(["r2end", "fusion"]))}
    assert {"r2end-seed23-items-6", "fusion-seed23-items-6", "fusion_twin-seed23"} <= curve_point
    controlled = {bench.model_name(m, 23) for m in bench.closure(bench.controls(["fusion_dllm2rec"]))}
    assert {p.stem for p in bench.RUNS.glob("*.json")} == curve_point | controlled
    layout = Layout(cfg.storage_path)
    student, twin = (
        DistillSummary.read(layout.student(bench.student_name(f"{m}-seed23"), "metrics.json"), "distill")
        for m in ("r2end", "r2end_twin")
    )
    users = layout.read_users().num_rows
    oracle = pq.read_table(Path(cfg.embed.teacher_outputs[0].folder) / "oracle.parquet")
    with_reasoning = oracle.num_rows - oracle["text"].null_count  # the teacher failed on a few users
    # every user, a quarter held out; the students learnt the teacher's reasoning where it wrote one
    assert student.users_distilled == twin.users_distilled == users - student.users_held_out > 0.7 * users
    assert student.users_distilled >= student.users_with_teacher_text > 0.95 * student.users_distilled
    assert twin.users_with_teacher_text == 0
    assert student.best_epoch in (1, 2) and 1 <= len(student.held_out_losses) <= 2
    # the twin's item vectors embed the metadata alone; R2END's, the teacher's description where there is one
    items = storage.read_table(layout.embeddings("items.parquet")).sort_by("item_index")
    vectors = {m: models.load(layout, f"{m}-seed23").item_embeddings for m in ("r2end", "r2end_twin")}
    assert np.allclose(vectors["r2end_twin"], schemas.to_matrix(items["metadata_embedding"]))
    described = items["has_description"].to_numpy(zero_copy_only=False)
    assert described.any() and not np.allclose(vectors["r2end"][described], vectors["r2end_twin"][described])

    shares = json.loads((tmp_path / "llm_share.json").read_text())
    coverage = {"users_with_reasoning": with_reasoning, "items_with_description": int(described.sum())}
    assert shares["coverage"] == coverage
    assert described.mean() > 0.9  # the full coverage: (nearly) every item described
    entry = shares["students"]["fusion_dllm2rec"]
    assert (entry["twin"], entry["id_ensemble"]) == ("fusion_dllm2rec_twin", "id_ensemble_3")
    for control in ("vs_twin", "vs_id_ensemble"):
        assert set(entry[control]["23"]["test"]["ndcg@10"]) == {"diff", "se", "z"}
    # and on the test users of each segment: the long-tail targets are those the tail metrics count
    assert set(shares["segments"]) == set(entry["segments"]) == {"long_tail_target", "cold_target", "short_history"}
    assert all(0 < cut["users"] < users for cut in shares["segments"].values())
    tail_users = json.loads((tmp_path / "students_beauty.json").read_text())["tail_paired_vs_sasrec"]["r2end"]["users"]
    assert entry["segments"]["long_tail_target"]["users"] == tail_users
    assert set(entry["segments"]["cold_target"]["vs_twin"]["ndcg@10"]) >= {"diff", "se", "z"}
    assert shares["students"]["dllm2rec"]["id_ensemble"] == "sasrec"
    costs = shares["costs"]
    assert costs["fusion_dllm2rec"]["parts"] == costs["id_ensemble_3"]["parts"] == 3
    assert costs["id_ensemble_3"]["generation_hours"] == 0 < costs["fusion_dllm2rec"]["generation_hours"]
    assert costs["fusion_dllm2rec"]["training_hours"] > 0
    assert "| fusion_dllm2rec | `fusion_dllm2rec_twin` |" in (tmp_path / "llm_share.md").read_text()
    # the plan (--plan) sees every record hold, and a lever of the fusion alone leaves the fusion to train
    assert all(row["recorded"] for row in bench.plan(cfg, ["fusion_dllm2rec"], [23], "all"))
    lever = cfg.with_section("fusion", weight_grid=[0, 1])
    assert [r["model"] for r in bench.plan(lever, ["fusion_dllm2rec"], [23], "all") if not r["recorded"]] == [
        "fusion_dllm2rec-seed23"
    ]
    # the curve: distillation reads no item description, so the items-6 point's student and R2END's at full
    # teacher data are one: the one trained second (here R2END's) was copied from the first
    point = DistillSummary.read(layout.student(bench.student_name("r2end-seed23-items-6"), "metrics.json"), "distill")
    assert student.copied_from == bench.student_name("r2end-seed23-items-6") and point.copied_from is None
    assert student.weights_id == point.weights_id
    curve = {(p["level"], p["student"]): p for p in shares["curve"]}
    # fusion's points need its twin (fusion_twin), which this run of fusion_dllm2rec's controls did not train
    assert set(curve) == {("items-6", "r2end"), ("all", "r2end")}
    assert curve["items-6", "r2end"]["items_with_description"] == 5 < curve["all", "r2end"]["items_with_description"]
    assert curve["items-6", "r2end"]["vs_id_ensemble"]["control"] == "sasrec"
    # a level's records join the curve only while they hold: a lever of R2END leaves both its points out
    assert set(bench.curve_points(cfg, "items-6", 23)) == {"r2end", "fusion"}
    assert bench.curve_points(cfg.with_section("project", epochs=2), "items-6", 23) == {}
    assert (tmp_path / "llm_share_curve.png").stat().st_size > 0
