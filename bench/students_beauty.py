"""Every student of the LLM's knowledge against SASRec and against controls without the LLM, on all of
Beauty, in one resumable run.

    python -m bench.students_beauty [--config configs/bench/students-beauty.yaml] [--methods sasrec,fusion]
        [--seeds 23,22,24] [--level all|users-18|users-50|items-6] [--records-only] [--plan]

Trains, through the real stages on one Ray cluster, each method in ``METHODS`` with the first seed:
SASRec (the baseline recipe), R2END (embed, distill, project), DLLM2Rec and its two ablations, profile
distillation from each profile source, our fused students (trained models' scores summed, the weights
chosen on validation) and the controls: each LLM-informed student's no-LLM twin (the same recipe with no LLM
text anywhere) and ID-only ensemble of as many parts (SASRec with further seeds, fused by the same code).
Then it picks the best LLM-informed student with controls by validation NDCG@10 among those keeping
``TAIL_GOAL`` times SASRec's validation long-tail HR@10 (``best_student``) and trains it, every student with controls
(``CONTROLLED``), their controls and the models they learn from with every seed in ``SEEDS``. A student
learns from the models of its own seed, so a seed repeats the whole chain. Every model selects its epoch (a
fusion its weights) on validation; the test split is scored once per model. ``--level`` trains R2END and
its fusion with SASRec on a nested sample of the teacher outputs (``LEVELS``): the teacher-data curve.

A finished run is recorded in ``bench/results/students_beauty_runs/`` (its summary, its per-user ranks and
a digest of what made it: the config sections its training reads, the prepared data, the embedded teacher
outputs for an LLM-informed method and the records of the models it learns from) and is reused while that
digest holds. The records are committed, so the benchmark goes on across sessions and machines that keep no
artifacts: a session trains what is not yet recorded (and a model a student learns from again, where that
student still has to train and the model is not in the storage path); a run killed mid-way resumes from its
Ray Train checkpoint. ``--plan`` lists, without training, which records ``--records-only`` finds holding and
which it would train. Writes bench/results/students_beauty.json (``methods.<name>.test.{hr@10,...}``,
``paired_vs_sasrec.<name>.test.ndcg@10.{diff,se,z}``, ``tail_paired_vs_sasrec``, ``seeds``,
``paired_vs_sasrec_over_seeds``), .md, the per-user ranks (``students_beauty_ranks.parquet``), two plots,
and the LLM's share against the controls (``bench.llm_share``: llm_share.json, .md, its curve).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench import llm_share, paired, results
from r2end_core import models, storage
from r2end_core.config import DistillTarget, ItemText, PipelineConfig, SoftmaxKind, UserEncoder
from r2end_core.eval import metrics
from r2end_core.layout import Layout
from r2end_core.models.r2end import targets
from r2end_core.summaries import TrainSummary
from ray_jobs import distill, embed, project, train_dllm2rec, train_fusion, train_profile, train_sasrec
from ray_jobs.runtime import log, run_stage

BENCHMARK = "students_beauty"
# the first trains every method; 23 first since seed 22's R2END (the teacher of three students) was made on a
# machine since lost, and re-making it costs 85 min on 2 cores
SEEDS = (23, 22, 24)
BASELINE, TEXT_MODEL = "sasrec", "r2end"
CURVE = (TEXT_MODEL, "fusion")  # the methods the teacher-data curve measures at each level
# the issue's goal for the best student: above SASRec without losing the text path's long-tail lead, at
# least this multiple of SASRec's long-tail HR@10
TAIL_GOAL = 1.5
METRICS = [f"{m}@{k}" for k in (5, 10, 20) for m in ("hr", "ndcg")] + ["tail_hr@10", "tail_ndcg@10"]
# what the seeds table spreads: the goal's metrics
SEED_METRICS = ("hr@10", "ndcg@10", "tail_hr@10")


#: the teacher-data curve: the share of the teacher's outputs each level reads (fixed nested samples of every
#: folder; ``all``: all of them). Only LLM-informed methods depend on the level: the no-LLM twins read none.
LEVELS = {
    "all": {},
    "users-18": {"sample_users": 4000},  # as many users with reasoning as before full coverage (18%)
    "users-50": {"sample_users": 11182},
    "items-6": {"sample_items": 736},  # as many items described as before full coverage (6%)
}

Train = Callable[[PipelineConfig, int, str], TrainSummary]  # (config, seed, model name) -> its summary


def at_level(cfg: PipelineConfig, level: str) -> PipelineConfig:
    """The config whose teacher outputs are ``level``'s sample of them."""
    if not LEVELS[level]:
        return cfg
    folders = [{**f.model_dump(), **LEVELS[level]} for f in cfg.embed.teacher_outputs or []]
    if not folders:
        raise SystemExit(f"--level {level}: needs embed.teacher_outputs (folders to sample)")
    return cfg.with_section("embed", teacher_outputs=folders)


