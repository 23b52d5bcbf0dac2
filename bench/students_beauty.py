"""Every student of the LLM's knowledge against SASRec on all of Beauty, in one resumable run.

    python -m bench.students_beauty [--config configs/bench/students-beauty.yaml] [--methods sasrec,fusion]

Trains, through the real stages on one Ray cluster, each method in ``METHODS`` with the first seed:
SASRec (the baseline recipe), R2END (embed, distill, project), DLLM2Rec and its two ablations, profile
distillation from each profile source, and our fused students (trained models' scores summed, the
weights chosen on validation). Then it picks the best LLM-informed student by validation NDCG@10 among
those keeping ``TAIL_GOAL`` times SASRec's validation long-tail HR@10 (``best_student``) and trains
SASRec, R2END, that student and the models it learns from with every seed in ``SEEDS``. A student learns
from the models of its own seed, so a seed repeats the whole chain. Every model selects
its epoch (a fusion its weights) on validation; the test split is scored once per model.

A finished run is recorded in ``bench/results/students_beauty_runs/`` (its summary, its per-user ranks and
a digest of what made it: the config sections its training reads, the prepared data, the embedded teacher
outputs and the records of the models it learns from) and is reused while that digest holds. The
records are committed, so the benchmark goes on across sessions and machines that keep no artifacts: a
session trains what is not yet recorded (and a model a student learns from again, where that student still
has to train and the model is not in the storage path); a run killed mid-way resumes from its Ray Train
checkpoint. Writes
bench/results/students_beauty.json (``methods.<name>.test.{hr@10,...}``,
``paired_vs_sasrec.<name>.test.ndcg@10.{diff,se,z}``, ``tail_paired_vs_sasrec``, ``seeds``,
``paired_vs_sasrec_over_seeds``), .md, the per-user ranks (``students_beauty_ranks.parquet``) and two plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench import paired, results
from r2end_core import models, storage
from r2end_core.config import PipelineConfig
from r2end_core.data.splits import Split
from r2end_core.eval import metrics
from r2end_core.eval.evaluate import EvalSet
from r2end_core.layout import Layout
from r2end_core.summaries import TrainSummary
from ray_jobs import distill, embed, project, train_dllm2rec, train_fusion, train_profile, train_sasrec
from ray_jobs.runtime import log, run_stage

BENCHMARK = "students_beauty"
# the first trains every method; 23 first since seed 22's R2END (the teacher of three students) was made on a
# machine since lost, and re-making it costs 85 min on 2 cores
SEEDS = (23, 22, 24)
BASELINE, TEXT_MODEL = "sasrec", "r2end"
# the issue's goal for the best student: above SASRec without losing the text path's long-tail lead, at
# least this multiple of SASRec's long-tail HR@10
TAIL_GOAL = 1.5
METRICS = [f"{m}@{k}" for k in (5, 10, 20) for m in ("hr", "ndcg")] + ["tail_hr@10", "tail_ndcg@10"]
# what the seeds table spreads: the goal's metrics
SEED_METRICS = ("hr@10", "ndcg@10", "tail_hr@10")


def teacher_name(seed: int) -> str:
    return f"{TEXT_MODEL}-seed{seed}"


def student_name(seed: int) -> str:
    """R2END's distilled text encoder."""
    return f"student-oracle-seed{seed}"


def with_teacher(cfg: PipelineConfig, seed: int) -> PipelineConfig:
    """The students' R2END model (and its distilled encoder): the one trained with ``seed``."""
    with_r2end = cfg.with_section("dllm2rec", teacher=teacher_name(seed))
    return with_r2end.with_section("profile", student_run=student_name(seed))


def with_seed(cfg: PipelineConfig, seed: int) -> PipelineConfig:
    return cfg.with_section("sasrec", seed=seed)


def train_r2end(cfg: PipelineConfig, seed: int) -> TrainSummary:
    """Distill the oracle student and project it, both with ``seed``: R2END's whole training variance."""
    student = student_name(seed)
    run_cfg = cfg.with_section("distill", target="oracle", run_name=student, seed=seed).with_section(
        "project", run_name=teacher_name(seed), student_run=student, seed=seed
    )
    distill.run(run_cfg)
    return project.run(run_cfg)


