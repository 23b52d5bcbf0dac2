"""What the LLM adds: each LLM-informed student against its no-LLM twin (the same recipe with no LLM text
anywhere) and against the ID-only ensemble of as many parts, paired on the same test users, per seed and
over the seeds; what every method costs; and the teacher-data curve. ``bench.students_beauty`` writes it from
its run records (one harness, no second copy of its machinery):

    python -m bench.students_beauty [...]   # ends by writing llm_share.json, llm_share.md, llm_share_curve.png

``llm_share.json``:

* ``coverage.{users_with_reasoning, items_with_description}``: the teacher data the students read;
* ``students.<name>.{twin, id_ensemble}`` and ``students.<name>.vs_twin.<seed>.test.{ndcg@10,hr@10}.{diff,se,z}``,
  ``vs_id_ensemble.<seed>...`` (seeds as strings); ``vs_twin_over_seeds`` / ``vs_id_ensemble_over_seeds``: the
  mean difference over seeds, its s.e. from the seeds' spread, and the relative share (diff / the control's
  mean NDCG@10). The seeds share users and teacher outputs: they are not independent replications;
* ``costs.<method>.{parts, training_hours, generation_hours, served_p50_ms}``: models summed at serving, the
  training hours of it and of every model it learns from (first seed), the hours the teacher outputs the
  benchmark reads took to generate, over every run that made them (0 for a method that reads none), its
  p50 over HTTP at concurrency 1 where ``bench.serving_cpu`` served it (None: not served);
* ``curve``: per level of teacher data (``students_beauty.LEVELS``), R2END and its fusion with SASRec minus
  the no-LLM twin (first seed);
* ``goal``: the best student above its twin and its ID-only ensemble with z >= 2 in every seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench import paired, results

NAME = "llm_share"
MEASURES = ("ndcg@10", "hr@10")
GOAL_Z, STRETCH_SHARE = 2.0, 0.03


def difference(student: pa.Table, control: pa.Table) -> dict:
    """``{test: {ndcg@10|hr@10: {diff, se, z}, users}}``: the student minus the control on the same users."""
    d = paired.compare({"control": control, "student": student})["student"]["test"]
    return {"test": {"users": d["users"], **{m: brief(d[m]) for m in MEASURES}}}


def brief(d: dict) -> dict:
    return {"diff": d["difference"], "se": d["se"], "z": d["z"]}


def over_seeds(by_seed: dict[str, dict], control_ndcg: float) -> dict:
    """``{ndcg@10|hr@10: {diff, se, seeds}, relative_ndcg@10}``: the mean of the per-seed differences, the s.e.
    of that mean from their spread (None with one seed), and the NDCG@10 difference relative to the control's.

    >>> d = over_seeds({"1": {"test": {"ndcg@10": {"diff": 0.002}, "hr@10": {"diff": 0.004}}},
    ...                 "2": {"test": {"ndcg@10": {"diff": 0.004}, "hr@10": {"diff": 0.002}}}}, 0.06)
    >>> round(d["ndcg@10"]["diff"], 4), round(d["ndcg@10"]["se"], 4), round(d["relative_ndcg@10"], 3)
    (0.003, 0.001, 0.05)
    """
    out: dict = {}
    for m in MEASURES:
        diffs = np.array([d["test"][m]["diff"] for d in by_seed.values()])
        se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else None
        out[m] = {"diff": float(diffs.mean()), "se": se, "seeds": len(diffs)}
    out["relative_ndcg@10"] = out["ndcg@10"]["diff"] / control_ndcg if control_ndcg else None
    return out


def generation_hours(folders: list[str]) -> float:
    """The hours the teacher outputs in ``folders`` took to generate, over every run that made them."""
    total = 0.0
    for folder in folders:
        summary = Path(folder) / "summary.json"
        if summary.exists():
            made = json.loads(summary.read_text())
            total += sum(run["seconds"] for run in made.get("runs") or [made["run"]])
    return total / 3600


def served_p50() -> dict[str, float]:
    """Model name -> its p50 over HTTP at concurrency 1 in the committed ``bench.serving_cpu`` result."""
    path = results.FOLDER / "serving_cpu.json"
    if not path.exists():
        return {}
    served = json.loads(path.read_text())["models"]
    return {name: m["phases"]["http"]["c1"]["p50_ms"] for name, m in served.items() if "http" in m.get("phases", {})}


def costs(runs: dict[str, dict[int, dict]], first: int, methods: dict, hours_of_text: float, model_name) -> dict:
    """``{method: {parts, training_hours, generation_hours, served_p50_ms}}`` (see the module docstring)."""
    p50 = served_p50()

    def learnt(method: str) -> set[str]:
        return {method}.union(*(learnt(p) for p in methods[method].learns_from))

    out = {}
    for m in runs:
        spec = methods[m]
        out[m] = {
            "parts": len(spec.learns_from) if "fusion" in spec.sections else 1,
            "training_hours": round(sum(runs[p][first]["seconds"] for p in learnt(m) if p in runs) / 3600, 2),
            "generation_hours": round(hours_of_text, 2) if spec.uses_llm else 0.0,
            "served_p50_ms": p50.get(model_name(m, first)),
        }
    return out


def summarise(
    runs: dict[str, dict[int, dict]],
    seeds: list[int],
    coverage: dict,
    methods: dict,
    ranks_of: Callable[[dict], pa.Table],
    curve_runs: dict[str, dict[str, dict]],
    best: str | None,
    hours_of_text: float,
    model_name,
) -> dict:
    """The JSON (see the module docstring). ``runs``: method -> seed -> record at full teacher data;
    ``curve_runs``: level -> method -> record (first seed)."""
    first = seeds[0]
    students = {}
    for name in [m for m, spec in methods.items() if spec.twin and m in runs]:
        spec, entry = methods[name], {"twin": methods[name].twin, "id_ensemble": methods[name].id_ensemble}
        for label, control in (("twin", spec.twin), ("id_ensemble", spec.id_ensemble)):
            if control not in runs:
                continue
            by_seed = {
                str(s): difference(ranks_of(r["summary"]), ranks_of(runs[control][s]["summary"]))
                for s, r in runs[name].items()
                if s in runs[control]
            }
            control_ndcg = float(np.mean([runs[control][int(s)]["summary"]["test"]["ndcg@10"] for s in by_seed]))
            entry[f"vs_{label}"] = by_seed
            entry[f"vs_{label}_over_seeds"] = over_seeds(by_seed, control_ndcg)
        students[name] = entry
    out = {
        "coverage": coverage,
        "students": students,
        "costs": costs(runs, first, methods, hours_of_text, model_name),
        "best_student": best,
        "seeds": seeds,
        "seeds_note": "the seeds share users and teacher outputs: not independent replications",
    }
    out["curve"] = [
        {
            "level": level,
            "student": m,
            **record.get("coverage", {}),
            "ndcg@10": record["summary"]["test"]["ndcg@10"],
            "twin_ndcg@10": runs[methods[m].twin][first]["summary"]["test"]["ndcg@10"],
            **difference(ranks_of(record["summary"]), ranks_of(runs[methods[m].twin][first]["summary"]))["test"][
                "ndcg@10"
            ],
        }
        for level, by_method in curve_runs.items()
        for m, record in by_method.items()
        if methods[m].twin in runs and first in runs[methods[m].twin]
    ]
    if best in students:
        entry = students[best]
        z = [
            d["test"]["ndcg@10"]["z"]
            for label in ("twin", "id_ensemble")
            for d in entry.get(f"vs_{label}", {}).values()
        ]
        complete = all(len(entry.get(f"vs_{label}", {})) == len(seeds) for label in ("twin", "id_ensemble"))
        share = entry.get("vs_twin_over_seeds", {}).get("relative_ndcg@10")
        out["goal"] = {
            "student": best,
            "z_at_least_2_vs_both_in_every_seed": complete and all(v >= GOAL_Z for v in z),
            "min_z": min(z) if z else None,
            "share_vs_twin": share,
            "stretch_share_at_least_3pct": share is not None and share >= STRETCH_SHARE,
        }
    return out


def signed(d: dict) -> str:
    return f"{d['diff']:+.4f} ± {d['se']:.4f}" if d.get("se") is not None else f"{d['diff']:+.4f}"


def hours(value: float) -> str:
    return f"{value:.1f}"


def report(out: dict) -> str:
    seeds = [str(s) for s in out["seeds"]]
    cov = out["coverage"]
    lines = [
        "# What the LLM adds: students against their no-LLM twins and ID-only ensembles (Beauty, test NDCG@10)",
        "",
        f"Teacher data read: {cov['users_with_reasoning']:,} users with oracle reasoning, "
        f"{cov['items_with_description']:,} items described. Each student minus its control on the same users "
        f"(paired diff ± s.e., z), per seed; over seeds the mean ± s.e. from the seeds' spread ({out['seeds_note']}).",
        "",
        "| student | control | "
        + " | ".join(f"seed {s}: diff ± s.e. (z)" for s in seeds)
        + " | over seeds | relative |",
        "|---|---|" + "---|" * (len(seeds) + 2),
    ]
    for name, entry in out["students"].items():
        for label in ("twin", "id_ensemble"):
            if f"vs_{label}" not in entry:
                continue
            by_seed, over = entry[f"vs_{label}"], entry[f"vs_{label}_over_seeds"]
            cells = [
                f"{signed(by_seed[s]['test']['ndcg@10'])} ({by_seed[s]['test']['ndcg@10']['z']:+.1f})"
                if s in by_seed
                else "–"
                for s in seeds
            ]
            relative = over["relative_ndcg@10"]
            lines.append(
                f"| {name} | `{entry[label]}` | "
                + " | ".join(cells)
                + f" | {signed(over['ndcg@10'])} | {'–' if relative is None else f'{relative:+.1%}'} |"
            )
    if goal := out.get("goal"):
        lowest = "–" if goal["min_z"] is None else f"{goal['min_z']:+.2f}"
        met = lambda ok: "met" if ok else "not met"  # noqa: E731
        lines += [
            "",
            f"Goal (best student `{goal['student']}` above both controls, z ≥ {GOAL_Z:g} in every seed): "
            f"{met(goal['z_at_least_2_vs_both_in_every_seed'])} (lowest z {lowest}); stretch (the LLM's share ≥ "
            f"{STRETCH_SHARE:.0%} of the twin's NDCG@10): {met(goal['stretch_share_at_least_3pct'])}.",
        ]
    lines += [
        "",
        "What each method costs (first seed): models summed at serving, training hours (its own and every model "
        "it learns from), hours of generation its teacher texts took, p50 over HTTP at concurrency 1 "
        "(`bench.serving_cpu`; – not served):",
        "",
        "| method | parts | training h | generation h | served p50 ms |",
        "|---|---|---|---|---|",
    ]
    for m, c in out["costs"].items():
        p50 = "–" if c["served_p50_ms"] is None else f"{c['served_p50_ms']:.1f}"
        lines.append(f"| {m} | {c['parts']} | {hours(c['training_hours'])} | {hours(c['generation_hours'])} | {p50} |")
    if out["curve"]:
        lines += [
            "",
            "Teacher-data curve (first seed): the student minus its no-LLM twin at each level of teacher data:",
            "",
            "| level | student | users with reasoning | items described | N@10 | twin N@10 | diff ± s.e. (z) |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in out["curve"]:
            lines.append(
                f"| {p['level']} | {p['student']} | {p.get('users_with_reasoning', 0):,} | "
                f"{p.get('items_with_description', 0):,} | {p['ndcg@10']:.4f} | {p['twin_ndcg@10']:.4f} | "
                f"{signed(p)} ({p['z']:+.1f}) |"
            )
        lines += ["", f"Plot: `{NAME}_curve.png`."]
    return "\n".join(lines) + "\n"


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes_of = {"users_with_reasoning": "items_with_description", "items_with_description": "users_with_reasoning"}
    for ax, key, title in (
        (axes[0], "users_with_reasoning", "users with oracle reasoning"),
        (axes[1], "items_with_description", "items described"),
    ):
        # one axis at a time: the points that read all of the other kind of teacher text
        held = max(p.get(axes_of[key], 0) for p in out["curve"])
        on_axis = [p for p in out["curve"] if p.get(axes_of[key], 0) == held]
        for student in dict.fromkeys(p["student"] for p in on_axis):
            points = sorted((p for p in on_axis if p["student"] == student), key=lambda p: p.get(key, 0))
            ax.errorbar(
                [p.get(key, 0) for p in points],
                [p["diff"] for p in points],
                yerr=[1.96 * p["se"] for p in points],
                fmt="o-",
                capsize=3,
                label=student,
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(title)
        ax.set_ylabel("test NDCG@10 − no-LLM twin (95% CI)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(results.FOLDER / f"{NAME}_curve.png", dpi=110)
    plt.close(fig)


def write(out: dict, config: dict) -> None:
    if out["curve"]:
        plot(out)
    results.write(NAME, out, report(out), config)
