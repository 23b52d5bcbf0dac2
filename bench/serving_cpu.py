"""Serving on this CPU: the R2END endpoint over HTTP against its floors and the LLM it replaces.

    python -m bench.serving_cpu [--config configs/bench/serving-cpu.yaml] [--set index.model=bench-r2end]

One run, one machine, the same real queries (Beauty users' test-time histories as item ids with
timestamps), in phases:

1. ``in_process``: Catalogue -> the model's user vector -> faiss in this process, one query at a time (the floor);
2. ``http``: the Serve app (one encoder replica, dynamic batching on) at concurrency 1, 8 and 32,
   from an aiohttp load generator on loopback, each phase bounded in time and count;
3. ``http_unbatched``: the same at concurrency 32 with ``max_batch_size=1``;
4. ``autoscaling_60s``: the default config (1 to 2 encoder replicas) for 60 s at concurrency 32: errors;
5. ``replica_killed``: two encoder replicas at concurrency 8; one is killed 5 s in; Serve replaces it;
6. ``llm_in_the_loop``: the teacher (vLLM, SmolLM2-135M) asked, per request, for the next item from
   the same history (the unguided prompt), one request at a time.

Writes bench/results/serving_cpu.json and .md.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

import aiohttp
import numpy as np
import ray
import torch
from ray import serve

from bench import results
from r2end_core import models
from r2end_core.config import PipelineConfig
from r2end_core.data.items import Catalogue
from r2end_core.layout import Layout
from r2end_core.serve import index
from r2end_core.serve.requests import test_time_request
from r2end_core.teacher import prompts
from ray_jobs import index as index_stage
from ray_jobs import serve as deploy
from ray_jobs.runtime import run_stage

QUERIES, PHASE_S, PHASE_MAX_REQUESTS, LLM_REQUESTS = 1000, 20.0, 5000, 8
ERRORS_PHASE_S, KILL_PHASE_S = 60.0, 30.0
RECENT_ITEMS = 50  # what a client sends: its recent purchases (the server keeps <= 8 within 60 days)
THREADS = 2  # torch threads, in process and in the (single) encoder replica alike


def user_queries(cfg: PipelineConfig, n: int) -> list[dict]:
    """Request bodies: n users' test-time histories (their last ``RECENT_ITEMS`` ids and timestamps, and the
    test item's time as ``at``)."""
    users = Layout(cfg.storage_path).read_users()
    rows = users.take(np.random.default_rng(0).permutation(users.num_rows)[:n]).to_pylist()
    return [test_time_request(u, 10, RECENT_ITEMS) for u in rows]


def summarize(latencies_s: list[float], seconds: float, errors: int) -> dict:
    ms = np.array(latencies_s) * 1000
    return {
        "requests": len(latencies_s) + errors,
        "errors": errors,
        "qps": round(len(latencies_s) / seconds, 1),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if len(ms) else None for q in (50, 95, 99)},
    }


def in_process(cfg: PipelineConfig, bodies: list[dict]) -> dict:
    torch.set_num_threads(THREADS)
    layout = Layout(cfg.storage_path)
    faiss_index, items, manifest = index.load(layout, "latest")
    catalogue, model = Catalogue(items), models.load(layout, manifest.model, manifest.model_version)

    def answer(body: dict) -> None:
        rule = model.manifest.history if model.manifest.reads == "text" else None
        history = catalogue.history(body["history"], body.get("timestamps"), body.get("at"), text_rule=rule)
        index.search(faiss_index, model.user_vectors(history), body["k"], [catalogue.rows(body["history"])])

    answer(bodies[0])  # warm-up
    latencies, started = [], time.perf_counter()
    for body in bodies:
        if time.perf_counter() - started > PHASE_S or len(latencies) >= PHASE_MAX_REQUESTS:
            break
        t = time.perf_counter()
        answer(body)
        latencies.append(time.perf_counter() - t)
    return summarize(latencies, time.perf_counter() - started, 0)


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


def load(url: str, bodies: list[dict], concurrency: int, seconds: float = PHASE_S, beside=None) -> dict:
    asyncio.run(_load(url, bodies, concurrency, 1.0))  # warm-up, not counted
    return asyncio.run(_load(url, bodies, concurrency, seconds, beside))


def encoder_replicas() -> int:
    states = serve.status().applications[deploy.APP_NAME].deployments["Recommender"].replica_states
    return states.get("RUNNING", 0)


def encoder_replica_actors() -> dict[str, str]:
    """Live encoder replica actors: name -> namespace."""
    return {
        a["name"]: a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True) if "Recommender" in a["name"]
    }


def replica_killed(cfg: PipelineConfig, bodies: list[dict]) -> dict:
    url = deploy.start(cfg, min_replicas=2, max_replicas=2, cpus_per_replica=1)
    event = {}

    async def kill_and_watch():
        await asyncio.sleep(5)
        before = encoder_replica_actors()
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace=before[victim]), no_restart=True)
        event["killed"], killed_at = victim, time.perf_counter()
        # Replaced: two live replicas again, one of them new, and Serve counts both as running.
        while time.perf_counter() - killed_at < 60:
            await asyncio.sleep(0.5)
            now = encoder_replica_actors()
            if len(now) == 2 and set(now) - set(before) and encoder_replicas() == 2:
                event["replaced_after_s"] = round(time.perf_counter() - killed_at, 1)
                break

    stats = load(url, bodies, 8, KILL_PHASE_S, kill_and_watch)
    return {**stats, **event, "replicas_after": encoder_replicas()}


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