def dllm2rec(**changes) -> Callable[[PipelineConfig, int, str], TrainSummary]:
    def train(cfg: PipelineConfig, seed: int, name: str) -> TrainSummary:
        return train_dllm2rec.run(with_seed(cfg, seed).with_section("dllm2rec", run_name=name, **changes))

    return train


def profile_from(source: str) -> Callable[[PipelineConfig, int, str], TrainSummary]:
    def train(cfg: PipelineConfig, seed: int, name: str) -> TrainSummary:
        return train_profile.run(with_seed(cfg, seed).with_section("profile", run_name=name, source=source))

    return train


def fusion_of(*parts: str, min_long_tail_ratio: float = 0.0) -> Callable[[PipelineConfig, int, str], TrainSummary]:
    def train(cfg: PipelineConfig, seed: int, name: str) -> TrainSummary:
        models_of_seed = [model_name(p, seed) for p in parts]
        fused = with_seed(cfg, seed).with_section(
            "fusion", run_name=name, parts=models_of_seed, min_long_tail_ratio=min_long_tail_ratio
        )
        return train_fusion.run(fused)

    return train


@dataclass(frozen=True)
class Method:
    """How one method trains (``train(cfg, seed, model name)``) and what it is, for the report."""

    train: Callable[[PipelineConfig, int, str], TrainSummary]
    about: str
    sections: tuple[str, ...]  # the config sections its training reads, beside prepare and resources
    learns_from: tuple[str, ...] = ()  # the methods whose trained models (of its seed) it reads


RANKED_BY_TEACHER = ("dllm2rec", "dllm2rec_no_embedding")  # DLLM2Rec with its ranking term
DLLM2REC, PROFILE, FUSION = (
    ("sasrec", "dllm2rec", "embed"),
    ("sasrec", "profile", "embed"),
    ("sasrec", "fusion", "embed"),
)
METHODS = {
    BASELINE: Method(
        lambda cfg, seed, name: train_sasrec.run(with_seed(cfg, seed).with_section("sasrec", run_name=name)),
        "SASRec, full-softmax CE: the baseline recipe",
        ("sasrec",),
    ),
    TEXT_MODEL: Method(
        lambda cfg, seed, name: train_r2end(cfg, seed),
        "R2END: distilled text encoder + projection",
        ("embed", "distill", "project"),
    ),
    "dllm2rec": Method(
        dllm2rec(), "DLLM2Rec: R2END's rankings + the LLM's item descriptions into SASRec", DLLM2REC, (TEXT_MODEL,)
    ),
    "dllm2rec_no_ranking": Method(dllm2rec(ranking_weight=0.0), "DLLM2Rec without ranking distillation", DLLM2REC),
    "dllm2rec_no_embedding": Method(
        dllm2rec(embedding_weight=0.0), "DLLM2Rec without embedding distillation", DLLM2REC, (TEXT_MODEL,)
    ),
    "profile_generated": Method(profile_from("generated"), "profile distillation: the LLM's user profiles", PROFILE),
    "profile_oracle": Method(
        profile_from("oracle"), "profile distillation: the LLM's oracle reasoning, embedded", PROFILE
    ),
    "profile_student": Method(
        profile_from("student"), "profile distillation: the R2END student's embeddings", PROFILE, (TEXT_MODEL,)
    ),
    "fusion": Method(
        fusion_of(BASELINE, TEXT_MODEL),
        "ours: SASRec's and R2END's scores, summed with the weight validation chose",
        FUSION,
        (BASELINE, TEXT_MODEL),
    ),
    "fusion_dllm2rec": Method(
        fusion_of(BASELINE, "dllm2rec", TEXT_MODEL),
        "ours: SASRec's, DLLM2Rec's and R2END's scores, summed with the weights validation chose",
        FUSION,
        (BASELINE, "dllm2rec", TEXT_MODEL),
    ),
    "fusion_dllm2rec_tail": Method(
        fusion_of(BASELINE, "dllm2rec", TEXT_MODEL, min_long_tail_ratio=TAIL_GOAL),
        f"ours: SASRec's, DLLM2Rec's and R2END's scores, the weights validation chose among those keeping "
        f"{TAIL_GOAL}x SASRec's long-tail HR@10",
        FUSION,
        (BASELINE, "dllm2rec", TEXT_MODEL),
    ),
    # whether the fusion needs plain SASRec: DLLM2Rec already leads SASRec on the tail, which SASRec's
    # share of a fused score gives back
    "fusion_without_sasrec": Method(
        fusion_of("dllm2rec", TEXT_MODEL),
        "ours: DLLM2Rec's and R2END's scores, summed with the weight validation chose",
        FUSION,
        ("dllm2rec", TEXT_MODEL),
    ),
}


