"""The serving benchmark's timing of several backends side by side, its account of the machine's CPUs, and a
model's served latency alone, for real."""

import json
import os
import time

from bench import llm_share, results, serving_cpu
from tests.serve_app.test_app import free_port


def test_side_by_side_times_every_run_on_the_same_calls_in_turns(monkeypatch):
    monkeypatch.setattr(serving_cpu, "PHASE_S", 0.5)
    calls = {"slow": [], "fast": []}
    turns = []

    def run(name, pause):
        def call(batch):
            time.sleep(pause)
            calls[name].append(batch)
            turns.append(name)

        return call

    out = serving_cpu.side_by_side({"slow": run("slow", 0.01), "fast": run("fast", 0.0)}, list(range(7)), 2)
    assert calls["slow"] == calls["fast"] and len(calls["slow"]) > serving_cpu.ROUNDS  # the warm-up and each round's
    assert calls["slow"][1:3] == [[0, 1], [2, 3]] and [6, 0] in calls["slow"]  # items cycle
    assert turns.count("slow") == turns.count("fast") and turns[-1] == "fast" and turns[2] == "slow"
    assert out["slow"]["requests"] == out["fast"]["requests"] == len(calls["slow"]) - 1
    assert out["fast"]["qps"] > out["slow"]["qps"] and out["slow"]["p50_ms"] >= 10


def test_with_machine_cpu_reports_the_cores_busy_while_a_phase_ran():
    def spin():
        until = time.perf_counter() + 0.3
        while time.perf_counter() < until:
            pass
        return {"qps": 1.0}

    measured = serving_cpu.with_machine_cpu(spin)
    assert measured["qps"] == 1.0
    cpu = measured["cpu"]
    # one spinning thread keeps at least one of the machine's cores busy (or stolen), whatever runs beside it
    assert cpu["busy"] + cpu["steal"] >= 0.8 / os.cpu_count()
    assert 0.0 <= cpu["steal"] <= cpu["busy"] + cpu["steal"] <= 1.0


def test_steals_finds_every_phase_share_at_any_depth():
    phases = {
        "c1": {"qps": 3, "cpu": {"busy": 0.5, "steal": 0.01}},
        "hey": {"c32": {"cpu": {"busy": 1, "steal": 0.2}}},
        "encoder": {"torch": {"qps": 2}, "cpu": {"batch1": {"busy": 1, "steal": 0.3}}},
    }
    assert sorted(serving_cpu.steals(phases)) == [0.01, 0.2, 0.3]


def test_a_model_s_latency_alone_is_measured_over_http_for_the_cost_column(fused_student, monkeypatch, tmp_path):
    """``--latency-only``: our fused student indexed, served by Ray Serve and asked over HTTP one request at a
    time, beside its in-process floor; bench.llm_share's cost column reads its HTTP p50."""
    monkeypatch.setattr(serving_cpu, "PHASE_S", 2.0)
    cfg = fused_student[0].with_section("serve", port=free_port(), keep_serving=False, max_replicas=1)
    measured = serving_cpu.latency_of(cfg, "fusion", serving_cpu.user_queries(cfg, 20))
    assert measured["latency_only"] and (measured["kind"], measured["reads"]) == ("fusion", "item_ids+text")
    floor, http = measured["phases"]["in_process"]["c1"], measured["phases"]["http"]["c1"]
    assert floor["requests"] > 0 and http["requests"] > 0 and http["errors"] == 0
    assert 0 < floor["p50_ms"] and 0 < http["p50_ms"] and measured["p50_ratio_http_vs_inprocess"] > 0
    monkeypatch.setattr(results, "FOLDER", tmp_path)
    (tmp_path / "serving_cpu.json").write_text(json.dumps({"models": {"fusion-seed23": measured}}))
    assert llm_share.served_p50() == {"fusion-seed23": http["p50_ms"]}
