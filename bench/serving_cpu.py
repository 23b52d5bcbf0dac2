"""Serving on this CPU: trained models over HTTP against their in-process floors, the CPU text encoder,
a fuzz of the API, an independent load client, and the LLM the models replace.

    python -m bench.serving_cpu [--config configs/bench/serving-cpu.yaml] [--models r2end-seed23,...]

For each model (by default the students benchmark's R2END, DLLM2Rec and best student with seed 23: a text
model, a SASRec-family student and a fusion of both kinds with SASRec), one run, one machine, the same real
queries (Beauty users' test-time histories as item ids with timestamps), in phases:

1. ``in_process``: the replica's own code (``ServedModel``) in this process: one query at a time (the
   latency floor) and batches of 32 (the throughput ceiling is the faster of the two);
2. ``encoder`` (a text model): torch fp32 against ONNX Runtime fp32 and int8 in process, one history text at a time
   and batches of 32, taking turns on the same texts (``side_by_side``), and HR@10/NDCG@10 on the same
   validation users, paired;
3. ``http``: the Serve app (one replica, dynamic batching) at concurrency 1, 8 and 32 from an aiohttp load
   generator on loopback; ``hey`` (Debian's package, an independent client) at 1 and 32 on the same
   endpoint; ``fuzz``: schemathesis cases from the OpenAPI schema (``FUZZ_CASES`` for the first model,
   ``FUZZ_CASES_OTHERS`` for each other: they share the app's validation); ``http_unbatched``: concurrency 32 with
   ``max_batch_size=1``; ``autoscaling_60s``: the default config (1 to 2 replicas) for 60 s at 32: errors;
   ``replica_killed``: two replicas at concurrency 8, one killed 5 s in;
4. ``llm_in_the_loop`` (once): the teacher (vLLM, SmolLM2-135M) asked, per request, for the next item from
   the same history (the unguided prompt), one request at a time.

``--latency-only`` models get phases 1 and 3 at one request at a time alone (``latency_of``): what each
method costs to serve, for ``bench.llm_share``'s cost column.

Every timed phase records the machine's CPU busy and stolen shares while it ran (``with_machine_cpu``).
Writes bench/results/serving_cpu.json (the first model's measures at the top, every model's under
``models``) and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable

import aiohttp
import numpy as np
import ray
import torch
from ray import serve

from bench import api_fuzz, endpoint_trials, results
from r2end_core import models, storage
from r2end_core.config import PipelineConfig
from r2end_core.data.histories import Histories
from r2end_core.data.splits import Split
from r2end_core.eval import metrics
from r2end_core.eval.evaluate import EvalSet, evaluate
from r2end_core.layout import Layout
from r2end_core.serve import text_tower
from r2end_core.serve.requests import test_time_request
from r2end_core.serve.served import ServedModel
from r2end_core.teacher import prompts
from ray_jobs import index as index_stage
from ray_jobs import promote
from ray_jobs import serve as deploy
from ray_jobs.runtime import run_stage

QUERIES, PHASE_S, PHASE_MAX_REQUESTS, LLM_REQUESTS = 1000, 20.0, 5000, 8
ERRORS_PHASE_S, KILL_PHASE_S, HEY_S = 60.0, 30.0, 15
FUZZ_CASES, FUZZ_CASES_OTHERS, FUZZ_S = 10_000, 1_000, 1800.0
SLOW_CLIENTS, SLOW_REQUESTS = 16, 200  # clients trickling their bodies; normal requests alone and beside them
# validation users the encoders are ranked on (8,000: a relative NDCG@10 loss within about ±0.6%, one s.e.; 2,000
# put 2.7% on int8 where 4,000 then put 0.95%); the batch size; the encoder phase's rounds (side_by_side)
ENCODER_USERS, BATCH, ROUNDS = 8000, 32, 10
RECENT_ITEMS = 50  # what a client sends: its recent purchases (a text model keeps <= 8 within 60 days)
THREADS = 2  # torch (and ONNX Runtime) threads, in process and in the (single) replica alike
DEPLOYMENT = "Recommender"
MODELS = "r2end-seed23,dllm2rec-seed23,fusion_dllm2rec_tail-seed23"
GOALS = {
    "p50_ratio_http_vs_inprocess": "<= 1.3",
    "throughput_ratio_c32_vs_inprocess": ">= 0.9",
    "onnx_int8_speedup": ">= 2",
    "onnx_int8_rel_ndcg_loss": "<= 0.01",
    "llm_in_loop_latency_ratio": ">= 100",
    "errors": "0",
    "fuzz_cases": ">= 10000 (the first model; 1,000 for the others)",
    "fuzz_5xx": "0",
    "fuzz_reach_rate": ">= 0.5",
    "fuzz_check_failures": "0",
    "slow_clients_p99_ratio": "<= 2",
    "rollout_errors": "0",
    "rollout_as_promoted": "true",  # the versions that answered in turn: the live one, the promoted, the live
}
# the first model's measures at the JSON's top level: the goals' and the fp32 encoder's, and the fuzz's size
HEADLINE = [*GOALS, "onnx_speedup", "onnx_rel_ndcg_loss", "slow_clients", "rollout"]


def user_queries(cfg: PipelineConfig, n: int) -> list[dict]:
    """Request bodies: n users' test-time histories (their last ``RECENT_ITEMS`` ids and timestamps, and the
    test item's time as ``at``)."""
    users = Layout(cfg.storage_path).read_users()
    rows = users.take(np.random.default_rng(0).permutation(users.num_rows)[:n]).to_pylist()
    return [test_time_request(u, 10, RECENT_ITEMS) for u in rows]