def model_name(method: str, seed: int) -> str:
    return teacher_name(seed) if method == TEXT_MODEL else f"{method}-seed{seed}"


RUNS = results.FOLDER / f"{BENCHMARK}_runs"  # committed: <model>.json (the record), <model>_ranks.parquet


def train_or_reuse(cfg: PipelineConfig, method: str, seed: int, embedded: str, learnt_from: dict[str, dict]) -> dict:
    """``{"key", "summary": TrainSummary fields, "seconds": training wall time over its attempts, "attempts",
    "provenance", "reused": bool}`` for one run. ``embedded``: the digest of the embedded teacher outputs
    (what every method but SASRec reads); ``learnt_from``: the records of this seed's runs of the methods it
    learns from."""
    layout, spec, cfg = Layout(cfg.storage_path), METHODS[method], with_teacher(cfg, seed)
    name = model_name(method, seed)
    settings, key = record_key(cfg, method, seed, embedded, learnt_from)
    record = RUNS / f"{name}.json"
    if record.exists() and (recorded := json.loads(record.read_text()))["key"] == key:
        return {**recorded, "reused": True}
    for part in spec.learns_from:
        in_storage(cfg, part, seed, method)
    # made before the student trains, so that its wall time is not counted as the student's
    ranked = rankings_cost(cfg, layout) if method in RANKED_BY_TEACHER else None
    log.info(f"{BENCHMARK}: training {method} with seed {seed}")
    summary, seconds, attempts = over_attempts(
        layout.logs(f"{BENCHMARK}-{name}.attempts.json"), key, spec.train, cfg, seed, name
    )
    run = {
        "key": key,
        "summary": summary.model_dump(mode="json"),
        "seconds": seconds,
        "attempts": attempts,
        "provenance": results.provenance(settings),
    }
    if ranked:
        run["teacher_rankings"] = ranked
    for part in spec.learns_from:  # which models it learnt from, beside the one its row reports
        run[f"{part}_version"] = models.read_manifest(layout, model_name(part, seed)).version
    RUNS.mkdir(exist_ok=True)
    ranks = layout.model_version(summary.model, summary.version, "ranks.parquet")
    pq.write_table(storage.read_table(ranks), RUNS / f"{name}_ranks.parquet", compression="zstd")
    record.write_text(json.dumps(run, indent=2, sort_keys=True))
    return {**run, "reused": False}


def over_attempts(ledger: str, key: str, train: Callable[..., TrainSummary], *args) -> tuple[TrainSummary, float, int]:
    """(``train(*args)``, its wall seconds summed over every attempt, how many attempts). An attempt that does
    not finish (a time budget's SIGINT, a failure) adds its seconds to ``ledger`` (for the run ``key``) before
    it ends; the next resumes from its checkpoints, so what the run cost is the sum, not the last attempt."""
    earlier = storage.read_json(ledger) if storage.exists(ledger) else {}
    spent = earlier["seconds"] if earlier.get("key") == key else []  # another key: a different run
    started = time.time()
    try:
        summary = train(*args)
    except BaseException:  # SIGINT raises KeyboardInterrupt, or SystemExit inside Ray Train's fit
        storage.write_json({"key": key, "seconds": [*spent, round(time.time() - started, 1)]}, ledger)
        raise
    if earlier:
        storage.delete_file(ledger)
    return summary, round(sum(spent) + time.time() - started, 1), len(spent) + 1


def in_storage(cfg: PipelineConfig, method: str, seed: int, student: str) -> None:
    """``method``'s model of ``seed`` in the storage path, for ``student`` to learn from: trained again (what
    it learns from first) where its record came from an earlier session's machine."""
    for part in METHODS[method].learns_from:
        in_storage(cfg, part, seed, method)
    if not storage.exists(Layout(cfg.storage_path).model_latest(model_name(method, seed))):
        log.info(f"{BENCHMARK}: re-making {method} with seed {seed} (recorded by an earlier session) for {student}")
        METHODS[method].train(cfg, seed, model_name(method, seed))