def student_name(model: str) -> str:
    """The distilled text encoder of an R2END model."""
    return f"student-of-{model}"


def with_seed(cfg: PipelineConfig, seed: int) -> PipelineConfig:
    return cfg.with_section("sasrec", seed=seed)


def sasrec(offset: int = 0, **changes) -> Train:
    """SASRec with the run's seed plus ``offset`` (the ID-only ensembles' further members) and ``changes`` to its
    settings."""

    def train(cfg: PipelineConfig, seed: int, name: str) -> TrainSummary:
        return train_sasrec.run(with_seed(cfg, seed + offset).with_section("sasrec", run_name=name, **changes))

    return train


def r2end(target: DistillTarget = DistillTarget.ORACLE, item_text: ItemText = ItemText.DESCRIBED) -> Train:
    """Distill a student toward ``target`` and project it, both with the seed (R2END's whole training
    variance); item vectors from ``item_text``."""

    def train(cfg: PipelineConfig, seed: int, name: str) -> TrainSummary:
        run_cfg = cfg.with_section("distill", target=target, run_name=student_name(name), seed=seed).with_section(
            "project", run_name=name, student_run=student_name(name), seed=seed, model={"item_text": item_text}
        )
        distill.run(run_cfg)
        return project.run(run_cfg)

    return train


def item_mean(cfg: PipelineConfig, seed: int, name: str) -> TrainSummary:
    """The mean of the history items' metadata embeddings, projected: no LLM, no distillation."""
    model = {"user_encoder": UserEncoder.ITEM_MEAN, "item_text": ItemText.METADATA}
    return project.run(cfg.with_section("project", run_name=name, seed=seed, model=model))


def dllm2rec(teacher: str = TEXT_MODEL, **changes) -> Train:
    def train(cfg: PipelineConfig, seed: int, name: str) -> TrainSummary:
        learns = {"run_name": name, "teacher": model_name(teacher, seed, level_of(name)), **changes}
        return train_dllm2rec.run(with_seed(cfg, seed).with_section("dllm2rec", **learns))

    return train


def profile_from(source: str) -> Train:
    def train(cfg: PipelineConfig, seed: int, name: str) -> TrainSummary:
        student = student_name(model_name(TEXT_MODEL, seed, level_of(name)))
        profiled = {"run_name": name, "source": source, "student_run": student}
        return train_profile.run(with_seed(cfg, seed).with_section("profile", **profiled))

    return train


def fusion_of(*parts: str, min_long_tail_ratio: float = 0.0) -> Train:
    def train(cfg: PipelineConfig, seed: int, name: str) -> TrainSummary:
        models_of_seed = [model_name(p, seed, level_of(name)) for p in parts]
        fused = with_seed(cfg, seed).with_section(
            "fusion", run_name=name, parts=models_of_seed, min_long_tail_ratio=min_long_tail_ratio
        )
        return train_fusion.run(fused)

    return train


@dataclass(frozen=True)
class Method:
    """How one method trains (``train(cfg, seed, model name)``) and what it is, for the report."""

    train: Train
    about: str
    sections: tuple[str, ...]  # the config sections its training reads, beside prepare and resources
    learns_from: tuple[str, ...] = ()  # the methods whose trained models (of its seed) it reads
    texts: tuple[str, ...] = ()  # the kinds of teacher text it reads itself (beside what it learns from reads)
    twin: str | None = None  # its no-LLM twin: the same recipe with no LLM text anywhere
    id_ensemble: str | None = None  # the ID-only model or ensemble with as many parts

    @property
    def uses_llm(self) -> bool:
        """Reads the teacher's texts, itself or through what it learns from."""
        return bool(self.texts) or any(METHODS[part].uses_llm for part in self.learns_from)


RANKED_BY_TEACHER = ("dllm2rec", "dllm2rec_no_embedding", "dllm2rec_twin")  # DLLM2Rec with its ranking term
SASREC, R2END = ("sasrec",), ("embed", "distill", "project")
DLLM2REC, PROFILE, FUSION = (
    ("sasrec", "dllm2rec", "embed"),
    ("sasrec", "profile", "embed"),
    ("sasrec", "fusion", "embed"),
)
TAIL = f"the weights validation chose among those keeping {TAIL_GOAL}x SASRec's long-tail HR@10"


