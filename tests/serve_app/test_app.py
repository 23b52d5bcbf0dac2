"""The Serve application for real: the ZeRO-3 student distilled on the 40-user slice with a projection
trained on it, indexed, served by Ray Serve on the local cluster, and asked over HTTP on loopback; then
a SASRec trained on the same slice rolled out behind the same endpoint, then our fused student.

The tests share one endpoint and run in file order: those that read the default deployment come first; from the
ONNX test on, each deploys what it needs and leaves it (a redeploy costs ~30 s: the replica it replaces drains
first)."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import requests

from bench import api_fuzz, endpoint_trials
from r2end_core.layout import Layout
from r2end_core.serve import aliases
from r2end_core.serve.index import load_manifest
from ray_jobs import index, promote
from ray_jobs import serve as deploy
from serve_app.app import Recommender
from tests.conftest import BEAUTY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(r2end_model):
    """(config, base URL, the index version served, a real user's request body, an HNSW version's summary)."""
    cfg = r2end_model[0].with_section("serve", port=free_port(), keep_serving=False, max_replicas=1)
    approximate = index.run(
        cfg.with_section("index", kind="hnsw", hnsw_m=4, ef_search=4, recall_queries=20, recall_target=None)
    )
    built = index.run(cfg)  # exact, and the latest
    promote.run(cfg, built.version)
    url = deploy.start(cfg)  # the live version
    yield cfg, url, built, deploy.example_request(cfg, k=10), approximate
    # No serve.shutdown(): in throughput mode the ingress replica drains for 30 s before it stops
    # (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S); the session's cluster ends with the session.


def test_index_versions_name_their_model_and_quality(served):
    cfg, _, built, _, approximate = served
    assert built.quality == {"exact": True} and built.settings == {"kind": "flat"}
    assert approximate.settings == {"kind": "hnsw", "hnsw_m": 4, "ef_search": 4}
    assert approximate.quality["queries"] == 20 and 0 < approximate.quality["recall@10"] <= 1
    assert (built.model, built.model_version) == (approximate.model, approximate.model_version)
    assert built.model == "r2end-serve" and built.similarity == "cosine"
    assert built.version != approximate.version and built.items == approximate.items


def test_recommend_items_and_health_over_http(served):
    cfg, url, built, body, _ = served
    answer = requests.post(f"{url}/recommend", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["index_version"] == built.version and got["model"] == "r2end-serve" and len(got["items"]) == 10
    assert not {i["item_id"] for i in got["items"]} & set(body["history"])  # the history is excluded
    scores = [i["score"] for i in got["items"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    users = Layout(cfg.storage_path).read_users()
    assert got["history_text"] == users.column("test_history_text")[0].as_py()  # as training wrote it

    kept = requests.post(f"{url}/recommend", json={**body, "exclude_history": False, "k": 3}, timeout=30).json()
    by_text = requests.post(f"{url}/recommend", json={"history_text": got["history_text"], "k": 3}, timeout=30).json()
    assert len(kept["items"]) == 3 and [i["item_id"] for i in by_text["items"]] == [i["item_id"] for i in kept["items"]]

    item = requests.get(f"{url}/items/{got['items'][0]['item_id']}", timeout=30).json()
    assert item["title"] == got["items"][0]["title"] and item["metadata_text"]
    health = requests.get(f"{url}/healthz", timeout=30).json()
    batches, batched = health.pop("batches"), health.pop("batched_requests")
    assert 3 <= batches <= batched  # the three answers above, one after another (and health probes)
    assert health == {
        "status": "ok",
        "model": "r2end-serve",
        "model_version": got["model_version"],
        "index_version": built.version,
        "items": built.items,
    }
    assert "/recommend" in requests.get(f"{url}/openapi.json", timeout=30).json()["paths"]
    assert requests.get(f"{url}/docs", timeout=30).status_code == 200


def test_the_endpoint_is_haproxy_not_serves_python_proxy(served):
    """HAProxy ingress (ray_jobs.runtime.SERVE_ENV): one process of C between the client and the replica."""
    port = int(served[1].rsplit(":", 1)[1])
    listening = {
        c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    names = []
    for pid in listening:
        try:
            names.append(psutil.Process(pid).name())
        except psutil.NoSuchProcess:  # an HAProxy reload: the old process exits once the new one listens
            continue
    assert names and set(names) == {"haproxy"}


@pytest.mark.parametrize(
    "raw, status, says",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 422, "valid dictionary"),
        (json.dumps({"history": []}), 422, "history: List should have at least 1 item"),
        (json.dumps({"history": None, "history_text": "x"}), 422, "history: Input should be a valid list"),
        (json.dumps({"history": ["B000052WYN"], "k": "10"}), 422, "k: Input should be a valid integer"),
        (json.dumps({"history": ["B000052WYN"], "exclude_history": "yes"}), 422, "exclude_history: Input should be"),
        (json.dumps({"history": ["B000052WYN"], "timestamps": ["5"]}), 422, "timestamps.0: Input should be a valid"),
        (json.dumps({"history": ["B00 0052WYN"]}), 422, "history.0: String should match pattern"),
        (
            json.dumps({"history": ["NOT-AN-ITEM", "ALSO-NOT"]}),
            422,
            "unknown item ids in history: NOT-AN-ITEM, ALSO-NOT",
        ),
        (json.dumps({"history": "B000052WYN"}), 422, "history: Input should be a valid list"),
        (json.dumps({"k": 5}), 422, "exactly one of 'history'"),
        (json.dumps({"history": ["x"], "history_text": "y"}), 422, "exactly one of 'history'"),
        (json.dumps({"history_text": "  "}), 422, "'history_text' is empty"),
        (json.dumps({"history": ["x"], "timestamps": [1, 2]}), 422, "'timestamps' has 2 values for 1"),
        (
            json.dumps({"history": ["x"], "timestamps": [5], "at": 4}),
            422,
            "'at' (4) is before the latest history timestamp",
        ),
        (json.dumps({"history_text": "lip balm", "k": 0}), 422, "k: Input should be greater than or equal to 1"),
        (json.dumps({"history_text": "lip balm", "k": 101}), 422, "k=101 is out of range: 1 to 100"),
        (json.dumps({"history_text": "lip balm", "user": "u1"}), 422, "user: Extra inputs are not permitted"),
        (json.dumps({"history": ["x"] * 201}), 422, "history has 201 items; at most 200"),
        (json.dumps({"history_text": "x" * 70_000}), 413, "at most 65536"),
        (json.dumps({"history": ["x"], "timestamps": [99999999999999999]}), 422, "timestamps.0: Input should be less"),
        (json.dumps({"history": ["x"], "timestamps": [-99999999999999]}), 422, "timestamps.0: Input should be greater"),
        (json.dumps({"history": ["x"], "timestamps": [5], "at": 10**20}), 422, "at: Input should be less"),
        (b'{"history_text": "\\ud800 lip balm"}', 422, "history_text: not valid Unicode text: a lone surrogate"),
        (b'{"history": ["B000052WYN", "\\udfff"]}', 422, "history.1: not valid Unicode text"),
        (b'{"history_text": "lip balm", "\\ud800": 1}', 422, "unable to parse raw data as a unicode string"),
        (b"\xff\xfe not utf-8", 400, "malformed JSON"),
    ],
)
def test_bad_requests_get_a_4xx_that_names_the_problem(served, raw, status, says):
    url = served[1]
    answer = requests.post(f"{url}/recommend", data=raw, headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == status and says in answer.json()["error"], answer.text


def test_a_chunked_body_over_the_limit_is_stopped_while_it_is_read(served):
    """No Content-Length: the limit counts the bytes as they arrive (the 65,536-byte default)."""
    chunks = [b'{"history_text": "'] + [b"x" * 8192] * 16 + [b'"}']
    answer = requests.post(
        f"{served[1]}/recommend", data=iter(chunks), headers={"content-type": "application/json"}, timeout=30
    )
    assert answer.status_code == 413 and "at most 65536" in answer.json()["error"], answer.text
    small = [b'{"history_text": "', b"lip balm", b'", "k": 3}']
    answer = requests.post(
        f"{served[1]}/recommend", data=iter(small), headers={"content-type": "application/json"}, timeout=30
    )
    assert answer.status_code == 200 and len(answer.json()["items"]) == 3, answer.text


def test_a_fuzz_from_the_schema_and_the_catalogue_passes_every_response_check(served):
    """Schema-fitting and schema-breaking requests to every route, and requests of real item ids and texts
    (bounded: 150 cases or 90 s; the serving benchmark sends 10,000): no 5xx, every answer as documented,
    and most requests encoded and searched."""
    cfg, url = served[:2]
    schema = requests.get(f"{url}/openapi.json", timeout=30).json()
    fields = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    assert (fields["k"]["maximum"], fields["history"]["maxItems"]) == (cfg.serve.max_k, cfg.serve.max_history)
    items = Layout(cfg.storage_path).read_items()
    found = api_fuzz.fuzz(
        url, 150, 90, item_ids=items.column("item_id").to_pylist(), texts=items.column("title").drop_null().to_pylist()
    )
    assert found["server_errors"] == 0 and found["check_failures"] == {}, found["failures"]
    assert found["cases"] >= 100 and {"200", "404", "422"} <= set(found["statuses"]), found["statuses"]
    assert found["reach_rate"] >= 0.5, found


def test_unknown_item_is_a_404(served):
    answer = requests.get(f"{served[1]}/items/NOT-AN-ITEM", timeout=30)
    assert answer.status_code == 404 and "NOT-AN-ITEM" in answer.json()["error"]


def test_a_new_version_is_promoted_and_rolled_back_without_dropping_requests(served, tmp_path):
    cfg, url, built, body, _ = served
    before = requests.post(f"{url}/recommend", json=body, timeout=30).json()
    # A new item that is a twin of the best recommendation: same metadata, new id.
    twin = before["items"][0]["item_id"]
    items = pq.read_table(BEAUTY / "items.parquet")
    row = items.filter(pc.equal(items["item_id"], twin)).drop_columns(["item_id"])
    new_items = tmp_path / "new_items.parquet"
    pq.write_table(row.add_column(0, "item_id", pa.array(["R2END-NEW-1"])), new_items)

    # Light load while the new version is built (which serves nothing new), promoted and rolled out, then rolled
    # back: every request answered, each by the version that answered it.
    def build() -> str:
        return index.run(cfg.with_section("index", new_items=str(new_items), base_version="live")).version

    def move(how: argparse.Namespace) -> None:
        promote.main(cfg, how)
        deploy.start(cfg)  # the live version, as Serve deploys by default

    found = endpoint_trials.rollout(url, body, build, move)
    added = load_manifest(Layout(cfg.storage_path), found["to"])
    assert added.items == built.items + 1 and added.base_version == built.version
    assert found["requests"] and found["errors"] == 0, found
    assert found["versions_seen"] == [built.version, added.version, built.version], found["versions_seen"]
    assert "R2END-NEW-1" in found["first_items"][added.version]
    moves = aliases.read(Layout(cfg.storage_path)).moves
    assert [(m.action, m.version) for m in moves] == [
        ("promote", built.version),
        ("promote", added.version),
        ("rollback", built.version),
    ]
    assert requests.get(f"{url}/items/{twin}", timeout=30).status_code == 200


def test_the_text_tower_on_onnx_runtime_answers_as_torch_does(served):
    """serve.cpu_encoder=onnx-fp32 (the default): the replica exports the student and encodes on ONNX Runtime;
    the ranking is torch's: the same items with the same scores."""
    cfg, url, _, body, _ = served
    by_onnx = requests.post(f"{url}/recommend", json=body, timeout=30).json()
    version = by_onnx["index_version"]  # what an earlier test rolled out
    deploy.start(cfg, index_version=version, cpu_encoder="torch")
    by_torch = requests.post(f"{url}/recommend", json=body, timeout=60).json()
    assert by_torch["index_version"] == version
    # Compared item by item, not position by position: an earlier test added "R2END-NEW-1" with the title of
    # the top item, so the two tie exactly and either order is right.
    onnx_scores = {i["item_id"]: i["score"] for i in by_onnx["items"]}
    torch_scores = {i["item_id"]: i["score"] for i in by_torch["items"]}
    assert onnx_scores.keys() == torch_scores.keys()
    assert onnx_scores == pytest.approx(torch_scores, abs=1e-4)