def summarize(latencies_s: list[float], seconds: float, errors: int, answered: int | None = None) -> dict:
    ms = np.array(latencies_s) * 1000
    return {
        "requests": len(latencies_s) + errors,
        "errors": errors,
        "qps": round((answered if answered is not None else len(latencies_s)) / seconds, 1),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if len(ms) else None for q in (50, 95, 99)},
    }


# /proc/stat's first line: the machine's CPU time by state since boot, in the order
# user nice system idle iowait irq softirq steal
BUSY_STATES, STEAL_STATE = [0, 1, 2, 5, 6], 7


def cpu_times() -> np.ndarray:
    with open("/proc/stat") as stat:
        return np.array(stat.readline().split()[1:9], dtype=float)


def with_machine_cpu(measure: Callable[[], dict]) -> dict:
    """``measure()``'s result and, under ``cpu``, what all the machine's cores did meanwhile: the share busy
    (this run and whatever ran beside it) and the share the hypervisor stole (another guest ran on our cores).
    On this shared machine a phase can run slow for reasons outside the run; the result then says so.

    ``{"qps": 37.9, ...}`` -> ``{"qps": 37.9, ..., "cpu": {"busy": 0.97, "steal": 0.007}}``"""
    before = cpu_times()
    result = measure()
    spent = cpu_times() - before
    total = max(spent.sum(), 1.0)
    shares = {"busy": spent[BUSY_STATES].sum() / total, "steal": spent[STEAL_STATE] / total}
    return {**result, "cpu": {state: round(float(share), 3) for state, share in shares.items()}}


def timed(run, items: list, batch: int) -> dict:
    """``run(items[i:i+batch])`` over ``items`` for at most ``PHASE_S``: per-call latency and items per second."""
    run(items[:batch])  # warm-up
    latencies, done, started = [], 0, time.perf_counter()
    for start in itertools.cycle(range(0, len(items) - batch + 1, batch)):
        if time.perf_counter() - started > PHASE_S or done >= PHASE_MAX_REQUESTS:
            break
        t = time.perf_counter()
        run(items[start : start + batch])
        latencies.append(time.perf_counter() - t)
        done += batch
    return {**summarize(latencies, time.perf_counter() - started, 0, done), "batch": batch}


def side_by_side(runs: dict[str, Callable[[list], None]], items: list, batch: int) -> dict[str, dict]:
    """``timed`` for several ways of doing the same work, in turns: in each of ``ROUNDS`` rounds the first run
    takes the round's items ``batch`` at a time for ``PHASE_S / ROUNDS``, then each other run takes exactly the
    same calls; a change in the machine's pace falls on all alike, so their ratios hold where times drift."""
    for run in runs.values():
        run(items[:batch])  # warm-up
    latencies, done = {name: [] for name in runs}, dict.fromkeys(runs, 0)
    position = 0
    for _ in range(ROUNDS):
        calls = None
        for name, run in runs.items():
            started, made = time.perf_counter(), 0
            while made != calls and (calls is not None or time.perf_counter() - started < PHASE_S / ROUNDS):
                chunk = [items[(position + made * batch + i) % len(items)] for i in range(batch)]
                t = time.perf_counter()
                run(chunk)
                latencies[name].append(time.perf_counter() - t)
                made += 1
            calls = made
            done[name] += made * batch
        position += calls * batch
    return {
        name: {**summarize(lat, sum(lat), 0, done[name]), "batch": batch, "rounds": ROUNDS}
        for name, lat in latencies.items()
    }


