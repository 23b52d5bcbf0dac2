"""What the LLM adds: each LLM-informed student against its no-LLM twin (the same recipe with no LLM text
anywhere) and against the ID-only ensemble of as many parts, paired on the same test users, per seed and
over the seeds; what every method costs; and the teacher-data curve. ``bench.students_beauty`` writes it from
its run records (one harness, no second copy of its machinery):

    python -m bench.students_beauty [...]   # ends by writing llm_share.json, llm_share.md, llm_share_curve.png

``llm_share.json``:

* ``coverage.{users_with_reasoning, items_with_description}``: the teacher data the students read;
* ``students.<name>.{twin, id_ensemble}`` and ``students.<name>.vs_twin.<seed>.test.{ndcg@10,hr@10}.{diff,se,z}``,
  ``vs_id_ensemble.<seed>...`` (seeds as strings); ``vs_twin_over_seeds`` / ``vs_id_ensemble_over_seeds``: the
  mean difference over seeds with the paired s.e. over users of each user's difference averaged over the seeds
  (``se``, ``z``), the s.e. from the seeds' spread (``seeds_se``: training noise alone) and the relative share
  (diff / the control's mean NDCG@10). The seeds share users and teacher outputs: they are not independent
  replications;
* ``students.<name>.segments.<segment>.{users, vs_twin, vs_id_ensemble}``: the same over-seeds comparison on
  the test users of each segment (``segments.<segment>.{about, users}``: a long-tail target, a cold target, a
  short history; ``user_segments``), where an LLM's knowledge of items should matter most;
* ``costs.<method>.{parts, training_hours, generation_hours, served_p50_ms, served_model}``: models summed at
  serving; the training hours of it and of every model it learns from (first seed; DLLM2Rec's with its
  teacher's rankings; None where a run not among the benchmark's made those); the hours the teacher-output
  folders holding the texts it reads took to generate, over every run that made them (0 for a method that
  reads none); its p50 over HTTP at concurrency 1 where ``bench.serving_cpu`` served it, the first seed's
  model or else another seed's (the seed changes weights, not the work a request costs; ``served_model`` says
  which; None: not served);
* ``tail_floor_missed``: ``{model: why}``, the fusions whose long-tail floor no weights reached on validation;
* ``curve``: per level of teacher data (``students_beauty.LEVELS``), R2END and its fusion with SASRec minus
  the no-LLM twin (``vs_twin``) and minus the ID-only ensemble (``vs_id_ensemble``), first seed;
* ``goal``: the best student above its twin and its ID-only ensemble with z >= 2 in every seed, at least three.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench import paired, results
from r2end_core.data.splits import Split
from r2end_core.eval import metrics
from r2end_core.eval.evaluate import EvalSet
from r2end_core.models import fusion

NAME = "llm_share"
MEASURES = ("ndcg@10", "hr@10")
GOAL_Z, GOAL_SEEDS, STRETCH_SHARE = 2.0, 3, 0.03
SEGMENT_QUANTILE = 0.25


def aligned_test_ranks(pairs: dict[str, tuple[pa.Table, pa.Table]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each pair's (student, control) test ranks, every one in the same user order: runs scored on other
    users are an error, across pairs too (the seeds' differences are averaged user by user)."""
    tables = {f"{key}/{side}": t for key, pair in pairs.items() for side, t in zip(("student", "control"), pair)}
    aligned = paired.aligned_ranks(tables, "test")
    return {key: (aligned[f"{key}/student"], aligned[f"{key}/control"]) for key in pairs}


def difference(student: np.ndarray, control: np.ndarray) -> dict:
    """``{test: {ndcg@10|hr@10: {diff, se, z}, users}}``: the student minus the control on the same users."""
    d = metrics.paired_difference(student, control)
    return {"test": {"users": d["users"], **{m: brief(d[m]) for m in MEASURES}}}


def brief(d: dict) -> dict:
    return {"diff": d["difference"], "se": d["se"], "z": d["z"]}


