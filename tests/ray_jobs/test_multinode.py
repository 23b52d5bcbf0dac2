"""Multi-node on object storage: a Ray cluster started as a cloud cluster starts (``ray start`` on a head with
no CPUs, so it runs drivers but no work, and on a worker node), whose storage path is a bucket of a local
S3-compatible server (moto). Every stage of the slice runs as its own driver joining the cluster: prepare (a
``ray job submit`` entrypoint), SASRec (one of its Ray Train workers SIGKILLed part-way: the run restarts from
its checkpoint), embed, distill, project, index, promote and serve. Inputs are read from the bucket and every artifact
is written there; the served replica runs on the worker node and answers over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow.fs as pafs
import pytest

from r2end_core import storage
from r2end_core.layout import Layout
from ray_jobs.runtime import SERVE_ENV, haproxy_found
from ray_jobs.serve import example_request, post
from tests.conftest import REPO, stage_config
from tests.conftest import SLICE_USERS as USERS
from tests.serve_app.test_app import free_port

BUCKET = "r2end-multinode"


def wait_until(check, what: str, timeout: float, every: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise TimeoutError(f"no {what} after {timeout:.0f} s")


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError as error:  # an HTTP error status is an answer too
        return hasattr(error, "code")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The environment that points pyarrow (and so every r2end process) at a moto S3 server with one bucket."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-p", str(port)], stdout=log, stderr=log
    )
    env = {
        "AWS_ACCESS_KEY_ID": "r2end-test",
        "AWS_SECRET_ACCESS_KEY": "r2end-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # this process reads the bucket too
    try:
        wait_until(lambda: answers(env["AWS_ENDPOINT_URL"]), "moto server", 60)
        fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}?allow_bucket_creation=true")
        fs.create_dir(BUCKET)
        yield env
    finally:
        for key, value in previous.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        server.terminate()
        server.wait(30)
        log.close()


def own_ports(*flags: str) -> list[str]:
    """``--flag=port`` for each flag, on free ports: another cluster on this machine (the test session's) holds
    Ray's defaults."""
    return [f"{flag}={free_port()}" for flag in flags]


AGENT_PORTS = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
               "--runtime-env-agent-port")  # fmt: skip


@pytest.fixture(scope="module")
def cluster(s3):
    """(GCS address, job API address, environment of its processes): a head node without CPUs, with the job API
    on its loopback, and a worker node with 4 CPUs."""
    root = tempfile.mkdtemp(prefix="r2end-ray-", dir="/tmp")  # Unix socket paths are capped at 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | s3
    env |= {k: v for k, v in SERVE_ENV.items() if k != "RAY_SERVE_ENABLE_HA_PROXY" or haproxy_found()}
    # token auth, as on a cloud cluster: every process of this cluster and its drivers holds its own token
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # a node drains for 30 s on SIGTERM, for a Kubernetes upgrade's in-flight requests; teardown needs none
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    port, dashboard = free_port(), free_port()
    address, jobs = f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    common = ["--block", "--disable-usage-stats"]
    logs = [open(os.path.join(root, name), "w") for name in ("head.log", "worker.log")]
    nodes = [
        subprocess.Popen(
            [ray, "start", "--head", f"--port={port}", "--num-cpus=0", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", *own_ports("--ray-client-server-port"), f"--temp-dir={root}",
             *own_ports(*AGENT_PORTS), *common],
            env=env, stdout=logs[0], stderr=subprocess.STDOUT,
        )
    ]  # fmt: skip
    try:
        wait_until(lambda: len(alive_nodes(address, env)) == 1, "head node", 120, every=2)
        nodes.append(
            subprocess.Popen([ray, "start", f"--address={address}", "--num-cpus=4", *own_ports(*AGENT_PORTS), *common],
                             env=env, stdout=logs[1], stderr=subprocess.STDOUT)
        )  # fmt: skip
        try:
            wait_until(lambda: len(alive_nodes(address, env)) == 2, "worker node", 120, every=2)
        except TimeoutError as error:
            logs[1].flush()
            raise TimeoutError(f"{error}: {open(logs[1].name).read()[-3000:]}") from None
        yield address, jobs, env
    finally:
        for node in nodes:  # --block: each node drains and stops its processes (together: one wait)
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            node.wait(90)
        for log in logs:
            log.close()
        shutil.rmtree(root, ignore_errors=True)


def submit(jobs: str, config: Path, env: dict, stage_name: str) -> str:
    """``stage_name`` as a ``ray job submit`` entrypoint; its working directory (the config alone) goes through
    the job API, and the repository's packages are installed on every node."""
    command = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit", f"--address={jobs}",
               f"--working-dir={config.parent}", "--", sys.executable, "-m", f"ray_jobs.{stage_name}", "--config",
               config.name]  # fmt: skip
    for _ in range(20):  # the job agent comes up a little after the job API answers
        submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in submitted.stderr:
            break
        time.sleep(3)
    assert submitted.returncode == 0 and "succeeded" in submitted.stdout, submitted.stdout[-3000:] + submitted.stderr
    return submitted.stdout