PACES = {"c1": 1, f"batch{BATCH}": BATCH}  # in process: one query at a time, and batches


def in_process(served: ServedModel, bodies: list[dict], paces: dict[str, int] = PACES) -> dict:
    """What one replica's code does per request, without HTTP or Serve: one at a time, and in batches."""

    def answer(batch: list[dict]) -> None:
        histories = [served.history(b["history"], b.get("timestamps"), b.get("at")) for b in batch]
        excludes = [served.catalogue.rows(b["history"]) for b in batch]
        served.search(histories, [b["k"] for b in batch], excludes)

    return {label: with_machine_cpu(lambda b=b: timed(answer, bodies, b)) for label, b in paces.items()}


ENCODERS = {"torch_fp32": "torch", "onnx_fp32": "onnx-fp32", "onnx_int8": "onnx-int8"}  # report name: backend
# against torch fp32: the JSON's onnx_* measures are the served default's (the plain fp32 export: it ranks as
# torch does), onnx_int8_* the quantized CPU encoder's, which the speed and loss goals are for
ONNX_MEASURES = {"onnx": "onnx_fp32", "onnx_int8": "onnx_int8"}
ONNX_MEASURED = ("speedup", "throughput_speedup", "rel_ndcg_loss")


def encoder_comparison(cfg: PipelineConfig, name: str, bodies: list[dict], served: ServedModel) -> dict | None:
    """A text model's user tower on torch fp32 against ONNX Runtime fp32 and int8 in process: speed on the
    queries' history texts, and HR@10/NDCG@10 on ``ENCODER_USERS`` validation users (the same users, paired
    against torch)."""
    layout = Layout(cfg.storage_path)
    backends = {
        label: text_tower.with_cpu_encoder(models.load(layout, name), layout, backend, THREADS)
        for label, backend in ENCODERS.items()
    }
    if not text_tower.text_towers(backends["torch_fp32"]):
        return None
    histories = [served.history(b["history"], b.get("timestamps"), b.get("at")) for b in bodies]
    encoders = {
        backend: lambda batch, model=model: model.user_vectors(Histories.concat(batch))
        for backend, model in backends.items()
    }
    paced = {size: with_machine_cpu(lambda size=size: side_by_side(encoders, histories, size)) for size in (1, BATCH)}
    out: dict = {backend: {f"batch{size}": paced[size][backend] for size in paced} for backend in backends}
    out["cpu"] = {f"batch{size}": paced[size]["cpu"] for size in paced}
    users = layout.read_users()
    sample = users.take(np.sort(np.random.default_rng(1).permutation(users.num_rows)[:ENCODER_USERS]))
    scored = EvalSet.build(sample, layout.read_items(), Split.VALID)
    ranked = {backend: evaluate(model, scored) for backend, model in backends.items()}
    for backend, found in ranked.items():
        out[backend]["valid"] = {k: found.metrics[k] for k in ("hr@10", "ndcg@10")}
    out["valid_users"] = len(scored.user_ids)
    out["valid_minus_torch"] = {}
    for backend in list(ENCODERS)[1:]:
        paired = metrics.paired_difference(ranked[backend].ranks, ranked["torch_fp32"].ranks)
        out["valid_minus_torch"][backend] = {m: paired[m] for m in ("hr@10", "ndcg@10")}
    return out


