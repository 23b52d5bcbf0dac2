"""Every student of the LLM's knowledge against SASRec on all of Beauty, in one resumable run.

    python -m bench.students_beauty [--config configs/bench/students-beauty.yaml] [--methods sasrec,fusion]

Trains, through the real stages on one Ray cluster, each method in ``METHODS`` with the first seed:
SASRec (the baseline recipe), R2END (embed, distill, project), DLLM2Rec and its two ablations, profile
distillation from each profile source, and our fused student. Then it picks the best LLM-informed
student by validation NDCG@10 and trains SASRec, R2END and that student with every seed in ``SEEDS``.
Every student learns from the first seed's R2END model.
Every model selects its epoch on validation; the test split is scored once per model.

A finished run is recorded under ``bench_runs/students_beauty/`` with a digest of what made it (its
config, the prepared data, the teacher model's version) and is reused while that digest holds; a run
killed mid-way resumes from its Ray Train checkpoint. Writes bench/results/students_beauty.json
(``methods.<name>.test.{hr@10,...}``, ``paired_vs_sasrec.<name>.test.ndcg@10.{diff,se,z}``), .md,
the per-user ranks (``students_beauty_ranks.parquet``) and two plots.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import paired, results
from r2end_core import models, storage
from r2end_core.config import PipelineConfig
from r2end_core.layout import Layout
from r2end_core.summaries import TrainSummary
from ray_jobs import distill, embed, project, train_dllm2rec, train_fusion, train_profile, train_sasrec
from ray_jobs.runtime import log, run_stage

BENCHMARK = "students_beauty"
SEEDS = (22, 23, 24)
BASELINE, TEXT_MODEL = "sasrec", "r2end"
METRICS = [f"{m}@{k}" for k in (5, 10, 20) for m in ("hr", "ndcg")] + ["tail_hr@10", "tail_ndcg@10"]


def teacher_name(seed: int) -> str:
    return f"{TEXT_MODEL}-seed{seed}"


def student_name(seed: int) -> str:
    """R2END's distilled text encoder."""
    return f"student-oracle-seed{seed}"


def with_teacher(cfg: PipelineConfig, seed: int) -> PipelineConfig:
    """Every student's teacher: the R2END model (and its distilled encoder) trained with ``seed``."""
    return (
        cfg.with_section("dllm2rec", teacher=teacher_name(seed))
        .with_section("fusion", text_model=teacher_name(seed))
        .with_section("profile", student_run=student_name(seed))
    )


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


@dataclass(frozen=True)
class Method:
    """How one method trains (``train(cfg, seed, model name)``) and what it is, for the report."""

    train: Callable[[PipelineConfig, int, str], TrainSummary]
    about: str
    reads_teacher: bool = False  # learns from the R2END model: an LLM-informed student


RANKED_BY_TEACHER = ("dllm2rec", "dllm2rec_no_embedding")  # DLLM2Rec with its ranking term
METHODS = {
    BASELINE: Method(
        lambda cfg, seed, name: train_sasrec.run(with_seed(cfg, seed).with_section("sasrec", run_name=name)),
        "SASRec, full-softmax CE: the baseline recipe",
    ),
    TEXT_MODEL: Method(lambda cfg, seed, name: train_r2end(cfg, seed), "R2END: distilled text encoder + projection"),
    "dllm2rec": Method(dllm2rec(), "DLLM2Rec: ranking + embedding distillation into SASRec", True),
    "dllm2rec_no_ranking": Method(dllm2rec(ranking_weight=0.0), "DLLM2Rec without ranking distillation", True),
    "dllm2rec_no_embedding": Method(dllm2rec(embedding_weight=0.0), "DLLM2Rec without embedding distillation", True),
    "profile_generated": Method(profile_from("generated"), "profile distillation: the teacher's profiles", True),
    "profile_oracle": Method(profile_from("oracle"), "profile distillation: R2END's oracle embeddings", True),
    "profile_student": Method(profile_from("student"), "profile distillation: the R2END student's embeddings", True),
    "fusion": Method(
        lambda cfg, seed, name: train_fusion.run(with_seed(cfg, seed).with_section("fusion", run_name=name)),
        "ours: SASRec fitted to the residual of R2END's scores",
        True,
    ),
}


def model_name(method: str, seed: int) -> str:
    return teacher_name(seed) if method == TEXT_MODEL else f"{method}-seed{seed}"


def train_or_reuse(cfg: PipelineConfig, method: str, seed: int) -> dict:
    """``{"summary": TrainSummary fields, "seconds": training wall time, "reused": bool}`` for one run."""
    layout, spec = Layout(cfg.storage_path), METHODS[method]
    # the settings off their defaults (a field added later with the old behaviour as its default keeps the
    # digest), without the sections no training reads
    settings = cfg.model_dump(mode="json", exclude_defaults=True, exclude={"ray", "generate", "index", "serve"})
    made_by = {"config": settings, "prepared": layout.prepared_digest(), "method": method}
    if spec.reads_teacher:
        made_by["teacher"] = models.read_manifest(layout, cfg.fusion.text_model).version
    key, path = storage.digest(made_by), layout.bench_run(BENCHMARK, model_name(method, seed))
    if storage.exists(path) and (recorded := storage.read_json(path))["key"] == key:
        return {**recorded, "reused": True}
    log.info(f"{BENCHMARK}: training {method} with seed {seed}")
    started = time.time()
    summary = spec.train(cfg, seed, model_name(method, seed))
    run = {"key": key, "summary": summary.model_dump(mode="json"), "seconds": round(time.time() - started, 1)}
    storage.write_json(run, path)
    return {**run, "reused": False}