def fused(*parts: str, about: str, tail: bool = False, **kind) -> Method:
    """A fusion of ``parts`` (trained models' scores summed; ``tail``: with the long-tail floor), which learns
    from exactly those parts."""
    floor = TAIL_GOAL if tail else 0.0
    return Method(fusion_of(*parts, min_long_tail_ratio=floor), about, FUSION, parts, **kind)


METHODS = {
    BASELINE: Method(sasrec(), "SASRec, full-softmax CE: the baseline recipe", SASREC),
    # the ID-only ensembles' members: SASRec with seeds as far from the run's as the runs' seeds are apart
    "sasrec_2nd": Method(sasrec(100), "SASRec with the seed + 100 (an ID-only ensemble's member)", SASREC),
    "sasrec_3rd": Method(sasrec(200), "SASRec with the seed + 200 (an ID-only ensemble's member)", SASREC),
    # what a catalogue too large for full softmax costs in accuracy (bench.scale reads it)
    "sasrec_sampled": Method(
        sasrec(softmax=SoftmaxKind.SAMPLED),
        "SASRec with the sampled softmax (in-batch and uniform negatives, logQ-corrected), as on a large catalogue",
        SASREC,
    ),
    "sasrec_sampled_4096": Method(
        sasrec(softmax=SoftmaxKind.SAMPLED, sampled_negatives=4096),
        "SASRec with the sampled softmax and 4,096 uniform negatives (bench.scale picks the count on validation)",
        SASREC,
    ),
    "sasrec_sampled_4096_sparse": Method(
        sasrec(softmax=SoftmaxKind.SAMPLED, sampled_negatives=4096, item_updates="sparse"),
        "SASRec with 4,096 sampled negatives and lazy Adam on the item rows a step reads (what keeps a step's "
        "cost flat in the catalogue; bench.scale weighs it against dense updates on validation)",
        SASREC,
    ),
    TEXT_MODEL: Method(
        r2end(),
        "R2END: distilled text encoder + projection",
        R2END,
        texts=("oracle", "items"),
        twin="r2end_twin",
        id_ensemble=BASELINE,
    ),
    "r2end_twin": Method(
        r2end(DistillTarget.METADATA, ItemText.METADATA),
        "R2END's no-LLM twin: the student learns Enc(target metadata) alone, items embed their metadata alone",
        R2END,
    ),
    "item_mean": Method(
        item_mean,
        "no LLM, no distillation: the mean of the history items' metadata embeddings, projected",
        ("embed", "project"),
    ),
    "dllm2rec": Method(
        dllm2rec(),
        "DLLM2Rec: R2END's rankings + the LLM's item descriptions into SASRec",
        DLLM2REC,
        (TEXT_MODEL,),
        texts=("items",),
        twin="dllm2rec_twin",
        id_ensemble=BASELINE,
    ),
    "dllm2rec_twin": Method(
        dllm2rec("r2end_twin", item_text=ItemText.METADATA),
        "DLLM2Rec's no-LLM twin: R2END twin's rankings + items' metadata embeddings into SASRec",
        DLLM2REC,
        ("r2end_twin",),
    ),
    "dllm2rec_no_ranking": Method(
        dllm2rec(ranking_weight=0.0), "DLLM2Rec without ranking distillation", DLLM2REC, texts=("items",)
    ),
    "dllm2rec_no_embedding": Method(
        dllm2rec(embedding_weight=0.0), "DLLM2Rec without embedding distillation", DLLM2REC, (TEXT_MODEL,)
    ),
    "profile_generated": Method(
        profile_from("generated"), "profile distillation: the LLM's user profiles", PROFILE, texts=("profile",)
    ),
    "profile_oracle": Method(
        profile_from("oracle"), "profile distillation: the LLM's oracle reasoning, embedded", PROFILE, texts=("oracle",)
    ),
    "profile_student": Method(
        profile_from("student"), "profile distillation: the R2END student's embeddings", PROFILE, (TEXT_MODEL,)
    ),
    "fusion": fused(
        BASELINE,
        TEXT_MODEL,
        about="ours: SASRec's and R2END's scores, summed with the weight validation chose",
        twin="fusion_twin",
        id_ensemble="id_ensemble_2",
    ),
    "fusion_dllm2rec": fused(
        BASELINE,
        "dllm2rec",
        TEXT_MODEL,
        about="ours: SASRec's, DLLM2Rec's and R2END's scores, summed with the weights validation chose",
        twin="fusion_dllm2rec_twin",
        id_ensemble="id_ensemble_3",
    ),
    "fusion_dllm2rec_tail": fused(
        BASELINE,
        "dllm2rec",
        TEXT_MODEL,
        about=f"ours: SASRec's, DLLM2Rec's and R2END's scores, {TAIL}",
        tail=True,
        twin="fusion_dllm2rec_tail_twin",
        id_ensemble="id_ensemble_3_tail",
    ),
    # whether the fusion needs plain SASRec: DLLM2Rec already leads SASRec on the tail, which SASRec's
    # share of a fused score gives back
    "fusion_without_sasrec": fused(
        "dllm2rec", TEXT_MODEL, about="ours: DLLM2Rec's and R2END's scores, summed with the weight validation chose"
    ),
    "fusion_twin": fused(BASELINE, "r2end_twin", about="no-LLM twin of fusion: SASRec's and the R2END twin's scores"),
    "fusion_dllm2rec_twin": fused(
        BASELINE,
        "dllm2rec_twin",
        "r2end_twin",
        about="no-LLM twin of fusion_dllm2rec: SASRec's, the DLLM2Rec twin's and the R2END twin's scores",
    ),
    "fusion_dllm2rec_tail_twin": fused(
        BASELINE,
        "dllm2rec_twin",
        "r2end_twin",
        about=f"no-LLM twin of fusion_dllm2rec_tail: the twins' scores, {TAIL}",
        tail=True,
    ),
    "id_ensemble_2": fused(
        BASELINE,
        "sasrec_2nd",
        about="ID-only ensemble of two: SASRec with two seeds, scores summed as fusion's",
    ),
    "id_ensemble_3": fused(
        BASELINE,
        "sasrec_2nd",
        "sasrec_3rd",
        about="ID-only ensemble of three: SASRec with three seeds, scores summed as fusion_dllm2rec's",
    ),
    "id_ensemble_3_tail": fused(
        BASELINE,
        "sasrec_2nd",
        "sasrec_3rd",
        about=f"ID-only ensemble of three: SASRec with three seeds, {TAIL}",
        tail=True,
    ),
}
#: the LLM-informed students measured against their controls, with every seed
CONTROLLED = tuple(m for m, spec in METHODS.items() if spec.twin)