async def _load(url: str, bodies: list[dict], concurrency: int, seconds: float, beside=None) -> dict:
    latencies, errors, statuses, next_body = [], 0, {}, itertools.count()
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client():
            nonlocal errors
            while time.perf_counter() < deadline and len(latencies) + errors < PHASE_MAX_REQUESTS:
                body = bodies[next(next_body) % len(bodies)]
                t = time.perf_counter()
                try:
                    async with session.post(f"{url}/recommend", json=body) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError as err:
                    status = type(err).__name__
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1

        started = time.perf_counter()
        tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
        if beside:
            await beside()
        await asyncio.gather(*tasks)
    return {
        **summarize(latencies, time.perf_counter() - started, errors),
        "concurrency": concurrency,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def with_batch_sizes(url: str, measure: Callable[[], dict]) -> dict:
    """``measure()``'s result and, as ``mean_batch``, the requests per batch that the one replica computed
    meanwhile (its /healthz counts before and after, the load's 1 s warm-up included; Serve's health probes
    count as batches of one)."""

    def counts() -> np.ndarray:
        with urllib.request.urlopen(f"{url}/healthz", timeout=30) as reply:
            health = json.load(reply)
        return np.array([health["batches"], health["batched_requests"]])

    before = counts()
    result = measure()
    batches, answered = counts() - before
    return {**result, "mean_batch": round(float(answered / max(batches, 1)), 1)}


def load(url: str, bodies: list[dict], concurrency: int, seconds: float = PHASE_S, beside=None) -> dict:
    asyncio.run(_load(url, bodies, concurrency, 1.0))  # warm-up, not counted
    return asyncio.run(_load(url, bodies, concurrency, seconds, beside))


def hey(url: str, body: dict, concurrency: int) -> dict:
    """Debian's ``hey`` for ``HEY_S`` seconds on the same endpoint (one body, repeated): QPS, p50/p99, statuses."""
    if shutil.which("hey") is None:
        return {"skipped": "hey is not installed (apt-get install hey)"}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(body, file)
        file.flush()
        command = ["hey", "-z", f"{HEY_S}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json"]
        out = subprocess.run([*command, "-D", file.name, f"{url}/recommend"], capture_output=True, text=True).stdout

    def number(pattern: str) -> float | None:
        found = re.search(pattern, out)
        return float(found.group(1)) if found else None

    p50, p99 = number(r"50%+ in ([\d.]+) secs"), number(r"99%+ in ([\d.]+) secs")
    return {
        "concurrency": concurrency,
        "qps": number(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "statuses": {code: int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)},
    }


def replicas() -> int:
    states = serve.status().applications[deploy.APP_NAME].deployments[DEPLOYMENT].replica_states
    return states.get("RUNNING", 0)


def replica_actors() -> dict[str, str]:
    """Live replica actors: name -> namespace."""
    return {
        a["name"]: a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True) if DEPLOYMENT in a["name"]
    }


def replica_killed(cfg: PipelineConfig, bodies: list[dict], version: str) -> dict:
    url = deploy.start(cfg, index_version=version, min_replicas=2, max_replicas=2, cpus_per_replica=1)
    event = {}

    async def kill_and_watch():
        await asyncio.sleep(5)
        before = replica_actors()
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace=before[victim]), no_restart=True)
        event["killed"], killed_at = victim, time.perf_counter()
        # Replaced: two live replicas again, one of them new, and Serve counts both as running.
        while time.perf_counter() - killed_at < 60:
            await asyncio.sleep(0.5)
            now = replica_actors()
            if len(now) == 2 and set(now) - set(before) and replicas() == 2:
                event["replaced_after_s"] = round(time.perf_counter() - killed_at, 1)
                break

    stats = load(url, bodies, 8, KILL_PHASE_S, kill_and_watch)
    return {**stats, **event, "replicas_after": replicas()}


