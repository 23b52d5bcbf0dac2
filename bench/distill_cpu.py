"""Distillation on this CPU: float32 against bfloat16, each with and without length buckets, side by side.

    python -m bench.distill_cpu [--config configs/bench/distill-cpu.yaml] [--seeds 22,23]

R2END's students cost the most CPU hours of the students benchmark (an epoch over every Beauty user is about
an hour in float32). This prepares Beauty and embeds the oracle reasoning of the config's sample of users
(``embed.teacher_outputs``' ``sample_users``), then distills the same student for one epoch under each setting
and seed, the settings' order reversed for every other seed, and
reads from each run's summary the training loop's own seconds (Ray Train's start apart) and the held-out
users' loss after the epoch: a setting is only cheaper if that loss holds. Writes
bench/results/distill_cpu.{json,md}.
"""

from __future__ import annotations

import numpy as np

from bench import results
from r2end_core.config import PipelineConfig
from r2end_core.summaries import DistillSummary
from ray_jobs import distill, embed, prepare
from ray_jobs.runtime import log, run_stage

BENCHMARK = "distill_cpu"
#: name -> the distill settings it changes; the first is what the students benchmark ran before
SETTINGS = {
    "float32": {"dtype": "float32", "length_buckets": False},
    "float32_buckets": {"dtype": "float32", "length_buckets": True},
    "bfloat16": {"dtype": "bfloat16", "length_buckets": False},
    "bfloat16_buckets": {"dtype": "bfloat16", "length_buckets": True},
}
BASE = "float32"
#: the most a setting may raise the held-out loss, in every seed, and still be chosen (set before the first run)
LOSS_TOLERANCE = 0.01


def distill_once(cfg: PipelineConfig, setting: str, seed: int) -> dict:
    run_cfg = cfg.with_section("distill", run_name=f"{BENCHMARK}-{setting}-seed{seed}", seed=seed, **SETTINGS[setting])
    summary: DistillSummary = distill.run(run_cfg)
    if summary.resumed_from_step:  # a resumed run's seconds are only its last attempt's
        raise RuntimeError(f"{setting}, seed {seed}: resumed from step {summary.resumed_from_step}; delete its run")
    return {
        "train_seconds": round(summary.train_seconds, 1),
        "users_per_second": round(summary.users_distilled / summary.train_seconds, 2),
        "held_out_loss": summary.held_out_losses[-1],
        "held_out_cosine": summary.distances_held_out["cos_after"].mean,
        "loss_last": summary.loss_last,
        "users_distilled": summary.users_distilled,
        "users_held_out": summary.users_held_out,
    }


def summarise(runs: dict[str, dict[int, dict]]) -> dict:
    """Per setting: mean seconds, the speedup over float32 and the held-out loss's change, paired by seed."""
    out = {}
    for setting, by_seed in runs.items():
        seeds = sorted(by_seed)
        speedups = [runs[BASE][s]["train_seconds"] / by_seed[s]["train_seconds"] for s in seeds]
        loss_changes = [by_seed[s]["held_out_loss"] / runs[BASE][s]["held_out_loss"] - 1 for s in seeds]
        out[setting] = {
            "train_seconds": round(float(np.mean([by_seed[s]["train_seconds"] for s in seeds])), 1),
            "speedup": round(float(np.mean(speedups)), 2),
            "held_out_loss": round(float(np.mean([by_seed[s]["held_out_loss"] for s in seeds])), 6),
            "held_out_loss_change": round(float(np.mean(loss_changes)), 4),
            "held_out_loss_change_per_seed": [round(c, 4) for c in loss_changes],
        }
    return out


def cheapest_holding(settings: dict[str, dict]) -> str:
    """The fastest setting whose held-out loss is within ``LOSS_TOLERANCE`` of float32's in every seed.

    >>> cheapest_holding({"float32": {"speedup": 1.0, "held_out_loss_change_per_seed": [0.0]},
    ...                   "bfloat16": {"speedup": 2.0, "held_out_loss_change_per_seed": [0.03]},
    ...                   "float32_buckets": {"speedup": 1.5, "held_out_loss_change_per_seed": [0.004]}})
    'float32_buckets'
    """
    holding = [s for s, v in settings.items() if max(v["held_out_loss_change_per_seed"]) <= LOSS_TOLERANCE]
    return max(holding, key=lambda s: settings[s]["speedup"])


def report(out: dict) -> str:
    lines = [
        "# Distilling the student on this CPU: precision and length buckets",
        "",
        f"One epoch over {out['users_distilled']:,} Beauty users (their oracle reasoning as targets, "
        f"{out['users_held_out']:,} more held out), the bundled MiniLM student, seeds {out['seeds']}, each "
        "setting's runs side by side in one run (the order reversed for every other seed). Seconds: the training "
        "loop's own (Ray Train's start apart), mean over seeds; held-out loss: the held-out users' MSE after the "
        "epoch, its change against float32 paired by seed.",
        "",
        "| setting | dtype | length buckets | seconds | speedup | held-out loss | change vs float32 (per seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, s in out["settings"].items():
        per_seed = ", ".join(f"{c:+.2%}" for c in s["held_out_loss_change_per_seed"])
        lines.append(
            f"| {setting} | {SETTINGS[setting]['dtype']} | {'yes' if SETTINGS[setting]['length_buckets'] else 'no'} "
            f"| {s['train_seconds']:,.0f} | {s['speedup']:.2f}x | {s['held_out_loss']:.5f} | "
            f"{s['held_out_loss_change']:+.2%} ({per_seed}) |"
        )
    lines += [
        "",
        f"Chosen for the students benchmark: **{out['chosen']}**, the fastest setting whose held-out loss is within "
        f"{LOSS_TOLERANCE:.0%} of float32's in every seed (a rule set before the first run).",
    ]
    return "\n".join(lines) + "\n"


def benchmark(cfg: PipelineConfig, args) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    prepare.run(cfg)
    embed.run(cfg)
    runs: dict[str, dict[int, dict]] = {setting: {} for setting in SETTINGS}
    for i, seed in enumerate(seeds):
        for setting in list(SETTINGS) if i % 2 == 0 else list(SETTINGS)[::-1]:
            runs[setting][seed] = distill_once(cfg, setting, seed)
            log.info(f"{BENCHMARK}: {setting}, seed {seed}: {runs[setting][seed]}")
    first = runs[BASE][seeds[0]]
    out = {
        "seeds": seeds,
        "users_distilled": first["users_distilled"],
        "users_held_out": first["users_held_out"],
        "settings": summarise(runs),
        "loss_tolerance": LOSS_TOLERANCE,
        "runs": {setting: {str(s): r for s, r in by_seed.items()} for setting, by_seed in runs.items()},
        "machine": results.machine(),
    }
    out["chosen"] = cheapest_holding(out["settings"])
    results.write(BENCHMARK, out, report(out), cfg.model_dump(mode="json"))
    return out


def arguments(parser) -> None:
    parser.add_argument("--seeds", default="22,23", help="comma-separated seeds, each running every setting")


if __name__ == "__main__":
    run_stage(__doc__, benchmark, f"bench-{BENCHMARK}", default_config="configs/bench/distill-cpu.yaml",
              add_arguments=arguments)  # fmt: skip
