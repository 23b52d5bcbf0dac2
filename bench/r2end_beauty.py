"""R2END, the paper's six ablations and SASRec on the same Beauty users, from the committed teacher outputs.

    python -m bench.r2end_beauty [--config configs/bench/r2end-beauty.yaml] [--set project.eval_users=4000]
    # a lever, selected on validation, written beside the main result as r2end_beauty_<tag>.*:
    python -m bench.r2end_beauty --tag all-users-20ep --methods r2end,ablation_4_no_text_encoder \
        --set project.train_users=null --set project.epochs=20
    # the 768-d encoder in its own (prepared) storage path; SASRec's scores then come from a
    # committed result on the same users:
    python -m bench.r2end_beauty --tag mpnet --methods ablation_4_no_text_encoder --students oracle \
        --set storage_path=artifacts/beauty-mpnet --set embed.encoder=bundled:all-mpnet-base-v2
    # another teacher's reasoning on the users both teachers answered, items described as before
    # (the committed teacher's side: its folder with kinds [oracle, item] and same_users_as the other):
    python -m bench.r2end_beauty --tag qwen-1000 --methods r2end --set storage_path=artifacts/beauty-qwen \
        --set "embed.teacher_outputs=[{folder: teacher_outputs/beauty-cpu-qwen-oracle-1000, \
        same_users_as: teacher_outputs/beauty-cpu}, {folder: teacher_outputs/beauty-cpu, kinds: [item]}]"

Runs the real stages on one Ray cluster: embed (teacher_outputs/beauty-cpu), distill one student
per target kind (Ray Train + DeepSpeed), project each variant (Ray Train), and scores SASRec's
chosen model (bench/results/sasrec_beauty.json) on the same users, all through the recommender
interface. Every variant is chosen on validation; the test split is scored once per variant. Writes
bench/results/r2end_beauty.json, r2end_beauty.md and two PNG plots (metrics per method; distances
before and after distillation). Its config (configs/bench/r2end-beauty.yaml) sizes the run.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from bench import paired, results
from r2end_core import models, storage
from r2end_core.config import DistillConfig, PipelineConfig
from r2end_core.data.splits import Split
from r2end_core.eval.evaluate import EvalSet, evaluate
from r2end_core.eval.metrics import format_table
from r2end_core.layout import Layout
from r2end_core.models.r2end.projection import user_samples
from r2end_core.summaries import GenerateSummary
from ray_jobs import distill, embed, project
from ray_jobs.runtime import run_stage

STUDENTS = {
    "oracle": "student-oracle",
    "unguided_all": "student-unguided-all",
    "unguided_grounded": "student-unguided-grounded",
    "metadata": "student-metadata",
}
# Distillation settings that change the student's weights; a student trained with any of them off
# their defaults gets its own folder, so a lever never overwrites the benchmark's students.
STUDENT_SETTINGS = ("holdout_fraction", "epochs", "batch_size", "learning_rate", "zero_stage", "dtype", "seed")
#: method -> (distill target of its student, or None; project overrides, the model arguments in "model")
METHODS = {
    "r2end": ("oracle", {}),
    "ablation_1_no_oracle_all": ("unguided_all", {}),
    "ablation_2_no_oracle_rejection_sampled": ("unguided_grounded", {}),
    "ablation_3_no_llm_reasoning": ("metadata", {}),
    "ablation_4_no_text_encoder": (None, {"model": {"user_encoder": "item_mean"}}),
    "ablation_5_no_projection": ("oracle", {"model": {"use_projection": False}}),
    "ablation_6_no_l2_reg": ("oracle", {"reg_weight": 0.0}),
    "control_encoder_undistilled": (None, {"model": {"user_encoder": "encoder"}}),
    "floor_untrained_item_mean": (None, {"model": {"user_encoder": "item_mean", "use_projection": False}}),
}
ENCODER_SIZES = {"bundled:all-minilm-l6-v2": "22M, 384-d", "bundled:all-mpnet-base-v2": "110M, 768-d"}
# The paper's Table 2 (Beauty) and its SASRec (Table 1, top-5 only).
PAPER = {
    "r2end": (0.0664, 0.0450, 0.0958, 0.0545),
    "ablation_1_no_oracle_all": (0.0549, 0.0366, 0.0806, 0.0449),
    "ablation_2_no_oracle_rejection_sampled": (0.0573, 0.0381, 0.0828, 0.0463),
    "ablation_3_no_llm_reasoning": (0.0475, 0.0309, 0.0728, 0.0390),
    "ablation_4_no_text_encoder": (0.0477, 0.0307, 0.0751, 0.0395),
    "ablation_5_no_projection": (0.0367, 0.0235, 0.0538, 0.0290),
    "ablation_6_no_l2_reg": (0.0616, 0.0412, 0.0914, 0.0509),
    "sasrec": (0.0387, 0.0249, None, None),
}


def student_config(cfg: PipelineConfig, target: str) -> PipelineConfig:
    """The config that distills (or reads) the student for one distillation target.

    >>> cfg = PipelineConfig(storage_path="x", prepare={"dataset_path": "y"}, distill={"learning_rate": 5e-5})
    >>> student_config(cfg, "oracle").distill.run_name
    'student-oracle-learning_rate5e-05'
    """
    changed = "".join(
        f"-{k}{v}"
        for k, v in cfg.distill.model_dump(include=set(STUDENT_SETTINGS)).items()
        if v != DistillConfig.model_fields[k].default
    )
    return cfg.with_section("distill", target=target, run_name=STUDENTS[target] + changed)


def variant(cfg: PipelineConfig, method: str, tag: str | None) -> PipelineConfig:
    target, overrides = METHODS[method]
    run_cfg = student_config(cfg, target or "oracle")  # methods without a student never read it
    model = cfg.project.model.model_copy(update=overrides.get("model", {}))
    return run_cfg.with_section(
        "project",
        **{
            **overrides,
            "model": model,
            "student_run": run_cfg.distill.run_name,
            "run_name": "-".join(filter(None, ("bench", tag, method))),
        },
    )


def scored_users(cfg: PipelineConfig) -> dict:
    """What fixes the scored users: a result with the same values scored the same users."""
    return {
        "users": Layout(cfg.storage_path).read_users().num_rows,
        "eval_users": cfg.project.eval_users,
        "sample_seed": cfg.project.sample_seed,
    }


def sasrec_on_users(cfg: PipelineConfig, name: str) -> tuple[dict, str]:
    """SASRec's chosen model scored on exactly the users the text variants are scored on, and where the
    scores come from: the model in this storage path, else a committed result on the same users (a
    lever run in its own storage path need not retrain SASRec)."""
    layout = Layout(cfg.storage_path)
    if not storage.exists(layout.model_latest(name)):
        for path in sorted(results.FOLDER.glob("r2end_beauty*.json")):
            recorded = json.loads(path.read_text())
            if recorded["setup"].get("scored_users") == scored_users(cfg) and recorded["setup"]["sasrec_run"] == name:
                return recorded["methods"]["sasrec"], f"{name}, as scored in {path.name} (same users)"
        raise FileNotFoundError(
            f"no SASRec model {name} under {layout.model(name)} and no result in "
            f"{results.FOLDER} scored on the same users {scored_users(cfg)}: run bench.sasrec_beauty first"
        )
    users, items = layout.read_users(), layout.read_items()
    _, eval_pos = user_samples(users.num_rows, cfg.project.train_users, cfg.project.eval_users, cfg.project.sample_seed)
    torch.set_num_threads(cfg.resources.cpus_per_worker)
    model = models.load(layout, name)
    scores = {
        str(split): evaluate(model, EvalSet.build(users.take(eval_pos), items, split)).metrics
        for split in (Split.VALID, Split.TEST)
    }
    return scores, name


def describe_teachers(cfg: PipelineConfig) -> tuple[str, list[str]]:
    """Who wrote the teacher outputs the run read, from each folder's config (or this run's generate
    section, for the storage path's own generated/), and the folders as given."""
    if cfg.embed.teacher_outputs is None:
        run = GenerateSummary.read(Layout(cfg.storage_path).generation_summary, "generate")
        return f"{run.teacher}, greedy, {run.max_words} words", [storage.join(cfg.storage_path, "generated")]
    sources = [
        s.model_copy(
            update={
                "folder": os.path.relpath(s.folder),
                "same_users_as": s.same_users_as and os.path.relpath(s.same_users_as),
            }
        )
        for s in cfg.embed.teacher_outputs
    ]
    teachers = dict.fromkeys(
        "{teacher}, greedy, repetition penalty {repetition_penalty}, {max_words} words".format(
            **yaml.safe_load((Path(s.folder) / "config.yaml").read_text())["generate"]
        )
        + (f" ({'+'.join(s.kinds)})" if s.kinds else "")
        for s in sources
    )
    return " + ".join(teachers), [str(s) for s in sources]