def llm_worker(request_file: str, result_file: str) -> None:
    """Run in its own process: vLLM with the teacher, one unguided request at a time."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    job = json.loads(open(request_file).read())
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    llm = LLM(model=job["model"], dtype=job["dtype"], max_model_len=job["max_model_len"], enforce_eager=True)
    params = SamplingParams(temperature=0, max_tokens=job["max_tokens"], repetition_penalty=job["repetition_penalty"])
    chats = [
        prompts.render_chat(tokenizer, "unguided", prompts.unguided_prompt(t, job["max_words"])) for t in job["texts"]
    ]
    llm.generate(chats[:1], params, use_tqdm=False)  # warm-up
    latencies, tokens = [], []
    for chat in chats:
        t = time.perf_counter()
        out = llm.generate([chat], params, use_tqdm=False)[0]
        latencies.append(time.perf_counter() - t)
        tokens.append(len(out.outputs[0].token_ids))
    open(result_file, "w").write(json.dumps({"latencies_s": latencies, "output_tokens": tokens}))


def llm_in_the_loop(cfg: PipelineConfig, bodies: list[dict], served: ServedModel) -> dict:
    from r2end_core.teacher.model import resolve_teacher

    gc = cfg.generate
    texts = [
        served.catalogue.history_text(b["history"], b.get("timestamps"), b.get("at")) for b in bodies[:LLM_REQUESTS]
    ]
    with tempfile.TemporaryDirectory() as scratch:
        request, result = os.path.join(scratch, "request.json"), os.path.join(scratch, "result.json")
        open(request, "w").write(
            json.dumps(
                {
                    "model": resolve_teacher(gc.teacher),
                    "dtype": gc.dtype,
                    "max_model_len": gc.max_model_len,
                    "max_tokens": gc.token_cap,
                    "max_words": gc.max_words,
                    "repetition_penalty": gc.repetition_penalty,
                    "texts": texts,
                }
            )
        )
        env = {
            **os.environ,
            "VLLM_CPU_OMP_THREADS_BIND": gc.cpu_threads_bind,
            "VLLM_CPU_KVCACHE_SPACE": str(gc.cpu_kv_cache_gib),
        }
        subprocess.run(
            [sys.executable, "-c", f"from bench.serving_cpu import llm_worker; llm_worker({request!r}, {result!r})"],
            env=env,
            check=True,
        )
        out = json.loads(open(result).read())
    stats = summarize(out["latencies_s"], sum(out["latencies_s"]), 0)
    return {
        **stats,
        "model": gc.teacher,
        "mean_output_tokens": round(float(np.mean(out["output_tokens"])), 1),
        "token_cap": gc.token_cap,
    }


def rollout(cfg: PipelineConfig, url: str, body: dict, version: str) -> dict:
    """``version`` made live, then, under load, another version of the same model built (HNSW instead of exact
    search), promoted and rolled out, then rolled back (``endpoint_trials.rollout``)."""
    promote.run(cfg, version)
    deploy.start(cfg)  # the live version, as Serve deploys by default

    def move(how: argparse.Namespace) -> None:
        promote.main(cfg, how)
        deploy.start(cfg)

    def build() -> str:
        return index_stage.run(cfg.with_section("index", kind="hnsw")).version

    return endpoint_trials.rollout(url, body, build, move) | {"from": version}


def bench_model(cfg: PipelineConfig, name: str, bodies: list[dict], fuzz_cases: int) -> tuple[dict, ServedModel]:
    """Every phase but the LLM's for one model; returns (its result, the model as served in process)."""
    cfg = cfg.with_section("index", model=name)
    built = index_stage.run(cfg)
    served = ServedModel(Layout(cfg.storage_path), built.version, cfg.serve.cpu_encoder, THREADS)
    phases = {"in_process": in_process(served, bodies)}
    if (encoder := encoder_comparison(cfg, name, bodies, served)) is not None:
        phases["encoder"] = encoder
    url = deploy.start(cfg, index_version=built.version, min_replicas=1, max_replicas=1)
    phases["http"] = {
        f"c{c}": with_batch_sizes(url, lambda c=c: with_machine_cpu(lambda: load(url, bodies, c))) for c in (1, 8, 32)
    }
    phases["hey"] = {f"c{c}": with_machine_cpu(lambda c=c: hey(url, bodies[0], c)) for c in (1, 32)}
    items = Layout(cfg.storage_path).read_items()
    texts = items.column("title").drop_null().to_pylist() if served.manifest.reads == "text" else None
    phases["fuzz"] = api_fuzz.fuzz(url, fuzz_cases, FUZZ_S, item_ids=items.column("item_id").to_pylist(), texts=texts)
    phases["slow_clients"] = endpoint_trials.slow_clients(url, bodies[0], SLOW_CLIENTS, SLOW_REQUESTS)
    deploy.start(cfg, index_version=built.version, min_replicas=1, max_replicas=1, max_batch_size=1)
    phases["http_unbatched"] = {"c32": with_batch_sizes(url, lambda: with_machine_cpu(lambda: load(url, bodies, 32)))}
    deploy.start(cfg, index_version=built.version)  # the default: autoscaling between min and max replicas
    autoscaling = with_machine_cpu(lambda: load(url, bodies, 32, ERRORS_PHASE_S))
    phases["autoscaling_60s"] = {**autoscaling, "replicas_at_end": replicas()}
    phases["replica_killed"] = with_machine_cpu(lambda: replica_killed(cfg, bodies, built.version))
    phases["rollout"] = rollout(cfg, url, bodies[0], built.version)
    serve.shutdown()
    http, floor = phases["http"], phases["in_process"]
    result = {
        "kind": served.manifest.kind,
        "reads": served.manifest.reads,
        "p50_ratio_http_vs_inprocess": round(http["c1"]["p50_ms"] / floor["c1"]["p50_ms"], 2),
        # against the better of the two in-process paces: one at a time can outrun batches (padding)
        "throughput_ratio_c32_vs_inprocess": round(
            http["c32"]["qps"] / max(floor["c1"]["qps"], floor[f"batch{BATCH}"]["qps"]), 2
        ),
        "batching_throughput_ratio": round(http["c32"]["qps"] / phases["http_unbatched"]["c32"]["qps"], 2),
        **{f"{prefix}_{measure}": None for prefix in ONNX_MEASURES for measure in ONNX_MEASURED},
        "errors": phases["autoscaling_60s"]["errors"],
        "fuzz_cases": phases["fuzz"]["cases"],
        "fuzz_5xx": phases["fuzz"]["server_errors"],
        "fuzz_reach_rate": phases["fuzz"]["reach_rate"],
        "fuzz_check_failures": sum(phases["fuzz"]["check_failures"].values()),
        "slow_clients": phases["slow_clients"],
        "slow_clients_p99_ratio": phases["slow_clients"]["p99_ratio"],
        "rollout": phases["rollout"],
        "rollout_errors": phases["rollout"]["errors"],
        "rollout_as_promoted": phases["rollout"]["versions_seen"]
        == [built.version, phases["rollout"]["to"], built.version],
        "hey_c1_p50_ms": phases["hey"]["c1"].get("p50_ms"),
        "hey_c32_qps": phases["hey"]["c32"].get("qps"),
        "cpu_steal_max": max(steals(phases)),
        "setup": {"index_version": built.version, "model_version": built.model_version, "items": built.items},
        "phases": phases,
    }
    if encoder:
        torch_fp32 = encoder["torch_fp32"]
        for prefix, backend in ONNX_MEASURES.items():
            onnx = encoder[backend]
            result[f"{prefix}_speedup"] = round(torch_fp32["batch1"]["p50_ms"] / onnx["batch1"]["p50_ms"], 2)
            result[f"{prefix}_throughput_speedup"] = round(
                onnx[f"batch{BATCH}"]["qps"] / torch_fp32[f"batch{BATCH}"]["qps"], 2
            )
            ndcg = torch_fp32["valid"]["ndcg@10"]
            result[f"{prefix}_rel_ndcg_loss"] = round((ndcg - onnx["valid"]["ndcg@10"]) / ndcg, 4)
    return result, served