def model_name(method: str, seed: int, level: str = "all") -> str:
    """``<method>-seed<seed>``, and ``-<level>`` for an LLM-informed method below full teacher data."""
    name = f"{method}-seed{seed}"
    return name if level == "all" or not METHODS[method].uses_llm else f"{name}-{level}"


def level_of(name: str) -> str:
    return next((level for level in LEVELS if level != "all" and name.endswith(f"-{level}")), "all")


RUNS = results.FOLDER / f"{BENCHMARK}_runs"  # committed: <model>.json (the record), <model>_ranks.parquet


def train_or_reuse(
    cfg: PipelineConfig, method: str, seed: int, level: str, embedded: dict, learnt_from: dict[str, dict]
) -> dict:
    """``{"key", "summary": TrainSummary fields, "seconds": training wall time over its attempts, "attempts",
    "provenance", "coverage", "reused": bool}`` for one run. ``cfg``: at ``level``; ``embedded``: the embed
    stage's digest of what it read (``inputs_digest``) and its coverage (``users_with_reasoning``,
    ``items_with_description``); ``learnt_from``: the records of this seed's runs of the methods it learns
    from."""
    layout, spec, name = Layout(cfg.storage_path), METHODS[method], model_name(method, seed, level)
    settings, key = record_key(cfg, method, seed, embedded["inputs_digest"], learnt_from)
    record = record_path(method, seed, level)
    if record.exists() and (recorded := json.loads(record.read_text()))["key"] == key:
        return {**recorded, "reused": True}
    for part in spec.learns_from:
        in_storage(cfg, part, seed, level, method)
    # made before the student trains, so that its wall time is not counted as the student's
    ranked = rankings_cost(cfg, model_name(spec.learns_from[0], seed, level)) if method in RANKED_BY_TEACHER else None
    log.info(f"{BENCHMARK}: training {method} with seed {seed}" + ("" if level == "all" else f" at level {level}"))
    summary, seconds, attempts = over_attempts(
        layout.logs(f"{BENCHMARK}-{name}.attempts.json"), key, spec.train, cfg, seed, name
    )
    run = {
        "key": key,
        "summary": summary.model_dump(mode="json"),
        "seconds": seconds,
        "attempts": attempts,
        "provenance": results.provenance(settings),
        # the teacher data it read (none for a no-LLM method)
        "coverage": embedded["coverage"] if spec.uses_llm else {"users_with_reasoning": 0, "items_with_description": 0},
    }
    if ranked:
        run["teacher_rankings"] = ranked
    for part in spec.learns_from:  # which models it learnt from, beside the one its row reports
        run[f"{part}_version"] = models.read_manifest(layout, model_name(part, seed, level)).version
    RUNS.mkdir(exist_ok=True)
    ranks = layout.model_version(summary.model, summary.version, "ranks.parquet")
    pq.write_table(storage.read_table(ranks), RUNS / f"{name}_ranks.parquet", compression="zstd")
    record.write_text(json.dumps(run, indent=2, sort_keys=True))
    return {**run, "reused": False}