def record_key(
    cfg: PipelineConfig, method: str, seed: int, embedded: str, learnt_from: dict[str, dict]
) -> tuple[dict, str]:
    """(the settings a run is keyed by, the digest of everything that made it). ``cfg``: with its seed's
    teacher. Every setting of the sections its training reads, defaults included (a changed default must
    not reuse a run made under the old one), so a lever of one method retrains only that method and its
    students; a student keys the models it learns from through their records (``learnt_from``). Not where
    things lie: what was read is keyed by its content (the prepared tables; the embedded teacher outputs),
    so a record holds on any machine."""
    dumped = cfg.model_dump(mode="json")
    settings = {section: dumped[section] for section in ("prepare", "resources", *METHODS[method].sections)}
    del settings["prepare"]["dataset_path"]
    if "embed" in settings:
        del settings["embed"]["teacher_outputs"]
    prepared = Layout(cfg.storage_path).prepared_digest()
    made_by = {"config": settings, "prepared": prepared, "method": method, "seed": seed}
    if method != BASELINE:
        made_by["embedded"] = embedded
    for part in METHODS[method].learns_from:  # the recipe that made it: a later session re-makes its model
        made_by[part] = learnt_from[part]["key"]
    return settings, storage.digest(made_by)


def ranks_of(summary: dict) -> pa.Table:
    return pq.read_table(RUNS / f"{summary['model']}_ranks.parquet")


def paired_vs(base: pa.Table, others: dict[str, pa.Table]) -> dict:
    """``{name: {split: {hr@10|ndcg@10: {diff, se, z}, users, only_it_hits, only_base_hits}}}``."""
    compared = paired.compare({BASELINE: base, **others})
    return {
        name: {
            split: {
                "users": d["users"],
                "only_it_hits": d["only_a_hits"],
                "only_base_hits": d["only_b_hits"],
                **{m: brief(d[m]) for m in ("hr@10", "ndcg@10")},
            }
            for split, d in splits.items()
        }
        for name, splits in compared.items()
    }


def benchmark(cfg: PipelineConfig, args) -> None:
    started, layout = time.time(), Layout(cfg.storage_path)
    chosen = args.methods.split(",")
    if not all(s.strip().isdigit() for s in args.seeds.split(",")):
        raise SystemExit(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 22,23,24")
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"--seeds {args.seeds!r}: a seed is repeated")
    if unknown := [m for m in chosen if m not in METHODS]:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    chosen = set(chosen) | {part for m in chosen for part in METHODS[m].learns_from}  # and their teachers
    embedded = embed.run(cfg)
    runs: dict[str, dict[int, dict]] = {}

    def train(method: str, seed: int) -> dict:
        learnt_from = {part: runs[part][seed] for part in METHODS[method].learns_from}
        return train_or_reuse(cfg, method, seed, embedded.inputs_digest, learnt_from)

    for method in [m for m in METHODS if m in chosen]:  # METHODS lists a student after what it learns from
        runs[method] = {seeds[0]: train(method, seeds[0])}
    best = best_student({m: by_seed[seeds[0]]["summary"]["valid"] for m, by_seed in runs.items()})
    seeded = {BASELINE, TEXT_MODEL} | ({best, *METHODS[best].learns_from} if best else set())
    for method in [m for m in METHODS if m in seeded and m in runs]:
        for seed in seeds[1:]:
            runs[method][seed] = train(method, seed)
    out = summarise(layout, runs, best, seeds)
    out["setup"] = {
        "users": layout.read_users().num_rows,
        "items": layout.read_items().num_rows,
        "seeds": seeds,
        "text_model": teacher_name(seeds[0]),
        "teacher_outputs": [relative(s.folder) for s in cfg.embed.teacher_outputs or []],
        "embedded_targets": embedded.targets,
        "items_with_description": embedded.items_with_description,
        # the first record that made them says what they cost (a later one found them made)
        "teacher_rankings": min(
            (r["teacher_rankings"] for by_seed in runs.values() for r in by_seed.values() if "teacher_rankings" in r),
            key=lambda ranked: ranked["seconds"] is None,
            default=None,
        ),
        "sasrec": cfg.sasrec.model_dump(mode="json"),
    }
    out["total_wall_time_s"] = round(time.time() - started, 1)
    out["machine"] = results.machine()
    plot(out)
    results.write(BENCHMARK, out, report(out), cfg.model_dump(mode="json"))