def over_seeds(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """``{ndcg@10|hr@10: {diff, se, z, seeds_se, seeds}, relative_ndcg@10}`` from each seed's (student, control)
    ranks on the same users in one order: ``diff``, the mean of the per-seed differences; ``se``, the paired
    s.e. over users of each user's difference averaged over the seeds (the seeds share their users, so the
    error of sampling users is common to them and the seeds' spread alone would leave it out); ``seeds_se``,
    the s.e. from the seeds' spread (training noise alone; None with one seed); ``relative_ndcg@10``, the
    NDCG@10 difference relative to the control's on those users over the seeds.

    >>> pairs = [(np.array([0, 20, 3]), np.array([30, 1, 40])), (np.array([0, 1, 3]), np.array([30, 1, 2]))]
    >>> d = over_seeds(pairs)
    >>> d["hr@10"]["diff"], round(d["hr@10"]["se"], 3), d["hr@10"]["seeds_se"], d["hr@10"]["seeds"]
    (0.3333333333333333, 0.441, 0.0, 2)
    """
    out: dict = {}
    for m in MEASURES:
        gains = [(metrics.user_gains(student, 10)[m], metrics.user_gains(control, 10)[m]) for student, control in pairs]
        per_seed = np.array([student - control for student, control in gains])  # seeds x users
        per_user = per_seed.mean(axis=0)
        diff, se = float(per_user.mean()), float(per_user.std(ddof=1) / np.sqrt(len(per_user)))
        spread = per_seed.mean(axis=1)
        seeds_se = float(spread.std(ddof=1) / np.sqrt(len(spread))) if len(spread) > 1 else None
        out[m] = {"diff": diff, "se": se, "z": diff / se if se else 0.0, "seeds_se": seeds_se, "seeds": len(pairs)}
        if m == "ndcg@10":
            control_ndcg = float(np.mean([control.mean() for _, control in gains]))
    out["relative_ndcg@10"] = out["ndcg@10"]["diff"] / control_ndcg if control_ndcg else None
    return out


def user_segments(
    user_ids: np.ndarray, history_lengths: np.ndarray, target_popularity: np.ndarray, target_in_tail: np.ndarray
) -> dict[str, dict]:
    """``{name: {"about", "user_ids"}}``: the test users of each segment where the LLM's share is reported
    beside the whole, from each user's history length (items before the test target), the target's training
    interactions and whether it is a long-tail item. Where an LLM's knowledge of items should matter most:
    ``long_tail_target``; ``cold_target``, the quarter of users whose target had the fewest training
    interactions (ties included); ``short_history``, the quarter with the fewest items before it (ties
    included). Declared before any test number of the controls was read; three secondary looks, not
    corrected for multiplicity.

    >>> cut = user_segments(np.array(["a", "b", "c", "d"]), np.array([4, 9, 4, 12]), np.array([2, 40, 7, 1]),
    ...                np.array([True, False, True, True]))
    >>> {name: s["user_ids"].tolist() for name, s in cut.items()}  # a quarter, and the tie at 4 items
    {'long_tail_target': ['a', 'c', 'd'], 'cold_target': ['d'], 'short_history': ['a', 'c']}
    """
    cold = np.quantile(target_popularity, SEGMENT_QUANTILE, method="lower")
    short = np.quantile(history_lengths, SEGMENT_QUANTILE, method="lower")
    return {
        "long_tail_target": {"about": "the target is a long-tail item", "user_ids": user_ids[target_in_tail]},
        "cold_target": {
            "about": f"the target had at most {int(cold)} training interactions (the quarter of users with the fewest)",
            "user_ids": user_ids[target_popularity <= cold],
        },
        "short_history": {
            "about": f"at most {int(short)} items before the target (the quarter of users with the fewest)",
            "user_ids": user_ids[history_lengths <= short],
        },
    }


def prepared_segments(users: pa.Table, items: pa.Table) -> dict[str, dict]:
    """``user_segments`` of the prepared data's test users (``users``, ``items``: the prepared tables)."""
    scored = EvalSet.build(users, items, Split.TEST)
    popularity = np.asarray(items.column("train_popularity").to_pylist())
    lengths = np.array([len(history) for history in scored.histories.item_ids])
    return user_segments(np.asarray(scored.user_ids), lengths, popularity[scored.targets], scored.tail[scored.targets])


def generation_hours(folders: list[str]) -> dict[str, dict]:
    """``{folder: {"hours", "texts"}}``: the hours each teacher-output folder took to generate, over every run
    that made it, and the kinds of text it holds (its Parquet files' names: ``oracle``, ``items``, ...)."""
    made = {}
    for folder in folders:
        summary = Path(folder) / "summary.json"
        if not summary.exists():
            raise ValueError(f"{summary} not found: a teacher-output folder keeps the summary of the runs that made it")
        runs = json.loads(summary.read_text())
        seconds = sum(run["seconds"] for run in runs.get("runs") or [runs["run"]])
        made[folder] = {"hours": seconds / 3600, "texts": sorted(p.stem for p in Path(folder).glob("*.parquet"))}
    return made


def texts_read(method: str, methods: dict) -> set[str]:
    """The kinds of teacher text ``method`` reads, itself (``Method.texts``) or through what it learns from."""
    spec = methods[method]
    return set(spec.texts).union(*(texts_read(part, methods) for part in spec.learns_from))


def served_p50() -> dict[str, float]:
    """Model name -> its p50 over HTTP at concurrency 1 in the committed ``bench.serving_cpu`` result."""
    path = results.FOLDER / "serving_cpu.json"
    if not path.exists():
        return {}
    served = json.loads(path.read_text())["models"]
    return {name: m["phases"]["http"]["c1"]["p50_ms"] for name, m in served.items() if "http" in m.get("phases", {})}


def rankings_seconds(runs: dict[str, dict[int, dict]]) -> dict[str, float]:
    """Teacher (``<model>/<version>``) -> the seconds its DLLM2Rec rankings took, from the record that made them
    (a later record that found them made says None)."""
    return {
        ranked["teacher"]: ranked["seconds"]
        for by_seed in runs.values()
        for record in by_seed.values()
        if (ranked := record.get("teacher_rankings")) and ranked["seconds"] is not None
    }


def trained(record: dict, ranked: dict[str, float]) -> float | None:
    """The seconds a run's model took to make: its training, and its teacher's rankings where it learns from
    them (``ranked``: ``rankings_seconds``). None: a run not among these made them, so their cost is unknown."""
    rankings = record.get("teacher_rankings")
    if not rankings:
        return record["seconds"]
    made = rankings["seconds"] if rankings["seconds"] is not None else ranked.get(rankings["teacher"])
    return None if made is None else record["seconds"] + made


def costs(runs: dict[str, dict[int, dict]], first: int, methods: dict, made: dict[str, dict], model_name) -> dict:
    """``{method: {parts, training_hours, generation_hours, served_p50_ms}}`` (see the module docstring)."""
    p50, ranked = served_p50(), rankings_seconds(runs)

    def learnt(method: str) -> set[str]:
        return {method}.union(*(learnt(p) for p in methods[method].learns_from))

    out = {}
    for m in runs:
        spec = methods[m]
        served = next((name for s in [first, *runs[m]] if (name := model_name(m, s)) in p50), None)
        out[m] = {
            "parts": len(spec.learns_from) if "fusion" in spec.sections else 1,
            "training_hours": None
            if None in (took := [trained(runs[p][first], ranked) for p in learnt(m) if p in runs])
            else round(sum(took) / 3600, 2),
            "generation_hours": round(
                sum(f["hours"] for f in made.values() if texts_read(m, methods) & set(f["texts"])), 2
            ),
            "served_p50_ms": p50.get(served),
            "served_model": served,
        }
    return out


def tail_floor_missed(runs: dict[str, dict[int, dict]], model_name) -> dict[str, str]:
    """``{model: why}`` for each fusion with a long-tail floor whose weights, chosen on validation, missed it
    (no weights reached it: the fusion fell back to the most long-tail HR@10)."""
    out = {}
    for method, by_seed in runs.items():
        for seed, record in by_seed.items():
            summary = record["summary"]
            if ratio := (summary.get("config") or {}).get("min_long_tail_ratio"):
                searched = summary["history"]
                if missed := fusion.floor_missed(searched, fusion.best_weights(searched, ratio), ratio):
                    out[model_name(method, seed)] = missed
    return out


def summarise(
    runs: dict[str, dict[int, dict]],
    seeds: list[int],
    coverage: dict,
    methods: dict,
    ranks_of: Callable[[dict], pa.Table],
    curve_runs: dict[str, dict[str, dict]],
    best: str | None,
    made: dict[str, dict],
    model_name,
    segments: dict[str, dict],
) -> dict:
    """The JSON (see the module docstring). ``runs``: method -> seed -> record at full teacher data;
    ``curve_runs``: level -> method -> record (first seed), records that hold under the current config;
    ``made``: ``generation_hours`` of the teacher outputs read; ``segments``: the test users' segments
    (``user_segments``) where each share is reported too."""
    first = seeds[0]

    def against(student: dict, control: str, seed: int) -> dict:
        """The student's record minus ``control``'s of ``seed``, with the control's name and test NDCG@10."""
        (ranks,) = aligned_test_ranks(
            {"": (ranks_of(student["summary"]), ranks_of(runs[control][seed]["summary"]))}
        ).values()
        test = runs[control][seed]["summary"]["test"]
        return {"control": control, "control_ndcg@10": test["ndcg@10"], **difference(*ranks)["test"]["ndcg@10"]}

    students = {}
    for name in [m for m, spec in methods.items() if spec.twin and m in runs]:
        spec, entry = methods[name], {"twin": methods[name].twin, "id_ensemble": methods[name].id_ensemble}
        for label, control in (("twin", spec.twin), ("id_ensemble", spec.id_ensemble)):
            shared = [s for s in seeds if s in runs[name] and s in runs.get(control, {})]
            if not shared:
                continue
            ranks = aligned_test_ranks(
                {str(s): (ranks_of(runs[name][s]["summary"]), ranks_of(runs[control][s]["summary"])) for s in shared}
            )
            entry[f"vs_{label}"] = {s: difference(*pair) for s, pair in ranks.items()}
            entry[f"vs_{label}_over_seeds"] = over_seeds(list(ranks.values()))
            users = paired.split_rows(ranks_of(runs[name][shared[0]]["summary"]), "test")["user_id"].to_numpy()
            for segment, about in segments.items():
                inside = np.isin(users, about["user_ids"])  # the aligned ranks' user order
                cut = entry.setdefault("segments", {}).setdefault(segment, {"users": int(inside.sum())})
                cut[f"vs_{label}"] = over_seeds([(st[inside], co[inside]) for st, co in ranks.values()])
        students[name] = entry
    out = {
        "coverage": coverage,
        "students": students,
        "costs": costs(runs, first, methods, made, model_name),
        "best_student": best,
        "seeds": seeds,
        "seeds_note": "the seeds share users and teacher outputs: not independent replications",
        "tail_floor_missed": tail_floor_missed(runs, model_name),
        "segments": {name: {"about": cut["about"], "users": len(cut["user_ids"])} for name, cut in segments.items()},
    }
    out["curve"] = [
        {
            "level": level,
            "student": m,
            "users_with_reasoning": record["coverage"]["users_with_reasoning"],
            "items_with_description": record["coverage"]["items_with_description"],
            "ndcg@10": record["summary"]["test"]["ndcg@10"],
            **{
                f"vs_{label}": against(record, control, first)
                for label, control in (("twin", methods[m].twin), ("id_ensemble", methods[m].id_ensemble))
            },
        }
        for level, by_method in curve_runs.items()
        for m, record in by_method.items()
        if all(first in runs.get(c, {}) for c in (methods[m].twin, methods[m].id_ensemble))
    ]
    if best is not None:
        entry = students.get(best, {})
        z = [
            d["test"]["ndcg@10"]["z"]
            for label in ("twin", "id_ensemble")
            for d in entry.get(f"vs_{label}", {}).values()
        ]
        # every seed against both controls, and as many seeds as the goal asks
        complete = len(seeds) >= GOAL_SEEDS and all(
            len(entry.get(f"vs_{label}", {})) == len(seeds) for label in ("twin", "id_ensemble")
        )
        share = entry.get("vs_twin_over_seeds", {}).get("relative_ndcg@10")
        out["goal"] = {
            "student": best,
            "seeds": len(seeds),
            "z_at_least_2_vs_both_in_every_seed": complete and all(v >= GOAL_Z for v in z),
            "min_z": min(z) if z else None,
            "share_vs_twin": share,
            "stretch_share_at_least_3pct": share is not None and share >= STRETCH_SHARE,
        }
    return out


def with_z(d: dict) -> str:
    return f"{d['diff']:+.4f} ± {d['se']:.4f} ({d['z']:+.1f})"


def with_relative(over: dict) -> str:
    """An over-seeds NDCG@10 comparison: diff ± s.e. (z), and relative to the control's."""
    relative = over["relative_ndcg@10"]
    return with_z(over["ndcg@10"]) + ("" if relative is None else f", {relative:+.1%}")


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
        "(paired diff ± s.e., z), per seed. Over seeds: the mean difference ± the paired s.e. over users of each "
        "user's difference averaged over the seeds (z), and beside it the s.e. from the seeds' spread alone "
        f"(training noise): {out['seeds_note']}.",
        "",
        "| student | control | "
        + " | ".join(f"seed {s}: diff ± s.e. (z)" for s in seeds)
        + " | over seeds (shared users) | seeds' spread s.e. | relative |",
        "|---|---|" + "---|" * (len(seeds) + 3),
    ]
    for name, entry in out["students"].items():
        for label in ("twin", "id_ensemble"):
            if f"vs_{label}" not in entry:
                continue
            by_seed, over = entry[f"vs_{label}"], entry[f"vs_{label}_over_seeds"]
            cells = [with_z(by_seed[s]["test"]["ndcg@10"]) if s in by_seed else "–" for s in seeds]
            spread, relative = over["ndcg@10"]["seeds_se"], over["relative_ndcg@10"]
            lines.append(
                f"| {name} | `{entry[label]}` | "
                + " | ".join(cells)
                + f" | {with_z(over['ndcg@10'])} | {'–' if spread is None else f'{spread:.4f}'} | "
                + f"{'–' if relative is None else f'{relative:+.1%}'} |"
            )
    if any("segments" in entry for entry in out["students"].values()):
        names = list(out["segments"])
        lines += [
            "",
            "Where it adds, over the seeds (NDCG@10 diff ± paired s.e. (z), relative to the control's on those users), "
            "on the test users of each segment ("
            + "; ".join(f"{n}: {c['about']}, {c['users']:,} users" for n, c in out["segments"].items())
            + "). Declared before the controls' test numbers were read; secondary looks, not corrected for "
            "multiplicity:",
            "",
            "| student | control | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for name, entry in out["students"].items():
            for label in ("twin", "id_ensemble"):
                cuts = [entry.get("segments", {}).get(n, {}).get(f"vs_{label}") for n in names]
                if not any(cuts):
                    continue
                cells = ["–" if c is None else with_relative(c) for c in cuts]
                lines.append(f"| {name} | `{entry[label]}` | " + " | ".join(cells) + " |")
    if goal := out.get("goal"):
        lowest = "–" if goal["min_z"] is None else f"{goal['min_z']:+.2f}"
        met = lambda ok: "met" if ok else "not met"  # noqa: E731
        lines += [
            "",
            f"Goal (best student `{goal['student']}` above both controls, z ≥ {GOAL_Z:g} in every one of at least "
            f"{GOAL_SEEDS} seeds; {goal['seeds']} run): {met(goal['z_at_least_2_vs_both_in_every_seed'])} "
            f"(lowest z {lowest}); stretch (the LLM's share ≥ {STRETCH_SHARE:.0%} of the twin's NDCG@10): "
            f"{met(goal['stretch_share_at_least_3pct'])}.",
        ]
    if out["tail_floor_missed"]:
        lines += ["", "Long-tail floors missed on validation (the fusion kept the most long-tail HR@10 it found):", ""]
        lines += [f"- `{model}`: {why}" for model, why in out["tail_floor_missed"].items()]
    lines += [
        "",
        "What each method costs (first seed): models summed at serving, training hours (its own and every model "
        "it learns from; – unknown), hours of generation its teacher texts took, p50 over HTTP at concurrency 1 "
        "(`bench.serving_cpu`, the model named; – not served):",
        "",
        "| method | parts | training h | generation h | served p50 ms |",
        "|---|---|---|---|---|",
    ]
    for m, c in out["costs"].items():
        p50 = "–" if c["served_p50_ms"] is None else f"{c['served_p50_ms']:.1f} (`{c['served_model']}`)"
        took = "–" if c["training_hours"] is None else hours(c["training_hours"])
        lines.append(f"| {m} | {c['parts']} | {took} | {hours(c['generation_hours'])} | {p50} |")
    if out["curve"]:
        lines += [
            "",
            "Teacher-data curve (first seed): the student minus its no-LLM twin and minus its ID-only ensemble at "
            "each level of teacher data:",
            "",
            "| level | student | users with reasoning | items described | N@10 | − twin: diff ± s.e. (z) "
            "| − ID-only: diff ± s.e. (z) |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in out["curve"]:
            lines.append(
                f"| {p['level']} | {p['student']} | {p['users_with_reasoning']:,} | "
                f"{p['items_with_description']:,} | {p['ndcg@10']:.4f} | {with_z(p['vs_twin'])} | "
                f"{with_z(p['vs_id_ensemble'])} |"
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
        held = max(p[axes_of[key]] for p in out["curve"])
        on_axis = [p for p in out["curve"] if p[axes_of[key]] == held]
        for student in dict.fromkeys(p["student"] for p in on_axis):
            points = sorted((p for p in on_axis if p["student"] == student), key=lambda p: p[key])
            ax.errorbar(
                [p[key] for p in points],
                [p["vs_twin"]["diff"] for p in points],
                yerr=[1.96 * p["vs_twin"]["se"] for p in points],
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