def over_attempts(
    ledger: str, key: str, train: Callable[..., TrainSummary], *args, every_s: float = 60.0
) -> tuple[TrainSummary, float, int]:
    """(``train(*args)``, its wall seconds summed over every attempt, how many attempts). While it trains,
    ``ledger`` holds what this attempt has spent so far (for the run ``key``), rewritten every ``every_s``
    seconds and when it fails or is interrupted: an attempt killed outright (SIGKILL at a session's end)
    loses at most ``every_s`` of its count. The next attempt resumes from its checkpoints, so what the run
    cost is the sum, not the last attempt."""
    earlier = storage.read_json(ledger) if storage.exists(ledger) else {}
    spent = earlier["seconds"] if earlier.get("key") == key else []  # another key: a different run
    started, done = time.time(), threading.Event()

    def note_spent() -> None:
        storage.write_json({"key": key, "seconds": [*spent, round(time.time() - started, 1)]}, ledger)

    def heartbeat() -> None:
        while not done.wait(every_s):
            try:
                note_spent()
            except OSError as error:  # a storage hiccup must not end the count, nor the run: tried next beat
                log.warning(f"{BENCHMARK}: writing {ledger} failed ({error}); trying again")

    beating = threading.Thread(target=heartbeat, name="attempt-ledger", daemon=True)
    beating.start()
    try:
        summary = train(*args)
    except BaseException:  # SIGINT raises KeyboardInterrupt, or SystemExit inside Ray Train's fit
        done.set()
        beating.join()
        note_spent()
        raise
    done.set()
    beating.join()
    if storage.exists(ledger):
        storage.delete_file(ledger)
    return summary, round(sum(spent) + time.time() - started, 1), len(spent) + 1


def in_storage(cfg: PipelineConfig, method: str, seed: int, level: str, student: str) -> None:
    """``method``'s model of ``seed`` in the storage path, for ``student`` to learn from: trained again (what
    it learns from first) where its record came from an earlier session's machine."""
    for part in METHODS[method].learns_from:
        in_storage(cfg, part, seed, level, method)
    name = model_name(method, seed, level)
    if not storage.exists(Layout(cfg.storage_path).model_latest(name)):
        log.info(f"{BENCHMARK}: re-making {name} (recorded by an earlier session) for {student}")
        METHODS[method].train(cfg, seed, name)


def record_key(
    cfg: PipelineConfig, method: str, seed: int, embedded: str, learnt_from: dict[str, dict]
) -> tuple[dict, str]:
    """(the settings a run is keyed by, the digest of everything that made it). Every setting of the
    sections its training reads, defaults included (a changed default must not reuse a run made under the
    old one), so a lever of one method retrains only that method and its students; a student keys the
    models it learns from through their records (``learnt_from``). Not where things lie: what was read is
    keyed by its content (the prepared tables; for an LLM-informed method, the embedded teacher outputs
    ``embedded``: a no-LLM method reads none of them), so a record holds on any machine."""
    dumped = cfg.model_dump(mode="json")
    settings = {section: dumped[section] for section in ("prepare", "resources", *METHODS[method].sections)}
    del settings["prepare"]["dataset_path"]
    del settings["prepare"]["interactions_per_part"]  # how prepare spreads its work: the digest keys what it made
    if "embed" in settings:
        del settings["embed"]["teacher_outputs"]
    prepared = Layout(cfg.storage_path).prepared_digest()
    made_by = {"config": settings, "prepared": prepared, "method": method, "seed": seed}
    if METHODS[method].uses_llm:
        made_by["embedded"] = embedded
    for part in METHODS[method].learns_from:  # the recipe that made it: a later session re-makes its model
        made_by[part] = learnt_from[part]["key"]
    return settings, storage.digest(made_by)


def keyed(
    cfg: PipelineConfig, methods: list[str], seeds: list[int], embedded: str | None
) -> dict[tuple[str, int], str]:
    """``{(method, seed): the key its record would have}`` for ``methods`` and what they learn from, each
    student keyed by the keys of its parts, as ``train_or_reuse`` chains them; ``embedded``: the embed stage's
    inputs digest."""
    keys: dict[tuple[str, int], str] = {}
    for method in closure(methods):
        for seed in seeds:
            learnt = {part: {"key": keys[part, seed]} for part in METHODS[method].learns_from}
            keys[method, seed] = record_key(cfg, method, seed, embedded, learnt)[1]
    return keys