def relative(folder: str) -> str:
    """A folder of this repository as the repository names it (the report is read beside the code)."""
    path, root = Path(folder), results.FOLDER.parent.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else folder


def rankings_cost(cfg: PipelineConfig, layout: Layout) -> dict:
    """DLLM2Rec's teacher rankings, made once before its students train, and what making them cost (None:
    an earlier run made them; its log says how long it took)."""
    named, table, seconds = train_dllm2rec.rankings(cfg, layout)
    return {"teacher": named, "positions": cfg.dllm2rec.positions, "instances": table.num_rows, "seconds": seconds}


def ratio(value: float, base: float) -> float | None:
    return value / base if base else None


def tail_paired(layout: Layout, base: pa.Table, others: dict[str, pa.Table]) -> dict:
    """``{name: {users, hr@10|ndcg@10: {diff, se, z}}}`` against SASRec on the test users whose target is a
    long-tail item (the users the tail metrics count)."""
    scored = EvalSet.build(layout.read_users(), layout.read_items(), Split.TEST)
    tail = pa.array([u for u, in_tail in zip(scored.user_ids, scored.tail[scored.targets]) if in_tail])
    test = {
        name: t.filter(pc.and_(pc.equal(t["split"], "test"), pc.is_in(t["user_id"], tail)))
        for name, t in {BASELINE: base, **others}.items()
    }
    ranks = paired.aligned_ranks(test, "test")
    out = {}
    for name in others:
        d = metrics.paired_difference(ranks[name], ranks[BASELINE])
        out[name] = {"users": d["users"], **{m: brief(d[m]) for m in ("hr@10", "ndcg@10")}}
    return out


def brief(difference: dict) -> dict:
    return {"diff": difference["difference"], "se": difference["se"], "z": difference["z"]}


def best_student(valid: dict[str, dict]) -> str | None:
    """The best LLM-informed student by validation NDCG@10 among those whose validation long-tail HR@10 is at
    least ``TAIL_GOAL`` times SASRec's (all of them where none is, or SASRec did not run). ``valid``: each
    method's validation metrics.

    >>> best_student({"sasrec": {"ndcg@10": 0.07, "tail_hr@10": 0.05}, "r2end": {"ndcg@10": 0.05, "tail_hr@10": 0.07},
    ...               "a": {"ndcg@10": 0.081, "tail_hr@10": 0.07}, "b": {"ndcg@10": 0.078, "tail_hr@10": 0.08}})
    'b'
    """
    students = [m for m in valid if m not in (BASELINE, TEXT_MODEL)]
    base = valid.get(BASELINE, {}).get("tail_hr@10")
    keeping = [m for m in students if base is not None and valid[m]["tail_hr@10"] >= TAIL_GOAL * base]
    return max(keeping or students, key=lambda m: valid[m]["ndcg@10"]) if students else None


