"""How each stage's time and memory grow with the data: Beauty-shaped datasets at 1x, 4x and 16x its users
and items (``bench.scaled_beauty``), and a catalogue of a million items for the index.

    python -m bench.scale --work /work/artifacts/scale                  # 1x, 4x, 16x; resumes
    python -m bench.scale --work /tmp/scale --sizes 0.05 0.1 --out /tmp/results   # a quick look

Every (stage, size) runs in a process of its own (``python -m bench.scale --measure ...``), its resident memory
sampled every 0.1 s from outside: the driver (that process) and the largest Ray worker under it (a ``ray::``
process). What it measured is kept in ``<work>/measured/``, so a stopped run resumes where it was.

Stages that cannot run whole at 16x on 2 cores run a fixed amount of work and are extrapolated (the table says
so, and by what factor): SASRec's training epoch from ``--steps`` steps, the distilled student's and the
projection's epochs likewise, the text encoding from ``--rows`` texts, the full ranking from ``--rows`` users.
Prepare and the index run whole.
Each stage's growth exponent is the slope of log(seconds) against log(its size measure), least squares over the
sizes: a stage linear in what it reads has 1; ranking every user against every item is measured against users
x items (its nature), the rest against what they read (interactions, texts, users, items). SASRec runs the
sampled softmax (what ``sasrec.softmax=auto`` picks at these sizes; ``sasrec_full_softmax`` shows why), with
Adam moving every item row at every step (``sasrec``, the default) and with sparse item updates
(``sasrec_sparse_items``, ``sasrec.item_updates=sparse``: linear, but Beauty's validation prefers dense updates,
see ``sampled_softmax``).

The index point at 1M items clones the item vectors of a trained model (``--vectors``, e.g. the students
benchmark's SASRec) with Gaussian noise (clones of an item sit near it), searched by that model's user vectors:
recall@10 against exact search and the p50 of one query; without ``--vectors``, random Gaussian vectors (a
harder case for HNSW), recorded as such. LLM generation is costed per 1,000 prompts from
``bench/results/generation_cpu.json`` (tokens and seconds measured there).

Writes bench/results/scale.json, scale.md and scale.png (log-log, time and memory against size, per stage).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from bench import results, scaled_beauty

REPO = Path(__file__).resolve().parents[1]
SIZES = (1.0, 4.0, 16.0)
MILLION = 1_000_000


# --- the measurements, each in its own process ------------------------------------------------------------


def _config(work: Path, size: float, *overrides: str):
    from r2end_core.config import load_config

    return load_config(
        REPO / "configs/base.yaml",
        [f"storage_path={work / 'storage' / label(size)}", f"prepare.dataset_path={dataset(work, size)}", *overrides],
    )


def label(size: float) -> str:
    """The folder name of a dataset ``size`` times Beauty's.

    >>> label(4.0), label(0.05)
    ('4x', '0.05x')
    """
    return f"{size:g}x"


def dataset(work: Path, size: float) -> Path:
    """Beauty at ``size`` times its users and items (made once): whole clones of every item, sampled users."""
    folder = work / "data" / label(size)
    if not (folder / "items.parquet").exists():
        import pyarrow.parquet as pq

        source = Path(scaled_beauty.beauty())
        interactions, items = (pq.read_table(source / f"{n}.parquet") for n in ("interactions", "items"))
        scaled_beauty.write(*scaled_beauty.scaled(interactions, items, size, max(1, round(size))), folder)
    return folder


def _prepared(work: Path, size: float):
    from r2end_core.layout import Layout

    layout = Layout(str(work / "storage" / label(size)))
    return layout.read_users(), layout.read_items()


def measure_prepare(work: Path, size: float, args) -> dict:
    from ray_jobs import prepare
    from ray_jobs.runtime import start_local

    cfg = _config(work, size)
    start_local(num_cpus=cfg.ray.num_cpus, include_dashboard=False)
    started = time.perf_counter()
    report = prepare.run(cfg)
    return {"seconds": time.perf_counter() - started, "size": report.interactions, "unit": "interactions"}


def _sasrec(work: Path, size: float, args, softmax: str, item_updates: str = "dense") -> dict:
    import torch

    from r2end_core.data.splits import index_sequences, training_part
    from r2end_core.models import sasrec

    cfg = _config(work, size, f"sasrec.softmax={softmax}", f"sasrec.item_updates={item_updates}").sasrec
    users, items = _prepared(work, size)
    popularity = items.column("train_popularity").to_numpy()
    positions = cfg.batch_size * cfg.model.max_len * len(popularity) * 4 * sasrec.FULL_SOFTMAX_COPIES / 2**20
    if softmax == "full" and positions > args.max_full_softmax_mb:
        return {"skipped": f"a full-softmax batch takes {positions:,.0f} MB (> {args.max_full_softmax_mb:,} MB)"}
    torch.manual_seed(0)
    tokens = [training_part(s) + 1 for s in index_sequences(users, items)]
    model = sasrec.SASRec(items.num_rows, cfg.model)
    optimizer = sasrec.optimizer_for(model, list(model.parameters()), cfg, sasrec.Extras(), softmax == "sampled")
    rng = np.random.default_rng(0)
    batches = itertools.chain.from_iterable(  # epoch after epoch, for a catalogue whose epoch is shorter
        sasrec.training_batches(tokens, cfg.batch_size, cfg.model.max_len, rng) for _ in itertools.count()
    )
    steps_per_epoch, steps = math.ceil(sum(len(t) >= 2 for t in tokens) / cfg.batch_size), args.steps
    chosen = sasrec.choose_softmax(cfg, popularity)
    train = lambda n: sasrec.train_one_epoch(  # noqa: E731
        model, optimizer, itertools.islice(batches, n), torch.device("cpu"), softmax=chosen
    )
    train(1)  # warm-up: allocations, thread pools
    started = time.perf_counter()
    train(steps)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds * steps_per_epoch / steps,
        "extrapolated": f"one epoch of {steps_per_epoch} steps from {steps}",
        "size": int(users.column("sequence").combine_chunks().value_lengths().to_numpy().sum()),
        "unit": "interactions",
    }


def measure_sasrec(work: Path, size: float, args) -> dict:
    return _sasrec(work, size, args, "sampled")


def measure_sasrec_full_softmax(work: Path, size: float, args) -> dict:
    return _sasrec(work, size, args, "full")


def measure_sasrec_sparse_items(work: Path, size: float, args) -> dict:
    """The sampled softmax with ``sasrec.item_updates=sparse``: lazy Adam moves only the item rows a step reads."""
    return _sasrec(work, size, args, "sampled", "sparse")


def _sample(rows: list, n: int) -> list:
    """``n`` of ``rows`` drawn at random (the same at every run; all of them, repeated, when there are fewer):
    the first rows of a scaled dataset are clones of the same few users or items."""
    rng = np.random.default_rng(0)
    return [rows[i] for i in rng.choice(len(rows), n, replace=n > len(rows))]


def measure_embed(work: Path, size: float, args) -> dict:
    """The embed stage encodes every item's text and every user's target text: timed on ``--rows`` item texts."""
    from r2end_core.text import encoders

    cfg = _config(work, size)
    users, items = _prepared(work, size)
    model = encoders.load_encoder(cfg.embed.encoder, "cpu", cfg.embed.max_seq_length)
    texts = _sample(items.column("metadata_text").to_pylist(), args.rows)
    encoders.encode(model, texts[: cfg.embed.batch_size])  # warm-up
    started = time.perf_counter()
    encoders.encode(model, texts)
    seconds = time.perf_counter() - started
    total = items.num_rows + users.num_rows
    return {
        "seconds": seconds * total / len(texts),
        "extrapolated": f"{total:,} texts from {len(texts):,}",
        "size": total,
        "unit": "texts",
    }


def measure_distill(work: Path, size: float, args) -> dict:
    """The student's epoch over every user's history text (MSE to a target vector), from ``--steps`` steps; the
    DeepSpeed engine around the step is left out."""
    import torch

    from r2end_core.models.r2end import distill

    cfg = _config(work, size)
    users, _ = _prepared(work, size)
    dc, ec = cfg.distill, cfg.embed
    model = distill.load_student(ec.encoder, "cpu", ec.max_seq_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=dc.learning_rate)
    steps_per_epoch, steps = math.ceil(users.num_rows / dc.batch_size), args.steps
    texts = _sample(users.column("train_history_text").to_pylist(), (steps + 1) * dc.batch_size)
    generator = torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        batch = texts[i * dc.batch_size : (i + 1) * dc.batch_size]
        features = model.tokenize(batch)
        out = model(features)["sentence_embedding"]
        target = torch.nn.functional.normalize(torch.randn(out.shape, generator=generator), dim=-1)
        optimizer.zero_grad()
        distill.distillation_loss(out, target).backward()
        optimizer.step()

    step(0)  # warm-up
    started = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds * steps_per_epoch / steps,
        "extrapolated": f"one epoch of {steps_per_epoch} steps from {steps}",
        "size": users.num_rows,
        "unit": "users",
    }


def measure_project(work: Path, size: float, args) -> dict:
    """The projection f's epoch (InfoNCE over sampled negatives) over every user, from ``--steps`` batches; e_u
    and the item embeddings are random (a step's cost does not depend on their values; encoding is ``embed``'s)."""
    import torch

    from r2end_core.models.r2end import projection

    pc = _config(work, size).project
    users, items = _prepared(work, size)
    generator, dim = torch.Generator().manual_seed(0), 384
    rows = min(users.num_rows, (args.steps + 1) * pc.batch_size)  # a warm-up batch, then the timed ones
    user_embeddings = torch.randn(rows, dim, generator=generator)
    item_embeddings = torch.randn(items.num_rows, dim, generator=generator)
    positives = torch.randint(0, items.num_rows, (rows,), generator=generator)
    f = projection.Projection(dim, pc.model.dim)
    optimizer = torch.optim.Adam(f.parameters(), lr=pc.learning_rate)

    def epoch(n: int) -> None:
        projection.train_epoch(f, optimizer, user_embeddings[:n], positives[:n], item_embeddings, pc, generator)

    epoch(pc.batch_size)  # warm-up
    started = time.perf_counter()
    epoch(rows)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds * users.num_rows / rows,
        "extrapolated": f"{users.num_rows:,} users from {rows:,}",
        "size": users.num_rows,
        "unit": "users",
    }


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _prepared_counts(cfg) -> tuple:
    """(layout, the items table, the number of users) of a prepared size."""
    from r2end_core.layout import Layout
    from r2end_core.summaries import PrepareReport

    layout = Layout(cfg.storage_path)
    return layout, layout.read_items(), PrepareReport.read(layout.prepare_report, "prepare").users


def _users_x_items(cfg, items, users: int, warm_up, timed, done: int, total: int, what: str, detail: str = "") -> dict:
    """A users x items pass in Ray tasks on a local cluster: ``warm_up()``, then ``timed()`` (``done`` of
    ``total`` ``what``, extrapolated to all of them; ``detail``: what else the pass did)."""
    from ray_jobs.runtime import start_local

    start_local(num_cpus=cfg.ray.num_cpus, include_dashboard=False)
    warm_up()
    started = time.perf_counter()
    timed()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds * total / done,
        "extrapolated": f"{total:,} {what} from {done:,}{detail}",
        "size": users * items.num_rows,
        "unit": "users x items",
    }


def measure_evaluation(work: Path, size: float, args) -> dict:
    """Full ranking of the test split (every user against every item) in Ray tasks (``ray_jobs.ranking``), on
    the first ``--rows`` users read as ``evaluate.stored_sets`` reads a block, extrapolated to all."""
    from r2end_core.config import Resources
    from r2end_core.data.splits import Split
    from r2end_core.eval.evaluate import stored_sets
    from ray_jobs import ranking

    cfg = _config(work, size)
    layout, items, users = _prepared_counts(cfg)
    scored = next(stored_sets(layout, items, [Split.TEST], users=args.rows))
    n = len(scored.targets)
    user_vectors, item_vectors = _vectors(n, 64, 0), _vectors(items.num_rows, 64, 1)

    def rank(rows: int) -> None:
        ranking.on_ray(Resources(cpus_per_worker=1))(
            user_vectors[:rows], item_vectors, scored.targets[:rows], scored.exclude[:rows], scored.tail
        )

    return _users_x_items(cfg, items, users, lambda: rank(8), lambda: rank(n), n, users, "users")


def measure_fusion(work: Path, size: float, args) -> dict:
    """The fusion's weight search (``train_fusion.weight_search_on_ray``: every combination of the configured
    grid for three parts, shaped as SASRec, DLLM2Rec and R2END, scored on a block of validation users in Ray
    tasks) on the first ``--rows`` users, extrapolated to all; random vectors (a part's cost does not depend on
    its values, and embedding users is ``embed``'s)."""
    from r2end_core.data.splits import Split
    from r2end_core.eval.evaluate import stored_sets
    from r2end_core.models import fusion
    from ray_jobs.train_fusion import weight_search_on_ray

    cfg = _config(work, size)
    layout, items, users = _prepared_counts(cfg)
    scored = next(stored_sets(layout, items, [Split.VALID], users=args.rows))
    n, dims = len(scored.targets), (cfg.sasrec.model.hidden_size,) * 2 + (cfg.project.model.dim,)
    user_vectors = [_vectors(n, d, seed) for seed, d in enumerate(dims)]
    item_vectors = [_vectors(items.num_rows, d, 10 + seed) for seed, d in enumerate(dims)]
    candidates = fusion.weight_grid(len(dims), cfg.fusion.weight_grid)

    def warm_up() -> None:
        warm = next(stored_sets(layout, items, [Split.VALID], users=8))
        weight_search_on_ray([([u[:8] for u in user_vectors], warm)], item_vectors, candidates, 1)  # every task

    timed = lambda: weight_search_on_ray([(user_vectors, scored)], item_vectors, candidates, 1)  # noqa: E731
    detail = f", {len(candidates)} weight combinations"
    return _users_x_items(cfg, items, users, warm_up, timed, n, users, "users", detail)


def measure_dllm2rec_rankings(work: Path, size: float, args) -> dict:
    """DLLM2Rec's teacher rankings (``ray_jobs.ranking.top_on_ray``: each training instance's top ``top_k``
    items, its history excluded, in Ray tasks) for the instances of the first ``--rows`` users, extrapolated to
    every user's instances (every position a SASRec predicts, ``dllm2rec.positions=all``, as the students
    benchmark ranks them); random vectors shaped as R2END's (encoding the histories is ``embed``'s cost)."""
    from r2end_core.config import Resources
    from r2end_core.data.items import Catalogue
    from r2end_core.models import instances
    from ray_jobs import ranking

    cfg = _config(work, size, "dllm2rec.positions=all")
    dc, max_len = cfg.dllm2rec, cfg.sasrec.model.max_len
    layout, items, users = _prepared_counts(cfg)
    row = Catalogue(items).row
    blocks = layout.iter_users(["sequence"], 1 << 16)
    total = sum(len(instances.training_instances(b, dc.positions, max_len)[0]) for b in blocks)
    block = next(layout.iter_users(["sequence"], args.rows))
    rows, positions = instances.training_instances(block, dc.positions, max_len)
    sequences = block.column("sequence").to_pylist()
    exclude = [np.array([row[i] for i in sequences[r][:p]]) for r, p in zip(rows.tolist(), positions.tolist())]
    n, dim = len(rows), cfg.project.model.dim
    user_vectors, item_vectors = _vectors(n, dim, 0), _vectors(items.num_rows, dim, 1)

    def top(k: int) -> None:
        ranking.top_on_ray(Resources(cpus_per_worker=1))(user_vectors[:k], item_vectors, dc.top_k, exclude[:k])

    # warmed up by the whole pass: it starts as many Ray tasks as the timed one (one per part of the instances)
    return _users_x_items(cfg, items, users, lambda: top(n), lambda: top(n), n, total, "instances")


def _index_point(item_vectors: np.ndarray, queries: np.ndarray, index_cfg) -> dict:
    """Build the index ``index_cfg`` picks for these items (tuning an approximate kind's search width, HNSW's
    efSearch or IVF's nprobe, to its recall target on half the queries), then recall@10 against exact search
    and the p50 of one query on the other half."""
    import faiss

    from r2end_core.serve import index

    tune, held = queries[: len(queries) // 2], queries[len(queries) // 2 :]
    started = time.perf_counter()
    built = index.build(item_vectors, index_cfg)
    exact = index.build(item_vectors, index_cfg.model_copy(update={"kind": "flat"}))
    chosen = index.resolved(index_cfg, len(item_vectors))
    width, _ = index.reach_recall(built, exact, tune, chosen)
    seconds = time.perf_counter() - started
    latencies = []
    for query in held:
        one = time.perf_counter()
        index.search(built, query[None], 10)
        latencies.append(time.perf_counter() - one)
    return {
        "seconds": seconds,
        "kind": str(chosen.kind),
        **({index.SEARCH_WIDTH[chosen.kind]: width} if chosen.kind in index.SEARCH_WIDTH else {}),
        **({"nlist": built.nlist} if chosen.kind == "ivf" else {}),
        "recall_at_10": index.recall(built, exact, held, 10),
        "p50_ms": 1000 * float(np.median(latencies)),
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def index_vectors(n_items: int, args, trained: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """(item vectors, queries, where they come from) for an index of ``n_items``: with ``trained`` and
    ``--vectors`` (storage_path:model), that model's item vectors cloned with Gaussian noise (clones of an item
    sit near it) and its users' test-split vectors as queries; else random Gaussian vectors (a harder case for
    HNSW: nothing clusters)."""
    if not (trained and args.vectors):
        return _vectors(n_items, 64, 1), _vectors(2 * args.queries, 64, 2), "random"
    from r2end_core import models
    from r2end_core.data.histories import Histories
    from r2end_core.layout import Layout

    rng = np.random.default_rng(3)
    storage_path, name = args.vectors.rsplit(":", 1)
    layout = Layout(storage_path)
    model = models.load(layout, name)
    base = model.item_vectors()
    users = layout.read_users().slice(0, 2 * args.queries)
    queries = model.user_vectors(Histories.of_split(users, "test"))
    picks = rng.integers(0, len(base), n_items)
    noise = rng.standard_normal((n_items, base.shape[1])).astype(np.float32) * base.std(0) * args.clone_noise
    return base[picks] + noise, queries, f"{args.vectors}, cloned with noise {args.clone_noise} x std"


#: The IVF rows' clusters: a fixed count (capped at a 39th of the items), so assigning items grows linearly with
#: them and training (on at most 256 points a cluster) stops growing past 262,144 items.
IVF_NLIST = 1024


def _index_kind(kind: str) -> list[str]:
    return [f"index.kind={kind}", *([f"index.nlist={IVF_NLIST}"] if kind == "ivf" else [])]


def _index_at_size(work: Path, size: float, args, trained: bool, kind: str = "hnsw") -> dict:
    _, items = _prepared(work, size)
    cfg = _config(work, size, *_index_kind(kind)).index
    item_vectors, queries, source = index_vectors(items.num_rows, args, trained)
    return {**_index_point(item_vectors, queries, cfg), "vectors": source, "size": items.num_rows, "unit": "items"}


def measure_index(work: Path, size: float, args) -> dict:
    """Build (and tune) an HNSW index over the catalogue, whole: the kind ``index.kind=auto`` picks past
    ``exact_max_items`` (below it, exact search's build is a copy), of a trained model's items as the 1M point
    (``index_vectors``; random without ``--vectors``)."""
    return _index_at_size(work, size, args, trained=True)


def measure_index_ivf(work: Path, size: float, args) -> dict:
    """The same on an IVF index of ``IVF_NLIST`` clusters (fewer on a catalogue under 39 x that), its nprobe
    tuned to the recall target: k-means on at most 256 points a cluster, each item assigned to its nearest."""
    return _index_at_size(work, size, args, trained=True, kind="ivf")


def measure_index_random(work: Path, size: float, args) -> dict:
    """The same build on random 64-dimensional vectors: the worst case, where holding recall@10 at the target
    takes a higher efSearch as the catalogue grows."""
    return _index_at_size(work, size, args, trained=False)


MEASURES = {
    "prepare": measure_prepare,
    "sasrec": measure_sasrec,
    "sasrec_full_softmax": measure_sasrec_full_softmax,
    "sasrec_sparse_items": measure_sasrec_sparse_items,
    "embed": measure_embed,
    "distill": measure_distill,
    "project": measure_project,
    "evaluation": measure_evaluation,
    "fusion": measure_fusion,
    "dllm2rec_rankings": measure_dllm2rec_rankings,
    "index": measure_index,
    "index_ivf": measure_index_ivf,
    "index_random": measure_index_random,
}
LINEAR_GOAL = (  # the <= 1.1 goal
    "prepare",
    "sasrec",
    "embed",
    "distill",
    "project",
    "evaluation",
    "fusion",
    "dllm2rec_rankings",
    "index",
)


MILLION_POINTS = {"index_1m": None, "index_1m_ivf": "ivf"}  # the 1M-item index: what auto picks, and IVF


def index_million(args, kind: str | None = None) -> dict:
    """The 1M-item point: ``--vectors`` (storage_path:model) cloned with noise, or random vectors; the kind
    ``index.kind=auto`` picks, or ``kind``."""
    from r2end_core.config import IndexConfig

    cfg = IndexConfig(**({"kind": kind, "nlist": IVF_NLIST} if kind == "ivf" else {}))
    item_vectors, queries, source = index_vectors(MILLION, args)
    return {**_index_point(item_vectors, queries, cfg), "items": MILLION, "vectors": source}


def run_measure(args) -> None:
    """The child process: one measurement, written as JSON to ``--result``."""
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.measure in MILLION_POINTS:
        out = index_million(args, MILLION_POINTS[args.measure])
    else:
        out = MEASURES[args.measure](work, args.size, args)
    Path(args.result).write_text(json.dumps(out))


# --- the driver: processes, memory, fits ----------------------------------------------------------------------


def _peaks(process: psutil.Process, peaks: dict) -> None:
    """Fold the current RSS of ``process`` (the driver) and of its largest ``ray::`` worker into ``peaks``."""
    try:
        peaks["driver"] = max(peaks["driver"], process.memory_info().rss)
        for child in process.children(recursive=True):
            try:
                if child.name().startswith("ray::") or " ray::" in " ".join(child.cmdline()[:1]):
                    peaks["worker"] = max(peaks["worker"], child.memory_info().rss)
            except psutil.Error:
                continue
    except psutil.Error:
        pass


def measured(work: Path, stage: str, size: float | None, args) -> dict:
    """A stage's measurement at a size, made in a child process (or read back from an earlier run)."""
    name = stage if size is None else f"{stage}-{label(size)}"
    path = work / "measured" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    result = path.with_suffix(".part")
    command = [sys.executable, "-m", "bench.scale", "--measure", stage, "--work", str(work), "--result", str(result)]
    command += ["--size", str(size or 0), *args.child_args]
    print(f"scale: {name} ...", flush=True)
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO)
    process, peaks = psutil.Process(child.pid), {"driver": 0, "worker": 0}
    while child.poll() is None:
        _peaks(process, peaks)
        time.sleep(0.1)
    if child.returncode:
        raise RuntimeError(f"scale: measuring {name} failed (exit {child.returncode}); its output is above")
    out = {
        **json.loads(result.read_text()),
        "process_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peaks["driver"] / 2**20, 1),
        "peak_worker_rss_mb": round(peaks["worker"] / 2**20, 1) if peaks["worker"] else None,
    }
    result.unlink()
    path.write_text(json.dumps(out, indent=2))
    return out


def multinode() -> dict:
    """The multi-node test (a head and a worker node on a local S3 server; every stage, a killed training worker,
    Serve answering from the worker node), run by pytest: whether it passed."""
    test = "tests/ray_jobs/test_multinode.py"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=REPO)
    return {"nodes": 2, "passed": done.returncode == 0, "test": test, "seconds": round(time.perf_counter() - started)}


def exponent(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(seconds) against log(size).

    >>> round(exponent([(1, 2.0), (4, 8.0), (16, 32.0)]), 3), exponent([(1, 2.0)])
    (1.0, None)
    """
    if len(points) < 2:
        return None
    x, y = (np.log([p[i] for p in points]) for i in (0, 1))
    return float(np.polyfit(x, y, 1)[0])


def generation_cost(engine: str = "bfloat16") -> dict | None:
    """Tokens, CPU seconds and model FLOPs (2 x parameters per computed token) per 1,000 prompts of each kind,
    from the committed CPU generation benchmark's ``engine`` (tokens per answer and tokens per second
    measured there; prompt tokens served from vLLM's prefix cache are not computed)."""
    from transformers import AutoConfig

    from bench.teacher_outputs import parameters
    from r2end_core.teacher.model import resolve_teacher

    path = results.FOLDER / "generation_cpu.json"
    if not path.exists():
        return None
    measured_run = json.loads(path.read_text())
    engine_run = measured_run["engines"][engine]
    params = parameters(AutoConfig.from_pretrained(resolve_teacher(measured_run["model"])))
    kinds = {}
    for kind, per in engine_run["per_answer"].items():
        computed = 1000 * (per["computed_prompt_tokens"] + per["output_tokens"])
        kinds[kind] = {
            "prompt_tokens": round(1000 * per["prompt_tokens"]),
            "computed_prompt_tokens": round(1000 * per["computed_prompt_tokens"]),
            "output_tokens": round(1000 * per["output_tokens"]),
            "cpu_seconds": round(computed / engine_run["processed_tokens_per_s"], 1),
            "tflop": round(2 * params * computed / 1e12, 2),
        }
    return {
        "model": measured_run["model"],
        "engine": engine,
        "parameters": params,
        "per_1000_prompts": kinds,
        "source": "bench/results/generation_cpu.json",
    }


#: the students bench's sampled-softmax SASRecs: 1,024 or 4,096 uniform negatives; dense or sparse item updates
SAMPLED_VARIANTS = ("sasrec_sampled", "sasrec_sampled_4096", "sasrec_sampled_4096_sparse")


def sampled_softmax() -> dict | None:
    """SASRec with the sampled softmax against the full one on all of Beauty, from the students benchmark's
    records (each selected its epoch on validation; test scored once): per seed, each sampled variant
    (``SAMPLED_VARIANTS``) recorded, its relative NDCG@10 lost on validation and test and the paired test
    difference on the same users. The recipe is the variant with the best mean validation NDCG@10 over the
    seeds, among those run on every seed (what ``configs/users-1m-gpu.yaml`` trains); ``rel_ndcg_loss``
    is its mean relative test loss over the seeds."""
    import pyarrow.parquet as pq

    from r2end_core.eval import metrics

    runs = results.FOLDER / "students_beauty_runs"

    def read(method: str, seed: str) -> dict | None:
        path = runs / f"{method}-seed{seed}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def test_ranks(method: str, seed: str):
        table = pq.read_table(runs / f"{method}-seed{seed}_ranks.parquet").to_pandas()
        return table.query("split == 'test'").set_index("user_id")["rank"]

    seeds = {}
    for seed in sorted({p.stem.rsplit("-seed", 1)[1] for p in runs.glob("sasrec_sampled*-seed*.json")}):
        full = read("sasrec", seed)
        variants = {m: record for m in SAMPLED_VARIANTS if (record := read(m, seed))}
        if full is None or not variants:
            continue
        full_ranks = test_ranks("sasrec", seed)
        seeds[seed] = {"full": {"best_epoch": full["summary"]["best_epoch"]}, "variants": {}}
        for split in ("valid", "test"):
            seeds[seed]["full"][f"{split}_ndcg@10"] = full["summary"][split]["ndcg@10"]
        for m, record in variants.items():
            ranks, config = test_ranks(m, seed), record["summary"]["config"]
            summary = {
                "sampled_negatives": config.get("sampled_negatives", 1024),
                "item_updates": config.get("item_updates", "dense"),
                "best_epoch": record["summary"]["best_epoch"],
                "paired_test_ndcg@10": metrics.paired_difference(
                    ranks.to_numpy(), full_ranks.loc[ranks.index].to_numpy()
                )["ndcg@10"],
            }
            for split in ("valid", "test"):
                ndcg = record["summary"][split]["ndcg@10"]
                summary[f"{split}_ndcg@10"] = ndcg
                summary[f"{split}_rel_ndcg_loss"] = 1 - ndcg / full["summary"][split]["ndcg@10"]
            seeds[seed]["variants"][m] = summary
    if not seeds:
        return None
    everywhere = [m for m in SAMPLED_VARIANTS if all(m in v["variants"] for v in seeds.values())]
    if not everywhere:
        return None
    mean = lambda m, field: float(np.mean([v["variants"][m][field] for v in seeds.values()]))  # noqa: E731
    recipe = max(everywhere, key=lambda m: mean(m, "valid_ndcg@10"))
    return {
        "rel_ndcg_loss": mean(recipe, "test_rel_ndcg_loss"),
        "recipe": recipe,
        "mean_valid_ndcg@10": {m: mean(m, "valid_ndcg@10") for m in everywhere},
        "mean_test_rel_ndcg_loss": {m: mean(m, "test_rel_ndcg_loss") for m in everywhere},
        "seeds": seeds,
        "source": f"bench/results/students_beauty_runs (sasrec, {', '.join(SAMPLED_VARIANTS)})",
    }


def report(work: Path, sizes: list[float], stages: list[str], args) -> dict:
    table: dict[str, dict] = {}
    for stage in ["prepare", *[s for s in stages if s != "prepare"]]:  # every other stage reads what prepare wrote
        table[stage] = {"sizes": {}}
        for size in sizes:
            table[stage]["sizes"][label(size)] = measured(work, stage, size, args)
    if "index" in table:  # serving's step that grows with the catalogue: one query's search, timed with the index
        table["serving"] = {
            "sizes": {
                size: {"seconds": m["p50_ms"] / 1000, "size": m["size"], "unit": "items", "of": "p50 of one search"}
                | {k: m[k] for k in ("peak_rss_mb", "peak_worker_rss_mb")}
                for size, m in table["index"]["sizes"].items()
            }
        }
    for row in table.values():
        kept = [m for m in row["sizes"].values() if "seconds" in m]
        row["exponent"] = exponent([(m["size"], m["seconds"]) for m in kept])
        row["unit"] = kept[0]["unit"] if kept else None
        row["extrapolated"] = any("extrapolated" in m for m in kept)
    fitted = [table[s]["exponent"] for s in LINEAR_GOAL if s in table and table[s]["exponent"] is not None]
    out = {
        "sizes": [label(s) for s in sizes],
        "stages": table,
        "max_exponent": max(fitted) if fitted else None,
        "max_exponent_stages": [s for s in LINEAR_GOAL if s in table],
        "generation": generation_cost(),
        "threads": args.threads,
    }
    if softmax := sampled_softmax():
        out["sampled_softmax"] = softmax
    if args.million:
        for point in MILLION_POINTS:
            out[point] = measured(work, point, None, args)
    if args.multinode:
        out["multinode"] = multinode()
    return out


def markdown(out: dict) -> str:
    sizes = out["sizes"]
    lines = [
        "# How each stage grows with the data",
        "",
        "Seconds (peak RSS of the driver / largest Ray worker, MB) per stage at each size of Beauty (users and "
        "items both times the size); the exponent is the fitted slope of log time against log of the unit. "
        "* : extrapolated from a fixed amount of work (see the JSON for how much).",
        "",
        "| stage | unit | " + " | ".join(sizes) + " | exponent |",
        "|---|---|" + "---|" * len(sizes) + "---|",
    ]
    for stage, row in out["stages"].items():
        cells = []
        for size in sizes:
            m = row["sizes"][size]
            if "seconds" not in m:
                cells.append(f"skipped: {m.get('skipped', '?')}")
                continue
            worker = f" / {m['peak_worker_rss_mb']:,.0f}" if m.get("peak_worker_rss_mb") else ""
            star = "*" if "extrapolated" in m else ""
            cells.append(f"{m['seconds']:,.3g}{star} ({m['peak_rss_mb']:,.0f}{worker})")
        slope = "" if row["exponent"] is None else f"{row['exponent']:.2f}"
        lines.append(f"| {stage} | {row['unit']} | " + " | ".join(cells) + f" | {slope} |")
    largest = "none fitted" if out["max_exponent"] is None else f"{out['max_exponent']:.2f}"
    lines += ["", f"Largest exponent of {', '.join(out['max_exponent_stages'])}: {largest}."]
    for stage in ("index", "index_ivf", "index_random"):
        first = next(iter(out["stages"].get(stage, {}).get("sizes", {}).values()), {})
        if vectors := first.get("vectors"):
            kind = first["kind"].upper()
            lines.append(f"`{stage}` builds and tunes {kind} (recall@10 target) on {vectors} vectors.")
    if node := out.get("multinode"):
        verdict = "passed" if node["passed"] else "FAILED"
        lines.append(f"Multi-node run ({node['nodes']} nodes, {node['test']}): {verdict}.")
    if softmax := out.get("sampled_softmax"):
        for seed, v in softmax["seeds"].items():
            parts = []
            for m, r in v["variants"].items():
                d = r["paired_test_ndcg@10"]
                parts.append(
                    f"`{m}` ({r['sampled_negatives']} negatives, {r['item_updates']} item updates) "
                    f"{r['test_ndcg@10']:.4f}, {r['test_rel_ndcg_loss']:.1%} lower (paired {d['difference']:+.4f} ± "
                    f"{d['se']:.4f}, z {d['z']:.1f}; validation {r['valid_rel_ndcg_loss']:.1%} lower)"
                )
            lines.append(
                f"SASRec on all of Beauty, seed {seed}, sampled softmax (uniform negatives and the batch's targets) "
                f"against full (test NDCG@10 {v['full']['test_ndcg@10']:.4f}): {'; '.join(parts)}."
            )
        lines.append(
            f"Sampled-softmax recipe, the best mean validation NDCG@10 over seeds {', '.join(softmax['seeds'])} "
            f"among the variants run on each: `{softmax['recipe']}`, test NDCG@10 {softmax['rel_ndcg_loss']:.1%} "
            f"below full softmax on average (mean validation NDCG@10: "
            + ", ".join(f"`{m}` {x:.4f}" for m, x in softmax["mean_valid_ndcg@10"].items())
            + ")."
        )
    for name in MILLION_POINTS:
        if point := out.get(name):
            width = f"efSearch {point['ef_search']}" if "ef_search" in point else f"nprobe {point['nprobe']}"
            lines.append(
                f"Index at 1M items ({point['vectors']}): {point['kind']} ({width}), recall@10 "
                f"{point['recall_at_10']:.3f} against exact, p50 {point['p50_ms']:.2f} ms per query, built and "
                f"tuned in {point['seconds']:,.0f} s."
            )
    if gen := out.get("generation"):
        for kind, cost in gen["per_1000_prompts"].items():
            lines.append(
                f"LLM generation, 1,000 {kind} prompts ({gen['model']}, {gen['parameters'] / 1e6:.0f}M parameters, "
                f"{gen['engine']} on this CPU): {cost['prompt_tokens']:,} prompt tokens "
                f"({cost['computed_prompt_tokens']:,} computed), {cost['output_tokens']:,} output tokens, "
                f"{cost['tflop']} TFLOP, {cost['cpu_seconds']:,} s."
            )
    return "\n".join(lines) + "\n"


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 5))
    for n, (stage, row) in enumerate(out["stages"].items()):
        kept = sorted((m for m in row["sizes"].values() if "seconds" in m), key=lambda m: m["size"])
        colour = f"C{n}"  # one per stage, in both panels
        if not kept:
            continue
        size = [m["size"] for m in kept]
        time_axis.loglog(size, [m["seconds"] for m in kept], "o-", color=colour, label=stage)
        memory_axis.loglog(size, [m["peak_rss_mb"] for m in kept], "o-", color=colour, label=f"{stage} (driver)")
        if any(m.get("peak_worker_rss_mb") for m in kept):
            worker = [m.get("peak_worker_rss_mb") or np.nan for m in kept]
            memory_axis.loglog(size, worker, "x--", color=colour, label=f"{stage} (worker)")
    time_axis.set(xlabel="size (the stage's unit)", ylabel="seconds", title="time")
    memory_axis.set(xlabel="size (the stage's unit)", ylabel="peak RSS, MB", title="memory")
    time_axis.legend(fontsize=7)
    memory_axis.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="datasets, prepared tables and measurements (resumes)")
    parser.add_argument("--sizes", type=float, nargs="+", default=list(SIZES), help="times Beauty's users and items")
    parser.add_argument("--stages", nargs="+", default=list(MEASURES), choices=list(MEASURES))
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per epoch extrapolated")
    parser.add_argument("--rows", type=int, default=2048, help="texts encoded, users ranked")
    parser.add_argument("--queries", type=int, default=500, help="queries for the index's tuning and its p50")
    parser.add_argument("--threads", type=int, default=2, help="torch and faiss threads in each measurement")
    parser.add_argument("--max-full-softmax-mb", type=int, default=8192, help="skip larger full-softmax batches")
    parser.add_argument("--million", action=argparse.BooleanOptionalAction, default=True, help="the 1M-item index")
    parser.add_argument("--multinode", action="store_true", help="run the multi-node test and record it")
    parser.add_argument("--vectors", help="storage_path:model whose vectors the 1M-item index clones")
    parser.add_argument("--clone-noise", type=float, default=0.5, help="noise of a clone, in units of vector std")
    parser.add_argument("--out", help="results folder (default: bench/results)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        run_measure(args)
        return
    args.child_args = [
        *("--steps", str(args.steps), "--rows", str(args.rows), "--queries", str(args.queries)),
        *("--threads", str(args.threads), "--max-full-softmax-mb", str(args.max_full_softmax_mb)),
        *("--clone-noise", str(args.clone_noise), *(("--vectors", args.vectors) if args.vectors else ())),
    ]
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = report(Path(args.work), sorted(args.sizes), args.stages, args)
    if args.out:
        results.FOLDER = Path(args.out)
    results.write("scale", out, markdown(out), config={k: v for k, v in vars(args).items() if k != "child_args"})
    plot(out, results.FOLDER / "scale.png")


if __name__ == "__main__":
    main()