def plan(cfg: PipelineConfig, methods: list[str], seeds: list[int], level: str) -> list[dict]:
    """What ``--records-only`` would do, without training: per method (and what it learns from) and seed,
    ``{"model", "method", "seed", "recorded": whether its record holds, "hours": what its record took (None:
    none is committed)}``; a record that does not hold took ``hours`` under the settings it was made with."""
    embedded = targets.inputs_digest(cfg.embed, Layout(cfg.storage_path))
    rows = []
    for (method, seed), key in keyed(cfg, methods, seeds, embedded).items():
        path = record_path(method, seed, level)
        record = json.loads(path.read_text()) if path.exists() else None
        rows.append(
            {
                "model": model_name(method, seed, level),
                "method": method,
                "seed": seed,
                "recorded": bool(record) and record["key"] == key,
                "hours": round(record["seconds"] / 3600, 2) if record else None,
            }
        )
    return rows


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
                **{m: llm_share.brief(d[m]) for m in ("hr@10", "ndcg@10")},
            }
            for split, d in splits.items()
        }
        for name, splits in compared.items()
    }


def embedded_by(summary) -> dict:
    """What a record keeps of the embed stage's run: its inputs' digest and the teacher data it covered."""
    return {
        "inputs_digest": summary.inputs_digest,
        "coverage": {
            "users_with_reasoning": summary.targets.get("oracle", 0),
            "items_with_description": summary.items_with_description,
        },
    }