def nodes_driver(address: str, env: dict) -> subprocess.CompletedProcess | None:
    """A driver of its own (this process may be in another cluster) that joins and prints ``ray.nodes()``; None
    when it does not finish in time."""
    code = f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); print(json.dumps(ray.nodes()))"
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None


def alive_nodes(address: str, env: dict) -> list[dict]:
    """The cluster's alive nodes; none when a driver cannot join (yet)."""
    out = nodes_driver(address, env)
    if out is None or out.returncode:
        return []
    return [n for n in json.loads(out.stdout.strip().splitlines()[-1]) if n["Alive"]]


def upload(local: str, uri: str) -> str:
    storage.copy_folder(local, uri)
    return uri


def stage(name: str, config: str, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", f"ray_jobs.{name}", "--config", config, *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-6000:]
    return out


def train_workers(env: dict) -> list[psutil.Process]:
    """This cluster's Ray Train workers: they hold its token (another Ray on the machine trains its own)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if "RayTrainWorker" in " ".join(p.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                if p.environ().get("RAY_AUTH_TOKEN") == env["RAY_AUTH_TOKEN"]:
                    found.append(p)
    return found


def test_the_stages_run_on_two_nodes_from_object_storage(tmp_path, cluster, slice_folders):
    address, jobs, env = cluster
    env = env | {"RAY_ADDRESS": address}
    dataset, outputs = slice_folders
    store = f"s3://{BUCKET}/store"
    inputs = [upload(folder, f"s3://{BUCKET}/inputs/{os.path.basename(folder)}") for folder in [dataset, *outputs]]
    cfg, path = stage_config(
        tmp_path,
        inputs[0],
        inputs[1:3],
        f"storage_path={store}",
        "sasrec.max_epochs=4",
        "sasrec.patience=10",
        "sasrec.batch_size=8",
        "sasrec.model.hidden_size=16",
        "sasrec.model.inner_size=16",
        "project.epochs=1",
        "distill.checkpoint_every=100",  # the last step's alone (to object storage): SASRec is what is killed
        f"serve.port={free_port()}",
        "serve.proxy_location=HeadOnly",
        "serve.max_replicas=1",
        "serve.keep_serving=false",
    )
    config = str(path)
    layout = Layout(store)
    submit(jobs, path, env, "prepare")
    assert storage.read_json(layout.prepare_report)["users"] == USERS
    # token auth: the job API and the GCS refuse a client that holds another token
    intruder = env | {"RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    job_list = [ray_cli, "job", "list", f"--address={jobs}"]
    listed = [subprocess.run(job_list, env=e, capture_output=True, text=True, timeout=120) for e in (env, intruder)]
    assert listed[0].returncode == 0 and listed[1].returncode != 0, listed[1].stdout[-2000:]
    refused = nodes_driver(address, intruder)  # refused for its token, not for anything else
    assert refused and refused.returncode and "InvalidAuthToken" in refused.stderr, refused and refused.stderr[-2000:]

    # SASRec: SIGKILL its Ray Train worker once the first epoch is checkpointed; the run goes on from there.
    training = stage("train_sasrec", config, env)
    run = wait_until(lambda: storage_folders(layout.ray_train) or training.poll() is not None, "run folder", 300)
    registered = storage.join(layout.ray_train, run[0], "checkpoint_manager_snapshot.json")  # Ray Train's record
    wait_until(lambda: storage.exists(registered) or training.poll() is not None, "first checkpoint", 300)
    workers = train_workers(env)
    assert training.poll() is None and len(workers) == 1, "the run ended before its first checkpoint was killed"
    workers[0].send_signal(signal.SIGKILL)
    out = finish(training)
    summary = storage.read_json(layout.model_version("sasrec", read_latest(layout, "sasrec"), "metrics.json"))
    assert summary["resumed_from_epoch"] >= 1 and summary["epochs_trained"] == 4, (workers, out[-5000:])

    for name in ("embed", "distill", "project", "index"):
        finish(stage(name, config, env))
    finish(stage("promote", config, env, "--version", "latest"))
    finish(stage("serve", config, env))
    # the app outlives its driver; its replica is on the worker node (the head has no CPU for one)
    head = [n for n in alive_nodes(address, env) if n["Resources"].get("CPU", 0) == 0]
    assert len(head) == 1
    answer = post(f"http://127.0.0.1:{cfg.serve.port}/recommend", example_request(cfg, k=7))
    assert len(answer["items"]) == 7 and answer["model"] == cfg.project.run_name

    # every artifact is in the bucket; nothing was written beside the config on this machine's disk
    written = {f.path.split("/")[2] for f in bucket_files(f"{BUCKET}/store")}
    assert {"prepared", "embeddings", "students", "models", "index", "ray_train", "logs"} <= written
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def storage_folders(uri: str) -> list[str]:
    fs, inner = storage.filesystem(uri)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return []
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(inner)) if i.type == pafs.FileType.Directory)


def bucket_files(inner: str) -> list[pafs.FileInfo]:
    fs, _ = storage.filesystem(f"s3://{inner}")
    return [i for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True)) if i.is_file]


def read_latest(layout: Layout, name: str) -> str:
    return storage.read_json(layout.model_latest(name))["version"]