def summarise(layout: Layout, runs: dict[str, dict[int, dict]], best: str | None, seeds: list[int]) -> dict:
    first = seeds[0]
    ranks = {m: ranks_of(by_seed[first]["summary"]) for m, by_seed in runs.items()}
    methods = {
        m: {
            "about": METHODS[m].about,
            "model": by_seed[first]["summary"]["model"],
            "version": by_seed[first]["summary"]["version"],
            "valid": by_seed[first]["summary"]["valid"],
            "test": by_seed[first]["summary"]["test"],
            "best_epoch": by_seed[first]["summary"]["best_epoch"],
            "training_s": by_seed[first]["seconds"],
            # None: a record made before its attempts were summed, whose training_s covers only the last
            "attempts": by_seed[first].get("attempts"),
            # such a run that resumed another's checkpoint: epochs_s, what its epochs took over every attempt
            # (None: a run made before epochs were timed, or no epochs)
            "resumed_from_epoch": by_seed[first]["summary"].get("resumed_from_epoch") or 0,
            "epochs_s": by_seed[first]["summary"].get("train_seconds"),
            "reused": by_seed[first]["reused"],
        }
        for m, by_seed in runs.items()
    }
    selection = (
        f"the best LLM-informed student by validation NDCG@10 with seed {first} among those keeping {TAIL_GOAL}x "
        "SASRec's validation long-tail HR@10 (among all where none does)"
    )
    out: dict = {"methods": methods, "best_student": best, "selection": selection}
    if BASELINE in ranks:
        base = ranks.pop(BASELINE)
        out["paired_vs_sasrec"] = paired_vs(base, ranks)
        out["tail_paired_vs_sasrec"] = tail_paired(layout, base, ranks)
        base_tail = methods[BASELINE]["test"]["tail_hr@10"]
        out["tail_hr@10_vs_sasrec"] = {m: ratio(methods[m]["test"]["tail_hr@10"], base_tail) for m in ranks}
    seeded = {m: by_seed for m, by_seed in runs.items() if len(by_seed) > 1}
    out["seeds"] = {
        m: {
            "runs": {str(s): {k: r["summary"]["test"][k] for k in SEED_METRICS} for s, r in by_seed.items()},
            **{
                k: {
                    "mean": float(np.mean([r["summary"]["test"][k] for r in by_seed.values()])),
                    "sd": float(np.std([r["summary"]["test"][k] for r in by_seed.values()], ddof=1)),
                }
                for k in SEED_METRICS
            },
        }
        for m, by_seed in seeded.items()
    }
    if BASELINE in seeded:  # each seed's student against the same seed's SASRec
        out["paired_vs_sasrec_by_seed"] = {
            m: {
                str(s): paired_vs(ranks_of(seeded[BASELINE][s]["summary"]), {m: ranks_of(r["summary"])})[m]["test"]
                for s, r in by_seed.items()
                if s in seeded[BASELINE]
            }
            for m, by_seed in seeded.items()
            if m != BASELINE
        }
        out["paired_vs_sasrec_over_seeds"] = {
            m: over_seeds(by_seed, selected=first if m == best else None)
            for m, by_seed in out["paired_vs_sasrec_by_seed"].items()
            if len(by_seed) > 1
        }
    every = {m: ranks_of(by_seed[first]["summary"]) for m, by_seed in runs.items()}
    pq.write_table(
        pa.concat_tables(t.append_column("method", pa.array([m] * t.num_rows)) for m, t in every.items()),
        paired.ranks_path(BENCHMARK),
        compression="zstd",
    )
    return out


def over_seeds(by_seed: dict[str, dict], selected: int | None) -> dict:
    """``{hr@10|ndcg@10: {diff, se, within_seed_se[, diff_other_seeds]}}``: the mean over seeds of the paired
    difference against the same seed's SASRec, with the standard error of that mean from the seeds' spread
    (sd / sqrt(seeds)) and the mean within-seed paired s.e. beside it. ``selected``: the seed the student
    was chosen on, whose difference is optimistic; ``diff_other_seeds`` leaves it out."""
    out = {}
    for m in ("hr@10", "ndcg@10"):
        diffs = np.array([d[m]["diff"] for d in by_seed.values()])
        out[m] = {
            "diff": float(diffs.mean()),
            "se": float(diffs.std(ddof=1) / np.sqrt(len(diffs))),
            "within_seed_se": float(np.mean([d[m]["se"] for d in by_seed.values()])),
        }
        if selected is not None:
            others = [d[m]["diff"] for seed, d in by_seed.items() if seed != str(selected)]
            out[m]["diff_other_seeds"] = float(np.mean(others))
    return out


def signed(difference: dict) -> str:
    return f"{difference['diff']:+.4f} ± {difference['se']:.4f}"


def times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def minutes(method: dict) -> str:
    """A method's training minutes over its attempts; for a record made before attempts were summed that
    resumed another's checkpoint, where it resumed and what its epochs took in all."""
    shown = f"{method['training_s'] / 60:.0f}"
    if (method.get("attempts") or 1) > 1:
        shown += f" ({method['attempts']} attempts)"
    elif method["resumed_from_epoch"] and not method.get("attempts"):
        shown += f" (from epoch {method['resumed_from_epoch'] + 1}"
        shown += f"; epochs {method['epochs_s'] / 60:.0f} in all)" if method.get("epochs_s") else ")"
    return shown