def latency_of(cfg: PipelineConfig, name: str, bodies: list[dict]) -> dict:
    """One model's served latency alone (``--latency-only``; ``bench.llm_share``'s cost column reads its HTTP
    p50): in process and over HTTP (one replica, batched), one request at a time."""
    cfg = cfg.with_section("index", model=name)
    built = index_stage.run(cfg)
    served = ServedModel(Layout(cfg.storage_path), built.version, cfg.serve.cpu_encoder, THREADS)
    phases = {"in_process": in_process(served, bodies, {"c1": 1})}
    url = deploy.start(cfg, index_version=built.version, min_replicas=1, max_replicas=1)
    phases["http"] = {"c1": with_batch_sizes(url, lambda: with_machine_cpu(lambda: load(url, bodies, 1)))}
    serve.shutdown()
    return {
        "kind": served.manifest.kind,
        "reads": served.manifest.reads,
        "latency_only": True,
        "p50_ratio_http_vs_inprocess": round(phases["http"]["c1"]["p50_ms"] / phases["in_process"]["c1"]["p50_ms"], 2),
        "setup": {"index_version": built.version, "model_version": built.model_version, "items": built.items},
        "phases": phases,
    }


def steals(tree: dict):
    """Every share the hypervisor stole (``with_machine_cpu``'s) in a result tree, at any depth."""
    if set(tree) == {"busy", "steal"}:
        yield tree["steal"]
        return
    for value in tree.values():
        if isinstance(value, dict):
            yield from steals(value)