def llm_in_the_loop(cfg: PipelineConfig, bodies: list[dict]) -> dict:
    from r2end_core.teacher.model import resolve_teacher

    gc = cfg.generate
    catalogue = Catalogue(index.load_items(Layout(cfg.storage_path), "latest"))
    texts = [catalogue.history_text(b["history"], b.get("timestamps"), b.get("at")) for b in bodies[:LLM_REQUESTS]]
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


def benchmark(cfg: PipelineConfig) -> None:
    started = time.time()
    cfg.serve = cfg.serve.model_copy(update={"keep_serving": False, "cpus_per_replica": THREADS})
    built = index_stage.run(cfg)
    bodies = user_queries(cfg, QUERIES)
    phases = {"in_process": in_process(cfg, bodies)}

    url = deploy.start(cfg, min_replicas=1, max_replicas=1)
    phases["http"] = {f"c{c}": load(url, bodies, c) for c in (1, 8, 32)}
    deploy.start(cfg, min_replicas=1, max_replicas=1, max_batch_size=1)
    phases["http_unbatched"] = {"c32": load(url, bodies, 32)}
    deploy.start(cfg)  # the default: autoscaling between min_replicas and max_replicas
    phases["autoscaling_60s"] = {**load(url, bodies, 32, ERRORS_PHASE_S), "encoder_replicas_at_end": encoder_replicas()}
    phases["replica_killed"] = replica_killed(cfg, bodies)
    serve.shutdown()
    phases["llm_in_the_loop"] = llm_in_the_loop(cfg, bodies)

    http, floor = phases["http"], phases["in_process"]
    out = {
        "p50_ratio_http_vs_inprocess": round(http["c1"]["p50_ms"] / floor["p50_ms"], 2),
        "batching_throughput_ratio": round(http["c32"]["qps"] / phases["http_unbatched"]["c32"]["qps"], 2),
        "llm_in_loop_latency_ratio": round(phases["llm_in_the_loop"]["p50_ms"] / http["c1"]["p50_ms"], 1),
        "errors": phases["autoscaling_60s"]["errors"],
        "goals": {
            "p50_ratio_http_vs_inprocess": "<= 1.5",
            "batching_throughput_ratio": ">= 3",
            "llm_in_loop_latency_ratio": ">= 100",
            "errors": "0",
        },
        "phases": phases,
        "setup": {
            "index_version": built.version,
            "items": built.items,
            "model": built.model,
            "model_version": built.model_version,
            "queries": len(bodies),
            "phase_s": PHASE_S,
            "torch_threads": THREADS,
            "serve": cfg.serve.model_dump(),
        },
        "command": "python -m " + " ".join(["bench.serving_cpu", *sys.argv[1:]]),
        "total_wall_time_s": round(time.time() - started, 1),
        "machine": results.machine(),
    }
    results.write("serving_cpu", out, report(out))


def report(out: dict) -> str:
    p, s = out["phases"], out["setup"]
    rows = [("in process (floor), c=1", p["in_process"])]
    rows += [(f"HTTP, batched, c={c}", p["http"][f"c{c}"]) for c in (1, 8, 32)]
    rows += [
        ("HTTP, unbatched, c=32", p["http_unbatched"]["c32"]),
        ("HTTP, autoscaling 1-2 replicas, c=32, 60 s", p["autoscaling_60s"]),
        ("HTTP, 2 replicas, one killed at 5 s, c=8", p["replica_killed"]),
        (f"LLM in the loop ({p['llm_in_the_loop']['model']}), c=1", p["llm_in_the_loop"]),
    ]
    lines = [
        "# Serving on this CPU: R2END over HTTP vs in process, batching, and the LLM it replaces",
        "",
        f"{s['items']:,} items (index `{s['index_version']}`), {s['queries']:,} real Beauty test-time histories, "
        f"k=10, history excluded; torch {s['torch_threads']} threads; phases of {s['phase_s']:.0f} s on loopback.",
        "",
        "| phase | requests | errors | QPS | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {r['requests']} | {r['errors']} | {r['qps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} |"
            for name, r in rows
        ],
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        *[f"| {k} | {out[k]} | {g} |" for k, g in out["goals"].items()],
        "",
        f"Replica kill: `{p['replica_killed'].get('killed')}` killed; Serve had 2 running again after "
        f"{p['replica_killed'].get('replaced_after_s')} s; {p['replica_killed']['errors']} failed requests.",
        "",
        f"Command: `{out['command']}` ({out['total_wall_time_s']:.0f} s).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_stage(__doc__, benchmark, "bench-serving_cpu", default_config="configs/bench/serving-cpu.yaml")