def test_slow_clients_and_a_flood_are_refused_and_normal_traffic_goes_on(served):
    """Clients trickling their bodies get 408 at serve.body_timeout_s and cost normal traffic little; requests
    past serve.max_queued_requests get 503 with Retry-After."""
    cfg, url, _, body, _ = served
    version = requests.get(f"{url}/healthz", timeout=30).json()["index_version"]
    deploy.start(cfg, index_version=version, body_timeout_s=3, max_queued_requests=2)
    found = endpoint_trials.slow_clients(url, body, slow=16, requests_each=40)
    refused = sum(n for line, n in found["slow_answers"].items() if line.startswith("HTTP/1.1 408"))
    assert refused == 16 and found["errors"] == 0, found
    assert found["p99_ratio"] < 3, found
    flooded = endpoint_trials.flood(url, body, 300)
    assert set(flooded["statuses"]) == {"200", "503"} and flooded["retry_after"] == ["1"], flooded


def test_a_sequence_model_is_served_behind_the_same_endpoint(served, fused_student, tmp_path):
    """SASRec trained on the slice (the fused student's part), indexed and rolled out: it reads item ids, so text
    is refused."""
    cfg, url, _, body, _ = served
    built = index.run(cfg.with_section("index", model="sasrec-fused"))
    deploy.start(cfg, index_version=built.version)
    answer = requests.post(f"{url}/recommend", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["model"] == "sasrec-fused" and got["history_text"] is None and len(got["items"]) == body["k"]
    assert not {i["item_id"] for i in got["items"]} & set(body["history"])
    text = requests.post(f"{url}/recommend", json={"history_text": "1. Lip balm", "k": 3}, timeout=30)
    assert text.status_code == 422 and "reads item ids" in text.json()["error"]
    pq.write_table(pa.table({"item_id": ["R2END-NEW-2"], "title": ["Rose lip balm"]}), tmp_path / "new.parquet")
    with pytest.raises(ValueError, match="new items need a model trained with them"):
        index.run(cfg.with_section("index", new_items=str(tmp_path / "new.parquet")))


def test_the_fused_student_is_served_from_ids_and_the_text_it_writes(served, fused_student):
    """Our fused student (SASRec + the served R2END) rolled out: it reads the item ids and the history text
    the ingress writes by R2END's rule, as one inner product."""
    cfg, url, _, body, _ = served
    deploy.start(cfg, index_version=index.run(cfg.with_section("index", model="fusion")).version)
    answer = requests.post(f"{url}/recommend", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["model"] == "fusion" and len(got["items"]) == body["k"]
    assert got["history_text"] == Layout(cfg.storage_path).read_users().column("test_history_text")[0].as_py()
    text = requests.post(f"{url}/recommend", json={"history_text": got["history_text"], "k": 3}, timeout=30)
    assert text.status_code == 422 and "send 'history'" in text.json()["error"]


def test_the_deep_health_check_fails_when_nothing_is_loaded():
    replica = object.__new__(Recommender.func_or_class)
    with pytest.raises(RuntimeError, match="model and index not loaded"):
        asyncio.run(replica.check_health())