def benchmark(cfg: PipelineConfig, args) -> None:
    methods, tag = args.methods.split(","), args.tag
    extra_students = [t for t in args.students.split(",") if t]
    if unknown := [m for m in methods if m not in METHODS] + [t for t in extra_students if t not in STUDENTS]:
        sys.exit(f"unknown methods or students {unknown}; choose from {list(METHODS)} and {list(STUDENTS)}")
    started = time.time()
    timings = {}

    def timed(name, fn, *args):
        t = time.time()
        out = fn(*args)
        timings[name] = round(time.time() - t, 1)
        return out

    embed_report = timed("embed", embed.run, cfg)
    targets = dict.fromkeys([*(METHODS[m][0] for m in methods if METHODS[m][0]), *extra_students])
    students = {
        target: timed(f"distill {target}", distill.run, student_config(cfg, target)).model_dump(mode="json")
        for target in targets
    }
    trained = {method: timed(f"project {method}", project.run, variant(cfg, method, tag)) for method in methods}
    scored = {method: summary.model_dump() for method, summary in trained.items()}
    chosen = json.loads((results.FOLDER / "sasrec_beauty.json").read_text())["chosen"]
    scored["sasrec"], sasrec_source = timed("sasrec scoring", sasrec_on_users, cfg, chosen)

    teachers, sources = describe_teachers(cfg)
    setup = {
        "teacher": teachers,
        "teacher_outputs": sources[0] if len(sources) == 1 else sources,
        "teacher_rows_outside_same_users": embed_report.teacher_rows_outside_same_users,
        "oracle_users": embed_report.targets.get("oracle"),
        "unguided_users": embed_report.targets.get("unguided"),
        "unguided_accepted": embed_report.unguided_accepted,
        "items_with_description": embed_report.items_with_description,
        "encoder": cfg.embed.encoder,
        "embed_reused": embed_report.reused,  # its time is then the earlier run's, below
        "embed_encode_s": embed_report.wall_time_s,
        "max_seq_length": cfg.embed.max_seq_length,
        "train_users": cfg.project.train_users or Layout(cfg.storage_path).read_users().num_rows,
        "eval_users": cfg.project.eval_users,
        "scored_users": scored_users(cfg),
        "projection_epochs": cfg.project.epochs,
        "distill": {k: getattr(cfg.distill, k) for k in STUDENT_SETTINGS},
        "sasrec_run": chosen,
        "sasrec_scores": sasrec_source,
    }
    out = {
        "methods": {
            m: {
                "valid": r["valid"],
                "test": r["test"],
                **({"best_epoch": r["best_epoch"]} if "best_epoch" in r else {}),
            }
            for m, r in scored.items()
        },
        "students": {t: {k: v for k, v in s.items() if k != "losses"} for t, s in students.items()},
        "paper_beauty": {m: dict(zip(("hr@5", "ndcg@5", "hr@10", "ndcg@10"), v)) for m, v in PAPER.items()},
        "setup": setup,
        "timings_s": timings,
        "command": COMMAND,
        "total_wall_time_s": round(time.time() - started, 1),
        "machine": results.machine(),
    }
    name = "_".join(filter(None, ("r2end_beauty", tag)))
    layout = Layout(cfg.storage_path)
    ranks = {
        m: storage.read_table(layout.model_version(s.model, s.version, "ranks.parquet")) for m, s in trained.items()
    }
    pq.write_table(
        pa.concat_tables(t.append_column("method", pa.array([m] * t.num_rows)) for m, t in ranks.items()),
        paired.ranks_path(name),
        compression="zstd",
    )
    if "r2end" in ranks and len(ranks) > 1:  # the ranks of SASRec's committed scores are not kept
        out["paired_vs_r2end"] = paired.compare({"r2end": ranks.pop("r2end"), **ranks})
    plot(out, cfg, name)
    results.write(name, out, report(out, name))