def ranks_of(layout: Layout, summary: dict) -> pa.Table:
    return storage.read_table(layout.model_version(summary["model"], summary["version"], "ranks.parquet"))


def paired_vs(base: pa.Table, others: dict[str, pa.Table]) -> dict:
    """``{name: {split: {hr@10|ndcg@10: {diff, se, z}, users, only_it_hits, only_base_hits}}}``."""
    compared = paired.compare({BASELINE: base, **others})
    return {
        name: {
            split: {
                "users": d["users"],
                "only_it_hits": d["only_a_hits"],
                "only_base_hits": d["only_b_hits"],
                **{m: {"diff": d[m]["difference"], "se": d[m]["se"], "z": d[m]["z"]} for m in ("hr@10", "ndcg@10")},
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
    cfg = with_teacher(cfg, seeds[0])
    if unknown := [m for m in chosen if m not in METHODS]:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if any(METHODS[m].reads_teacher for m in chosen) and TEXT_MODEL not in chosen:
        chosen.insert(0, TEXT_MODEL)  # the students' teacher
    embedded = embed.run(cfg)
    teacher_rankings = None
    runs: dict[str, dict[int, dict]] = {}
    for method in [m for m in METHODS if m in chosen]:  # the teacher before its students
        if method in RANKED_BY_TEACHER and teacher_rankings is None:
            teacher_rankings = rankings_cost(cfg, layout)
        runs[method] = {seeds[0]: train_or_reuse(cfg, method, seeds[0])}
    informed = [m for m in runs if METHODS[m].reads_teacher]
    best = max(informed, key=lambda m: runs[m][seeds[0]]["summary"]["valid"]["ndcg@10"]) if informed else None
    for method in [m for m in (BASELINE, TEXT_MODEL, best) if m in runs]:
        for seed in seeds[1:]:
            runs[method][seed] = train_or_reuse(cfg, method, seed)
    out = summarise(layout, runs, best, seeds)
    out["setup"] = {
        "users": layout.read_users().num_rows,
        "items": layout.read_items().num_rows,
        "seeds": seeds,
        "teacher": cfg.fusion.text_model,
        "teacher_outputs": [str(s) for s in cfg.embed.teacher_outputs or []],
        "embedded_targets": embedded.targets,
        "items_with_description": embedded.items_with_description,
        "teacher_rankings": teacher_rankings,
        "sasrec": cfg.sasrec.model_dump(mode="json"),
    }
    out["total_wall_time_s"] = round(time.time() - started, 1)
    out["machine"] = results.machine()
    plot(out)
    results.write(BENCHMARK, out, report(out), cfg.model_dump(mode="json"))


def rankings_cost(cfg: PipelineConfig, layout: Layout) -> dict:
    """DLLM2Rec's teacher rankings, made once before its students train, and what making them cost (None:
    an earlier run made them; its log says how long it took)."""
    named, table, seconds = train_dllm2rec.rankings(cfg, layout)
    return {"teacher": named, "positions": cfg.dllm2rec.positions, "instances": table.num_rows, "seconds": seconds}


def ratio(value: float, base: float) -> float | None:
    return value / base if base else None


def summarise(layout: Layout, runs: dict[str, dict[int, dict]], best: str | None, seeds: list[int]) -> dict:
    first = seeds[0]
    ranks = {m: ranks_of(layout, by_seed[first]["summary"]) for m, by_seed in runs.items()}
    methods = {
        m: {
            "about": METHODS[m].about,
            "model": by_seed[first]["summary"]["model"],
            "version": by_seed[first]["summary"]["version"],
            "valid": by_seed[first]["summary"]["valid"],
            "test": by_seed[first]["summary"]["test"],
            "best_epoch": by_seed[first]["summary"]["best_epoch"],
            "training_s": by_seed[first]["seconds"],
            "reused": by_seed[first]["reused"],
        }
        for m, by_seed in runs.items()
    }
    selection = f"the best LLM-informed student by validation NDCG@10 with seed {first}"
    out: dict = {"methods": methods, "best_student": best, "selection": selection}
    if BASELINE in ranks:
        base = ranks.pop(BASELINE)
        out["paired_vs_sasrec"] = paired_vs(base, ranks)
        base_tail = methods[BASELINE]["test"]["tail_hr@10"]
        out["tail_hr@10_vs_sasrec"] = {m: ratio(methods[m]["test"]["tail_hr@10"], base_tail) for m in methods}
    seeded = {m: by_seed for m, by_seed in runs.items() if len(by_seed) > 1}
    out["seeds"] = {
        m: {
            "runs": {str(s): {k: r["summary"]["test"][k] for k in ("hr@10", "ndcg@10")} for s, r in by_seed.items()},
            **{
                k: {
                    "mean": float(np.mean([r["summary"]["test"][k] for r in by_seed.values()])),
                    "sd": float(np.std([r["summary"]["test"][k] for r in by_seed.values()], ddof=1)),
                }
                for k in ("hr@10", "ndcg@10")
            },
        }
        for m, by_seed in seeded.items()
    }
    if BASELINE in seeded:  # each seed's student against the same seed's SASRec
        out["paired_vs_sasrec_by_seed"] = {
            m: {
                str(s): paired_vs(
                    ranks_of(layout, seeded[BASELINE][s]["summary"]), {m: ranks_of(layout, r["summary"])}
                )[m]["test"]
                for s, r in by_seed.items()
                if s in seeded[BASELINE]
            }
            for m, by_seed in seeded.items()
            if m != BASELINE
        }
    every = {m: ranks_of(layout, by_seed[first]["summary"]) for m, by_seed in runs.items()}
    pq.write_table(
        pa.concat_tables(t.append_column("method", pa.array([m] * t.num_rows)) for m, t in every.items()),
        paired.ranks_path(BENCHMARK),
        compression="zstd",
    )
    return out


def times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def report(out: dict) -> str:
    methods, setup = out["methods"], out["setup"]
    seeds = setup["seeds"]
    base = methods.get(BASELINE)
    lines = [
        "# LLM-informed students against SASRec on Amazon Beauty (all users, full-item ranking)",
        "",
        f"{setup['users']:,} users, {setup['items']:,} items, leave-one-out, history masked; every model's epoch "
        f"chosen on validation NDCG@10, the test split scored once. Seed {seeds[0]} below; SASRec, R2END and the best "
        f"student (`{out['best_student']}`, chosen on validation) with seeds {', '.join(map(str, seeds))} below.",
        "",
        "| method | H@5 | N@5 | H@10 | N@10 | H@20 | N@20 | tail H@10 | tail N@10 | cov@10 | valid N@10 | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in methods.items():
        t = r["test"]
        lines.append(
            f"| {m} | "
            + " | ".join(f"{t[k]:.4f}" for k in METRICS)
            + f" | {t['coverage@10']:.3f} | {r['valid']['ndcg@10']:.4f} | {r['training_s'] / 60:.0f} |"
        )
    if out.get("paired_vs_sasrec"):
        lines += [
            "",
            "Paired against SASRec on the same users (test; `students_beauty_ranks.parquet` holds every user's ranks):",
            "",
            "| method | H@10 − SASRec (± s.e.) | z | N@10 − SASRec (± s.e.) | z | N@10 ratio | tail H@10 ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for m, splits in out["paired_vs_sasrec"].items():
            d = splits["test"]
            lines.append(
                f"| {m} | {d['hr@10']['diff']:+.4f} ± {d['hr@10']['se']:.4f} | {d['hr@10']['z']:+.2f} "
                f"| {d['ndcg@10']['diff']:+.4f} ± {d['ndcg@10']['se']:.4f} | {d['ndcg@10']['z']:+.2f} "
                f"| {times(ratio(methods[m]['test']['ndcg@10'], base['test']['ndcg@10']))} "
                f"| {times(out['tail_hr@10_vs_sasrec'][m])} |"
            )
    if out["seeds"]:
        lines += ["", "Seeds (test, mean ± sd over the seeds; paired z against the same seed's SASRec):", ""]
        lines += ["| method | " + " | ".join(f"seed {s} H@10 / N@10 (z)" for s in seeds) + " | H@10 | N@10 |"]
        lines += ["|---" * (len(seeds) + 3) + "|"]
        for m, s in out["seeds"].items():
            by_seed = out.get("paired_vs_sasrec_by_seed", {}).get(m, {})
            cells = [
                f"{r['hr@10']:.4f} / {r['ndcg@10']:.4f}"
                + (f" ({by_seed[seed]['ndcg@10']['z']:+.1f})" if seed in by_seed else "")
                for seed, r in s["runs"].items()
            ]
            lines.append(
                f"| {m} | {' | '.join(cells)} | {s['hr@10']['mean']:.4f} ± {s['hr@10']['sd']:.4f} "
                f"| {s['ndcg@10']['mean']:.4f} ± {s['ndcg@10']['sd']:.4f} |"
            )
    lines += ["", "Methods:", ""] + [f"- `{m}`: {r['about']}" for m, r in methods.items()]
    ranked = setup["teacher_rankings"]
    lines += [
        "",
        f"Teacher: `{setup['teacher']}` (R2END, seed {seeds[0]}), from the teacher outputs "
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
        "Minutes: the wall time of a method's own stages on this machine (R2END: distill and project). History "
        "texts are encoded once into a shared cache, so the first method to need a text counts its encoding.",
        "",
        f"Plots: `{BENCHMARK}_metrics.png`, `{BENCHMARK}_seeds.png`.",
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