def report(out: dict) -> str:
    methods, setup = out["methods"], out["setup"]
    seeds = setup["seeds"]
    base = methods.get(BASELINE)
    lines = [
        "# LLM-informed students against SASRec on Amazon Beauty (all users, full-item ranking)",
        "",
        f"{setup['users']:,} users, {setup['items']:,} items, leave-one-out, history masked; every model's epoch "
        f"chosen on validation NDCG@10, the test split scored once. Seed {seeds[0]} below"
        + (
            f"; SASRec, R2END and the best student (`{out['best_student']}`: {out['selection']}) with seeds "
            f"{', '.join(map(str, seeds))} further down."
            if out["seeds"]
            else "."
        ),
        "",
        "| method | H@5 | N@5 | H@10 | N@10 | H@20 | N@20 | tail H@10 | tail N@10 | cov@10 | valid N@10 | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in methods.items():
        t = r["test"]
        lines.append(
            f"| {m} | "
            + " | ".join(f"{t[k]:.4f}" for k in METRICS)
            + f" | {t['coverage@10']:.3f} | {r['valid']['ndcg@10']:.4f} | {minutes(r)} |"
        )
    footnotes = []
    if any(r["resumed_from_epoch"] and not r.get("attempts") for r in methods.values()):
        footnotes.append(
            "(from epoch N): a run recorded before a run's attempts were summed resumed an earlier attempt's "
            "checkpoint, so its minutes cover epochs N on only; (epochs M in all): what its epochs took over every "
            "attempt."
        )
    if any((r.get("attempts") or 1) > 1 for r in methods.values()):
        footnotes.append("(N attempts): a time budget cut the run N − 1 times; its minutes sum every attempt.")
    if footnotes:
        lines += ["", " ".join(footnotes)]
    if out.get("paired_vs_sasrec"):
        lines += [
            "",
            "Paired against SASRec on the same users (test; `students_beauty_ranks.parquet` holds every user's ranks):",
            "",
            "| method | H@10 − SASRec (± s.e.) | z | N@10 − SASRec (± s.e.) | z | N@10 ratio "
            "| tail H@10 ratio | tail users: H@10 − SASRec (± s.e.) | z |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m, splits in out["paired_vs_sasrec"].items():
            d, tail = splits["test"], out["tail_paired_vs_sasrec"][m]["hr@10"]
            lines.append(
                f"| {m} | {signed(d['hr@10'])} | {d['hr@10']['z']:+.2f} "
                f"| {signed(d['ndcg@10'])} | {d['ndcg@10']['z']:+.2f} "
                f"| {times(ratio(methods[m]['test']['ndcg@10'], base['test']['ndcg@10']))} "
                f"| {times(out['tail_hr@10_vs_sasrec'][m])} | {signed(tail)} | {tail['z']:+.2f} |"
            )
        tail_users = next(iter(out["tail_paired_vs_sasrec"].values()), {}).get("users", 0)
        lines += ["", f"Tail users: the {tail_users:,} test users whose target is a long-tail item (not the top 20%)."]
    if out["seeds"]:
        lines += [
            "",
            "Seeds (test, mean ± sd over the seeds; against the same seed's SASRec: the paired z of N@10 and the "
            "ratio of long-tail H@10):",
            "",
        ]
        lines += ["| method | " + " | ".join(f"seed {s} H@10 / N@10 (z; tail)" for s in seeds) + " | H@10 | N@10 |"]
        lines += ["|---" * (len(seeds) + 3) + "|"]
        base_runs = out["seeds"].get(BASELINE, {}).get("runs", {})
        for m, s in out["seeds"].items():
            by_seed = out.get("paired_vs_sasrec_by_seed", {}).get(m, {})
            cells = [
                f"{r['hr@10']:.4f} / {r['ndcg@10']:.4f}"
                + (
                    f" ({by_seed[seed]['ndcg@10']['z']:+.1f}; "
                    f"{times(ratio(r['tail_hr@10'], base_runs[seed]['tail_hr@10']))})"
                    if seed in by_seed
                    else ""
                )
                for seed, r in s["runs"].items()
            ]
            lines.append(
                f"| {m} | {' | '.join(cells)} | {s['hr@10']['mean']:.4f} ± {s['hr@10']['sd']:.4f} "
                f"| {s['ndcg@10']['mean']:.4f} ± {s['ndcg@10']['sd']:.4f} |"
            )
    if out.get("paired_vs_sasrec_over_seeds"):
        lines += [
            "",
            "Over the seeds, paired against the same seed's SASRec (test): the mean difference ± its s.e. from the "
            "seeds' spread (the mean within-seed s.e. in brackets); the best student's difference without the seed "
            "it was chosen on, whose result is optimistic:",
            "",
            "| method | H@10 − SASRec | N@10 − SASRec | N@10 − SASRec without the choosing seed |",
            "|---|---|---|---|",
        ]
        for m, d in out["paired_vs_sasrec_over_seeds"].items():
            other = d["ndcg@10"].get("diff_other_seeds")
            lines.append(
                f"| {m} | {signed(d['hr@10'])} ({d['hr@10']['within_seed_se']:.4f}) "
                f"| {signed(d['ndcg@10'])} ({d['ndcg@10']['within_seed_se']:.4f}) "
                f"| {'–' if other is None else f'{other:+.4f}'} |"
            )
    lines += ["", "Methods:", ""] + [f"- `{m}`: {r['about']}" for m, r in methods.items()]
    ranked = setup["teacher_rankings"]
    lines += [
        "",
        f"R2END (`{setup['text_model']}` with seed {seeds[0]}; each seed's students learn from that seed's R2END) "
        "and every student learn from the teacher outputs "
        f"{', '.join(f'`{f}`' for f in setup['teacher_outputs']) or 'generated in this storage path'}: "
        f"embedded targets {setup['embedded_targets']}; "
        f"{setup['items_with_description']:,} items have a teacher description (the alphabetically first ids, "
        "where a time budget cut the run, not a sample).",
    ]
    if ranked:
        made = f"{ranked['seconds']:.0f} s" if ranked["seconds"] else "made by an earlier run (see its log)"
        lines.append(
            f"DLLM2Rec's teacher rankings ({ranked['positions']} positions): {ranked['instances']:,} instances, {made}."
        )
    lines += [
        "",
        "Minutes: the wall time of a method's own stages on this machine (R2END: distill and project; a fusion: "
        "its weight search, its parts' minutes are on their rows). History texts are encoded once into a shared "
        "cache, so the first method to need a text counts its encoding.",
        "",
        f"Plots: `{BENCHMARK}_metrics.png`" + (f", `{BENCHMARK}_seeds.png`." if out["seeds"] else "."),
    ]
    return "\n".join(lines) + "\n"


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["methods"])
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, keys, title in (
        (axes[0], ("hr@10", "ndcg@10"), "all users (test)"),
        (axes[1], ("tail_hr@10", "tail_ndcg@10"), "users whose target is a long-tail item (test)"),
    ):
        for offset, key in zip((-0.2, 0.2), keys):
            ax.bar(x + offset, [out["methods"][n]["test"][key] for n in names], 0.4, label=key.upper())
        ax.set_xticks(x, [n.replace("_", " ") for n in names], rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(results.FOLDER / f"{BENCHMARK}_metrics.png", dpi=110)
    plt.close(fig)

    if not out["seeds"]:  # one seed so far: nothing to spread
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (m, s) in enumerate(out["seeds"].items()):
        values = [r["ndcg@10"] for r in s["runs"].values()]
        ax.scatter([i] * len(values), values, label=m)
        ax.errorbar([i + 0.15], [s["ndcg@10"]["mean"]], yerr=[s["ndcg@10"]["sd"]], fmt="o", color="black")
    ax.set_xticks(range(len(out["seeds"])), list(out["seeds"]))
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"seeds {', '.join(map(str, out['setup']['seeds']))} (mean ± sd in black)")
    fig.tight_layout()
    fig.savefig(results.FOLDER / f"{BENCHMARK}_seeds.png", dpi=110)
    plt.close(fig)


def arguments(parser) -> None:
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    parser.add_argument(
        "--seeds",
        default=",".join(map(str, SEEDS)),
        help="comma-separated seeds: every method trains with the first, SASRec, R2END and the best student with all",
    )


if __name__ == "__main__":
    run_stage(
        __doc__,
        benchmark,
        f"bench-{BENCHMARK}",
        default_config="configs/bench/students-beauty.yaml",
        add_arguments=arguments,
    )