def benchmark(cfg: PipelineConfig, args) -> None:
    started = time.time()
    torch.set_num_threads(THREADS)
    cfg.serve = cfg.serve.model_copy(update={"keep_serving": False, "cpus_per_replica": THREADS})
    names = args.models.split(",")
    latency_only = [n for n in (args.latency_only.split(",") if args.latency_only else []) if n not in names]
    layout = Layout(cfg.storage_path)
    if missing := [n for n in [*names, *latency_only] if not storage.exists(layout.model_latest(n))]:
        raise SystemExit(
            f"models {missing} are not under {layout.path('models')}: train them first, e.g. "
            "python -m bench.students_beauty --records-only --methods fusion_dllm2rec_tail --seeds 23 (the models it "
            "learns from too)"
        )
    bodies = user_queries(cfg, QUERIES)
    by_model, served = {}, None
    for name in names:
        fuzz_cases = FUZZ_CASES if name == names[0] else FUZZ_CASES_OTHERS
        by_model[name], served = bench_model(cfg, name, bodies, fuzz_cases)
    llm = llm_in_the_loop(cfg, bodies, served)
    for name in latency_only:
        by_model[name] = latency_of(cfg, name, bodies)
    for result in by_model.values():
        result["llm_in_loop_latency_ratio"] = round(llm["p50_ms"] / result["phases"]["http"]["c1"]["p50_ms"], 1)
    first = by_model[names[0]]
    out = {
        **{k: first[k] for k in HEADLINE},  # every model's measures are under "models"
        "headline_model": names[0],
        "goals": GOALS,
        "models": by_model,
        "llm_in_the_loop": llm,
        "setup": {
            "queries": len(bodies),
            "phase_s": PHASE_S,
            "torch_threads": THREADS,
            "encoder_valid_users": ENCODER_USERS,
            "serve": cfg.serve.model_dump(),
        },
        "total_wall_time_s": round(time.time() - started, 1),
        "machine": results.machine(),
    }
    results.write("serving_cpu", out, report(out), cfg.model_dump(mode="json"))


def cpu_shares(cpu: dict) -> str:
    return f"{cpu['busy']:.0%} / {cpu['steal']:.1%}"


def cell(value) -> str:
    return "–" if value is None else str(value)