def report(out: dict, name: str) -> str:
    methods, paper, setup = out["methods"], out["paper_beauty"], out["setup"]
    sasrec_hr10 = methods["sasrec"]["test"]["hr@10"]

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.4f}"

    lines = [
        f"# R2END on Amazon Beauty: ablations and SASRec, same users, full-item ranking (`{name}`)",
        "",
        f"Test split, {methods['sasrec']['test']['users']:,} users (a fixed sample; valid and test items of the same "
        f"users), history masked. Each variant's epoch was chosen on validation NDCG@10; test scored once.",
        "",
        "| method | H@5 | N@5 | H@10 (± s.e.) | N@10 | H@10 vs SASRec | paper H@5 | paper N@5 | paper H@10 "
        "| paper N@10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [m for m in (*METHODS, "sasrec") if m in methods]  # the JSON's keys are sorted; the table is not
    for m in order:
        t, p = methods[m]["test"], paper.get(m, {})
        stderr = (t["hr@10"] * (1 - t["hr@10"]) / t["users"]) ** 0.5  # binomial, per method
        lines.append(
            f"| {m} | {t['hr@5']:.4f} | {t['ndcg@5']:.4f} | {t['hr@10']:.4f} ± {stderr:.4f} | {t['ndcg@10']:.4f} | "
            f"{t['hr@10'] / sasrec_hr10:.2f}x | "
            + " | ".join(fmt(p.get(k)) for k in ("hr@5", "ndcg@5", "hr@10", "ndcg@10"))
            + " |"
        )
    if "paired_vs_r2end" in out:
        lines += [
            "",
            "Paired against R2END on the same users (`" + paired.ranks_path(name).name + "` holds every user's ranks):",
            "",
            paired.table(out["paired_vs_r2end"], "r2end"),
        ]
    lines += [
        "",
        "Validation (what selection saw):",
        "",
        format_table({m: {"valid": methods[m]["valid"]} for m in order}, (10,)),
        "",
    ]
    lines += [
        "Distillation (held-out users' history embeddings vs their targets, before -> after):",
        "",
        "| student target | users | steps | training (s) | L2 mean | cosine mean |",
        "|---|---|---|---|---|---|",
    ]
    for target, s in out["students"].items():
        d = s.get("distances_held_out", {})
        lines.append(
            f"| {target} | {s['users_distilled']} | {s['steps']} | {s['train_seconds']} "
            f"| {d['l2_before']['mean']:.4f} -> "
            f"{d['l2_after']['mean']:.4f} | {d['cos_before']['mean']:.4f} -> {d['cos_after']['mean']:.4f} |"
        )
    lines += [
        "",
        "Differences from the paper's setup: teacher " + setup["teacher"] + " (paper: Gemma3 12B, 512 words); "
        f"oracle reasoning for {setup['oracle_users']:,} users (paper: every user); item descriptions for "
        f"{setup['items_with_description']:,} of 12,101 items (the rest: metadata only); student "
        f"{setup['encoder']} ({ENCODER_SIZES.get(setup['encoder'], '?')}, {setup['max_seq_length']} tokens; "
        "paper: a 0.3B encoder); projection "
        f"trained on {setup['train_users']:,} users' training targets for {setup['projection_epochs']} epochs; "
        f"distillation {setup['distill']}; SASRec is ours (full-softmax CE, "
        f"`{setup.get('sasrec_scores', setup['sasrec_run'])}`), scored on the same users.",
        "",
        "`control_encoder_undistilled` is Enc on history text with the projection but no distillation; "
        "`floor_untrained_item_mean` is the sanity floor (mean of history items' metadata embeddings, no training).",
        "",
        f"Plots: `{name}_metrics.png`, `{name}_distances.png`. Stage times (s): "
        + ", ".join(f"{k} {v}" for k, v in out["timings_s"].items())
        + (
            f" (embeddings reused from an earlier run that took {setup['embed_encode_s']} s)"
            if setup.get("embed_reused")
            else ""
        )
        + ".",
        "",
        f"Command: `{out['command']}`",
    ]
    return "\n".join(lines) + "\n"


def plot(out: dict, cfg: PipelineConfig, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["methods"])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    x = np.arange(len(names))
    for offset, key in ((-0.2, "hr@10"), (0.2, "ndcg@10")):
        ax.bar(x + offset, [out["methods"][n]["test"][key] for n in names], 0.4, label=f"test {key.upper()}")
    ax.set_xticks(
        x, [n.replace("ablation_", "abl ").replace("_", " ") for n in names], rotation=30, ha="right", fontsize=8
    )
    ax.set_title("Beauty, full ranking, same users")
    ax.legend()
    fig.tight_layout()
    fig.savefig(results.FOLDER / f"{name}_metrics.png", dpi=110)
    plt.close(fig)

    if "oracle" not in out["students"]:
        return
    student = student_config(cfg, "oracle").distill.run_name
    distances = storage.read_table(Layout(cfg.storage_path).student(student, "distances.parquet"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (metric, label) in zip(axes, (("l2", "L2 distance"), ("cos", "cosine similarity"))):
        for when in ("before", "after"):
            ax.hist(distances[f"{metric}_{when}"].to_numpy(), bins=40, alpha=0.6, label=f"{when} distillation")
        ax.set_title(f"{label} to the oracle target (held-out users)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(results.FOLDER / f"{name}_distances.png", dpi=110)
    plt.close(fig)


COMMAND = "python -m bench.r2end_beauty " + shlex.join(sys.argv[1:])  # as typed


def arguments(parser) -> None:
    parser.add_argument("--tag", help="name a lever's runs and results (r2end_beauty_<tag>.*)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    parser.add_argument(
        "--students",
        default="",
        help="comma-separated distill targets to distill (or reuse) and "
        "report even where no chosen method projects them, e.g. oracle",
    )


if __name__ == "__main__":
    run_stage(
        __doc__,
        benchmark,
        "bench-r2end_beauty",
        default_config="configs/bench/r2end-beauty.yaml",
        add_arguments=arguments,
    )
