"""The serving benchmark's timing of several backends side by side, and its account of the machine's CPUs."""

import os
import time

from bench import serving_cpu


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