def report(out: dict) -> str:
    names, s = [n for n, m in out["models"].items() if not m.get("latency_only")], out["setup"]
    lines = [
        "# Serving on this CPU: trained models over HTTP against in process, the ONNX encoder, fuzzing, the LLM",
        "",
        f"{s['queries']:,} real Beauty test-time histories (ids and timestamps), k=10, history excluded; "
        f"{s['torch_threads']} torch/ONNX Runtime threads in process and in the one replica; phases of "
        f"{s['phase_s']:.0f} s on loopback; text encoder `{s['serve']['cpu_encoder']}`.",
        "",
        "| measure | goal | " + " | ".join(f"`{n}` ({out['models'][n]['kind']})" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    extra = [
        "batching_throughput_ratio",
        "onnx_int8_throughput_speedup",
        "onnx_speedup",
        "onnx_throughput_speedup",
        "onnx_rel_ndcg_loss",
        "hey_c1_p50_ms",
        "hey_c32_qps",
        "cpu_steal_max",
    ]
    for key in [*GOALS, *extra]:
        lines.append(
            f"| {key} | {GOALS.get(key, '')} | " + " | ".join(cell(out["models"][n].get(key)) for n in names) + " |"
        )
    for name in names:
        p = out["models"][name]["phases"]
        rows = [
            ("in process, one at a time", p["in_process"]["c1"]),
            (f"in process, batches of {BATCH}", p["in_process"][f"batch{BATCH}"]),
            *[(f"HTTP, batched, c={c}", p["http"][f"c{c}"]) for c in (1, 8, 32)],
            ("HTTP, unbatched, c=32", p["http_unbatched"]["c32"]),
            ("HTTP, autoscaling 1-2 replicas, c=32, 60 s", p["autoscaling_60s"]),
            ("HTTP, 2 replicas, one killed at 5 s, c=8", p["replica_killed"]),
        ]
        lines += [
            "",
            f"## `{name}`",
            "",
            "| phase | requests | errors | QPS | p50 ms | p95 ms | p99 ms | requests per batch "
            "| machine CPU busy / stolen |",
            "|---|---|---|---|---|---|---|---|---|",
            *[
                f"| {what} | {r['requests']} | {r['errors']} | {r['qps']} | "
                + " | ".join(str(r[f"p{q}_ms"]) for q in (50, 95, 99))
                + f" | {cell(r.get('mean_batch', r.get('batch')))} | {cpu_shares(r['cpu'])} |"
                for what, r in rows
            ],
        ]
        hey_rows = [r for r in p["hey"].values() if "skipped" not in r]
        lines += [""] + [
            f"`hey`, c={r['concurrency']}, {HEY_S} s, one body: {r['qps']} req/s, p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms, statuses {r['statuses']}; machine CPU busy / stolen {cpu_shares(r['cpu'])}."
            for r in hey_rows
        ]
        fuzz, killed, slow, moved = p["fuzz"], p["replica_killed"], p["slow_clients"], p["rollout"]
        lines += [
            f"Fuzz: {fuzz['cases']} schemathesis cases (from the OpenAPI schema, and three in five made of real "
            f"catalogue ids), statuses {fuzz['statuses']}, {fuzz['server_errors']} server errors, "
            f"{fuzz['reach_rate']:.0%} encoded and searched, response checks failed {fuzz['check_failures'] or 0}.",
            f"Slow clients: {slow['slow_clients']} clients trickling their bodies got {slow['slow_answers']}; beside "
            f"them normal requests' p99 was {slow['p99_beside_ms']} ms against {slow['p99_alone_ms']} ms alone "
            f"({slow['p99_ratio']}x), {slow['errors']} errors.",
            f"Rollout: {moved['requests']} requests while `{moved['to']}` was promoted and rolled back; "
            f"{moved['errors']} errors; versions in turn {moved['versions_seen']}.",
            f"Replica kill: `{killed.get('killed')}`; Serve had 2 running again after "
            f"{killed.get('replaced_after_s')} s; {killed['errors']} failed requests ({killed['statuses']}).",
        ]
        if "encoder" in p:
            e = p["encoder"]
            lines += [
                "",
                f"Text encoder in process ({e['valid_users']:,} validation users for the ranking, paired):",
                "",
                f"| backend | p50 ms, one text | texts/s, batches of {BATCH} | valid HR@10 | valid NDCG@10 |",
                "|---|---|---|---|---|",
                *[
                    f"| {b} | {e[b]['batch1']['p50_ms']} | {e[b][f'batch{BATCH}']['qps']} "
                    f"| {e[b]['valid']['hr@10']:.4f} | {e[b]['valid']['ndcg@10']:.4f} |"
                    for b in ENCODERS
                ],
                "",
                "Machine CPU busy / stolen while they took turns: "
                + ", ".join(f"{pace} {cpu_shares(cpu)}" for pace, cpu in e["cpu"].items())
                + ". ONNX Runtime minus torch fp32 (paired): "
                + "; ".join(
                    f"{b}: " + ", ".join(f"{m} {d['difference']:+.4f} ± {d['se']:.4f}" for m, d in diff.items())
                    for b, diff in e["valid_minus_torch"].items()
                )
                + ".",
            ]
    if alone := {n: m for n, m in out["models"].items() if m.get("latency_only")}:
        lines += [
            "",
            "## Served latency alone (`--latency-only`: in process and over HTTP, one request at a time)",
            "",
            "| model | kind | in process p50 ms | HTTP c=1 p50 ms | HTTP / in process | CPU busy / stolen (HTTP) |",
            "|---|---|---|---|---|---|",
            *[
                f"| `{n}` | {m['kind']} | {m['phases']['in_process']['c1']['p50_ms']} | "
                f"{m['phases']['http']['c1']['p50_ms']} | {m['p50_ratio_http_vs_inprocess']} | "
                f"{cpu_shares(m['phases']['http']['c1']['cpu'])} |"
                for n, m in alone.items()
            ],
        ]
    llm = out["llm_in_the_loop"]
    lines += [
        "",
        f"LLM in the loop ({llm['model']}, one request at a time): p50 {llm['p50_ms']} ms over {llm['requests']} "
        f"requests, {llm['mean_output_tokens']} tokens on average.",
        "",
        f"The top-level measures in the JSON are `{out['headline_model']}`'s. Total {out['total_wall_time_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def arguments(parser) -> None:
    parser.add_argument("--models", default=MODELS, help="comma-separated model names (under models/) to serve")
    parser.add_argument(
        "--latency-only",
        default="",
        help="comma-separated model names whose served latency alone is measured (in process and HTTP, one "
        "request at a time), e.g. every method of the students benchmark for bench.llm_share's cost column",
    )


if __name__ == "__main__":
    run_stage(
        __doc__,
        benchmark,
        "bench-serving_cpu",
        default_config="configs/bench/serving-cpu.yaml",
        add_arguments=arguments,
    )
