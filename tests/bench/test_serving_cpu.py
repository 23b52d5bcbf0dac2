"""The serving benchmark's timing of several backends side by side."""

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