def benchmark(cfg: PipelineConfig, args) -> None:
    started, layout, level = time.time(), Layout(cfg.storage_path), args.level
    chosen = args.methods.split(",") if args.methods else None
    if not all(s.strip().isdigit() for s in args.seeds.split(",")):
        raise SystemExit(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 22,23,24")
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"--seeds {args.seeds!r}: a seed is repeated")
    if level not in LEVELS:
        raise SystemExit(f"--level {level!r}: choose from {list(LEVELS)}")
    if level != "all" and len(seeds) > 1:  # the curve reads one seed's point per level
        log.info(f"{BENCHMARK}: level {level} trains its first seed only, {seeds[0]}")
        seeds = seeds[:1]
    if chosen is None:  # below full teacher data only what the curve needs: no-LLM methods do not change
        chosen = list(METHODS) if level == "all" else list(CURVE)
    if unknown := [m for m in chosen if m not in METHODS]:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    cfg = at_level(cfg, level)
    runs: dict[str, dict[int, dict]] = {}

    def train(method: str, seed: int) -> dict:
        learnt_from = {part: runs[part][seed] for part in METHODS[method].learns_from}
        return train_or_reuse(cfg, method, seed, level, embedded, learnt_from)

    if args.plan:  # what --records-only would train; nothing trains
        for row in plan(cfg, chosen, seeds, level):
            took = (
                "" if row["hours"] is None else f" ({row['hours']} h" + (")" if row["recorded"] else " when last made)")
            )
            print(f"{row['model']}: {'recorded' if row['recorded'] else 'to train'}{took}")
        return
    if args.records_only:  # each chosen method's records (and what it learns from) for every seed; no report
        reads_texts = any(METHODS[m].uses_llm or "embed" in METHODS[m].sections for m in closure(chosen))
        embedded = embedded_by(embed.run(cfg)) if reads_texts else {"inputs_digest": None, "coverage": {}}
        for method in closure(chosen):
            runs[method] = {seed: train(method, seed) for seed in seeds}
        log.info(f"{BENCHMARK}: recorded " + ", ".join(model_name(m, s, level) for m in runs for s in seeds))
        return
    summary = embed.run(cfg)
    embedded = embedded_by(summary)

    for method in closure(controls(chosen)):  # METHODS lists a method after what it learns from
        runs[method] = {seeds[0]: train(method, seeds[0])}
    best = best_student({m: by_seed[seeds[0]]["summary"]["valid"] for m, by_seed in runs.items()})
    seeded = closure([BASELINE, TEXT_MODEL, *([best] if best else []), *controls([m for m in CONTROLLED if m in runs])])
    for method in [m for m in seeded if m in runs]:
        for seed in seeds[1:]:
            runs[method][seed] = train(method, seed)
    if level != "all":  # a point of the teacher-data curve: its records are what llm_share reads
        log.info(f"{BENCHMARK}: level {level} recorded: " + ", ".join(model_name(m, seeds[0], level) for m in runs))
        return
    out = summarise(layout, runs, best, seeds)
    out["setup"] = {
        "users": layout.read_users().num_rows,
        "items": layout.read_items().num_rows,
        "seeds": seeds,
        "text_model": model_name(TEXT_MODEL, seeds[0]),
        "teacher_outputs": [relative(s.folder) for s in cfg.embed.teacher_outputs or []],
        "embedded_targets": summary.targets,
        "items_with_description": summary.items_with_description,
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
    curve = {lvl: curve_points(cfg, lvl, seeds[0]) for lvl in LEVELS if lvl != "all"}
    curve["all"] = {m: runs[m][seeds[0]] for m in CURVE if m in runs}
    shares = llm_share.summarise(
        runs,
        seeds,
        embedded["coverage"],
        METHODS,
        ranks_of,
        {lvl: by_method for lvl, by_method in curve.items() if by_method},
        best,
        llm_share.generation_hours([s.folder for s in cfg.embed.teacher_outputs or []]),
        model_name,
        llm_share.prepared_segments(layout.read_users(), layout.read_items()),
    )
    llm_share.write(shares, cfg.model_dump(mode="json"))


def curve_points(cfg: PipelineConfig, level: str, seed: int) -> dict[str, dict]:
    """``{method: record}`` of the teacher-data curve's methods at ``level`` whose records, and those of what
    they learn from, hold under ``cfg`` (``--level`` runs make them); the others are left out, with a warning."""
    points = {}
    if not cfg.embed.teacher_outputs:  # the curve samples committed teacher-output folders; there are none
        return points
    for method in CURVE:
        rows = plan(at_level(cfg, level), [method], [seed], level)
        if all(row["recorded"] for row in rows):
            points[method] = json.loads(record_path(method, seed, level).read_text())
        else:
            missing = [row["model"] for row in rows if not row["recorded"]]
            log.warning(
                f"{BENCHMARK}: the curve leaves out {model_name(method, seed, level)}: no record holds for "
                f"{missing} (python -m {BENCHMARK} --level {level} --seeds {seed} makes them)"
            )
    return points


def record_path(method: str, seed: int, level: str = "all") -> Path:
    return RUNS / f"{model_name(method, seed, level)}.json"


def closure(methods: list[str]) -> list[str]:
    """``methods`` and every method they learn from, in ``METHODS`` order.

    >>> closure(["fusion"])
    ['sasrec', 'r2end', 'fusion']
    """
    needed: set[str] = set()
    todo = list(methods)
    while todo:
        method = todo.pop()
        if method not in needed:
            needed.add(method)
            todo += METHODS[method].learns_from
    return [m for m in METHODS if m in needed]


def controls(methods: list[str]) -> list[str]:
    """The methods and their controls: each student's no-LLM twin and ID-only ensemble of as many parts.

    >>> controls(["dllm2rec", "item_mean"])
    ['dllm2rec', 'dllm2rec_twin', 'sasrec', 'item_mean']
    """
    return [m for s in methods for m in (s, METHODS[s].twin, METHODS[s].id_ensemble) if m]


def relative(folder: str) -> str:
    """A folder of this repository as the repository names it (the report is read beside the code)."""
    path, root = Path(folder), results.FOLDER.parent.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else folder


def rankings_cost(cfg: PipelineConfig, teacher: str) -> dict:
    """DLLM2Rec's teacher rankings (``teacher``'s), made once before its students train, and what making them
    cost (None: an earlier run made them; its log says how long it took)."""
    cfg = cfg.with_section("dllm2rec", teacher=teacher)
    named, table, seconds = train_dllm2rec.rankings(cfg, Layout(cfg.storage_path))
    return {"teacher": named, "positions": cfg.dllm2rec.positions, "instances": table.num_rows, "seconds": seconds}


def ratio(value: float, base: float) -> float | None:
    return value / base if base else None


def tail_paired(layout: Layout, base: pa.Table, others: dict[str, pa.Table]) -> dict:
    """``{name: {users, hr@10|ndcg@10: {diff, se, z}}}`` against SASRec on the test users whose target is a
    long-tail item (the users the tail metrics count)."""
    tail = llm_share.prepared_segments(layout.read_users(), layout.read_items())["long_tail_target"]["user_ids"]
    test = {name: t.filter(pc.is_in(t["user_id"], pa.array(tail))) for name, t in {BASELINE: base, **others}.items()}
    ranks = paired.aligned_ranks(test, "test")
    out = {}
    for name in others:
        d = metrics.paired_difference(ranks[name], ranks[BASELINE])
        out[name] = {"users": d["users"], **{m: llm_share.brief(d[m]) for m in ("hr@10", "ndcg@10")}}
    return out


def best_student(valid: dict[str, dict]) -> str | None:
    """The best LLM-informed student with controls (a no-LLM twin and an ID-only ensemble: not an ablation;
    not R2END itself, which every fusion builds on) by validation NDCG@10 among those whose validation
    long-tail HR@10 is at least ``TAIL_GOAL`` times SASRec's (all of them where none is, or SASRec did not
    run). ``valid``: each method's validation metrics.

    >>> best_student({"sasrec": {"ndcg@10": 0.07, "tail_hr@10": 0.05}, "r2end": {"ndcg@10": 0.05, "tail_hr@10": 0.07},
    ...               "fusion": {"ndcg@10": 0.081, "tail_hr@10": 0.07}, "dllm2rec": {"ndcg@10": 0.078,
    ...               "tail_hr@10": 0.08}, "id_ensemble_2": {"ndcg@10": 0.09, "tail_hr@10": 0.09},
    ...               "dllm2rec_no_embedding": {"ndcg@10": 0.085, "tail_hr@10": 0.09}})
    'dllm2rec'
    """
    students = [m for m in valid if m != TEXT_MODEL and METHODS[m].twin]
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
        f"the best LLM-informed student with controls (a no-LLM twin and an ID-only ensemble; no ablation) by "
        f"validation NDCG@10 with seed {first} among those keeping {TAIL_GOAL}x SASRec's validation long-tail "
        "HR@10 (among all where none does)"
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
            m: over_seeds(seeded[m], seeded[BASELINE], by_seed, selected=first if m == best else None)
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


def over_seeds(student: dict[int, dict], base: dict[int, dict], by_seed: dict[str, dict], selected: int | None) -> dict:
    """``{hr@10|ndcg@10: {diff, se, z, seeds_se, seeds[, diff_other_seeds]}, relative_ndcg@10}``: the student's
    runs (``student``: seed -> record) against the same seed's SASRec (``base``) over the seeds, as
    ``llm_share.over_seeds`` measures a student against a control. ``by_seed``: the per-seed paired differences;
    ``selected``: the seed the student was chosen on, whose difference is optimistic (``diff_other_seeds``
    leaves it out)."""
    shared = [s for s in student if s in base]
    ranks = llm_share.aligned_test_ranks(
        {str(s): (ranks_of(student[s]["summary"]), ranks_of(base[s]["summary"])) for s in shared}
    )
    out = llm_share.over_seeds(list(ranks.values()))
    if selected is not None:
        for m in ("hr@10", "ndcg@10"):
            out[m]["diff_other_seeds"] = float(
                np.mean([d[m]["diff"] for s, d in by_seed.items() if s != str(selected)])
            )
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
            "Over the seeds, paired against the same seed's SASRec (test): the mean difference ± the paired s.e. "
            "over users of each user's difference averaged over the seeds (the seeds share their users: "
            "not independent replications), the s.e. from the seeds' spread alone (training noise) in brackets; the "
            "best student's difference without the seed it was chosen on, whose result is optimistic:",
            "",
            "| method | H@10 − SASRec | N@10 − SASRec | N@10 − SASRec without the choosing seed |",
            "|---|---|---|---|",
        ]
        for m, d in out["paired_vs_sasrec_over_seeds"].items():
            other = d["ndcg@10"].get("diff_other_seeds")
            lines.append(
                f"| {m} | {signed(d['hr@10'])} ({d['hr@10']['seeds_se']:.4f}) "
                f"| {signed(d['ndcg@10'])} ({d['ndcg@10']['seeds_se']:.4f}) "
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
    parser.add_argument(
        "--methods", default=None, help="comma-separated subset of the methods (default: all; at a level, R2END's)"
    )
    parser.add_argument("--level", default="all", help=f"the teacher data read, one of {list(LEVELS)}")
    parser.add_argument(
        "--records-only",
        action="store_true",
        help="train (or reuse) the records of --methods (and what they learn from) for every seed, and stop: "
        "no controls, no report (the embed stage runs only if one of them reads it)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print, per record --records-only would make, whether it is recorded (and the hours it took) or "
        "still to train; nothing trains",
    )
    parser.add_argument(
        "--seeds",
        default=",".join(map(str, SEEDS)),
        help="comma-separated seeds: every method trains with the first; SASRec, R2END, the best student and "
        "every student with controls (and those controls) with all",
    )


if __name__ == "__main__":
    run_stage(
        __doc__,
        benchmark,
        f"bench-{BENCHMARK}",
        default_config="configs/bench/students-beauty.yaml",
        add_arguments=arguments,
    )
