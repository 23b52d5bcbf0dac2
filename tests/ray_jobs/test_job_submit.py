"""A stage runs as a real `ray job submit` entrypoint against a separately started cluster."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from r2end_core.layout import Layout
from r2end_core.summaries import PrepareReport
from tests.conftest import BEAUTY

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DASHBOARD_PORT = 8275  # not Ray's default 8265, so a developer's own cluster is left alone
ADDRESS = f"http://127.0.0.1:{DASHBOARD_PORT}"


def ray_cli(*args, env=None, timeout=300):
    return subprocess.run([str(BIN / "ray"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture
def head_node():
    """A head node of its own, stopped by ending its `ray start --block` process group.

    (`ray stop` would end every Ray process on the machine, other clusters included.)
    """
    # Unix socket paths are capped at 107 bytes: a short temp dir, not pytest's deep one.
    temp_dir = tempfile.mkdtemp(prefix="r2end-ray-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"  # the job client only sends the token when told auth is on
    # Its own ports throughout: another cluster on this machine (the test session's) holds the defaults.
    ports = free_ports(6)
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus=4",
            f"--port={ports[0]}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={DASHBOARD_PORT}",
            "--include-dashboard=true",
            f"--dashboard-agent-listen-port={ports[1]}",
            f"--dashboard-agent-grpc-port={ports[2]}",
            f"--metrics-export-port={ports[3]}",
            f"--runtime-env-agent-port={ports[4]}",
            f"--ray-client-server-port={ports[5]}",
            f"--temp-dir={temp_dir}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while ray_cli("job", "list", f"--address={ADDRESS}", env=env).returncode != 0:
            assert head.poll() is None and time.time() < deadline, "the head node did not come up"
            time.sleep(2)
        yield env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            # Every process of this head shares its process group and has had SIGTERM; what is
            # still up after 5 s (Ray's graceful exit takes about 30 s here) is ended outright.
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_prepare_as_a_submitted_job(tmp_path, head_node):
    out = tmp_path / "artifacts"
    command = [
        "job",
        "submit",
        f"--address={ADDRESS}",
        "--working-dir=.",
        "--",
        "python",
        "-m",
        "ray_jobs.prepare",
        "--config",
        "configs/beauty-sample.yaml",
        "--set",
        f"storage_path={out}",
        "--set",
        f"prepare.dataset_path={BEAUTY}",
        "--set",
        "prepare.sample_users=100",
    ]
    for _ in range(10):  # the job agent comes up a little after the dashboard answers
        submitted = ray_cli(*command, env=head_node)
        if "No available agent" not in submitted.stderr:
            break
        time.sleep(3)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout
    layout = Layout(str(out))
    assert layout.read_users().num_rows == 100
    assert PrepareReport.read(layout.prepare_report, "prepare").users == 100
    assert (out / "logs" / "prepare.log").read_text()  # what the job logged, under its storage path
