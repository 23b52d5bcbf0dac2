"""The cluster plan from FLOPs counted on the 300-user slice: every stage costed for both workloads."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from r2end_core.layout import Layout
from tests.conftest import REPO, prepare_tables


def test_every_stage_is_costed_from_counted_flops(tmp_path, beauty_dir):
    _, users, items = prepare_tables(beauty_dir)
    layout = Layout(str(tmp_path / "storage"))
    Path(layout.users).mkdir(parents=True)
    pq.write_table(users, Path(layout.users) / "part-0.parquet")
    pq.write_table(items, layout.items)
    command = [sys.executable, "-m", "bench.cluster_plan", "--storage", layout.root, "--batches", "1"]
    subprocess.run([*command, "--out", str(tmp_path / "out")], cwd=REPO, check=True)

    out = json.loads((tmp_path / "out/cluster_plan.json").read_text())
    per = out["measured_flops"]
    assert per["sasrec"]["full"] > per["sasrec"]["sampled"] > 0
    assert per["distill_user"] > 2 * per["encode_history"] > 0  # a backward pass costs about two forwards
    for workload in ("beauty", "users_1m"):
        stages = out["plan"][workload]["stages"]
        assert len(stages) == 8 and all(row["pflop"] > 0 and row["L4"] > row["H100 SXM"] > 0 for row in stages.values())
    million, small = out["plan"]["users_1m"]["stages"], out["plan"]["beauty"]["stages"]
    full, sampled = "sasrec, full softmax", "sasrec, sampled softmax"
    # the full softmax grows with users x items, the sampled one with users alone
    assert million[full]["pflop"] / small[full]["pflop"] > 5 * million[sampled]["pflop"] / small[sampled]["pflop"]
    assert "| users_1m | distill |" in (tmp_path / "out/cluster_plan.md").read_text()
