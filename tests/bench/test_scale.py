"""The scale benchmark on two small sizes of Beauty: each stage measured in its own process, resumed from
what it measured, and fitted."""

import json
import subprocess
import sys

from tests.conftest import REPO


def test_stages_are_measured_fitted_and_resumed(tmp_path):
    command = [
        *(sys.executable, "-m", "bench.scale", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")),
        *("--sizes", "0.01", "0.02", "--stages", "prepare", "sasrec", "index"),
        *("--steps", "2", "--queries", "20", "--no-million"),
    ]
    subprocess.run(command, cwd=REPO, check=True)
    out = json.loads((tmp_path / "out/scale.json").read_text())
    assert set(out["stages"]) == {"prepare", "sasrec", "index", "serving"}
    for stage, row in out["stages"].items():
        sizes = row["sizes"]
        assert set(sizes) == {"0.01x", "0.02x"}, stage
        assert sizes["0.02x"]["size"] > sizes["0.01x"]["size"] > 0, stage
        assert all(m["seconds"] > 0 and m["peak_rss_mb"] > 50 for m in sizes.values()), stage
        assert isinstance(row["exponent"], float), stage
    assert out["stages"]["prepare"]["sizes"]["0.01x"]["peak_worker_rss_mb"] > 50  # Ray Data workers, seen
    assert "extrapolated" in out["stages"]["sasrec"]["sizes"]["0.02x"]
    assert out["max_exponent"] == max(out["stages"][s]["exponent"] for s in ("prepare", "sasrec", "index"))
    assert (tmp_path / "out/scale.png").stat().st_size > 0 and "| sasrec |" in (tmp_path / "out/scale.md").read_text()

    # a second run measures nothing again: it reads back what the first measured
    measured = {p.name: p.stat().st_mtime for p in (tmp_path / "work/measured").iterdir()}
    subprocess.run(command, cwd=REPO, check=True)
    assert {p.name: p.stat().st_mtime for p in (tmp_path / "work/measured").iterdir()} == measured
