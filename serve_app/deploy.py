"""Start the application on the connected Ray cluster and ask it one real question.

    python -m serve_app.deploy --config configs/beauty-sample.yaml   # serve, query once, keep serving
"""

from __future__ import annotations

import json
import time
import urllib.request

from ray import serve

from r2end_core import artifacts
from r2end_core.config import PipelineConfig
from ray_jobs.runtime import run_stage
from serve_app.app import build_app

APP_NAME = "r2end"


def start(cfg: PipelineConfig, **overrides) -> str:
    """Deploy (or roll out a new version of) the app; returns its base URL once it is ready."""
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    args = {"storage_path": cfg.storage_path, **cfg.serve.model_dump(), **overrides}
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    return f"http://{cfg.serve.host}:{cfg.serve.port}"


def test_time_request(user: dict, k: int, recent_items: int = 8) -> dict:
    """A request body for a prepared user (``USERS_SCHEMA`` row) at their test item: the last
    ``recent_items`` purchases before it, with their timestamps and the test item's time as ``at``."""
    end = len(user["sequence"]) - 1
    start = max(0, end - recent_items)
    body = {"history": user["sequence"][start:end], "k": k}
    if user["timestamps"] is not None:
        body.update(timestamps=user["timestamps"][start:end], at=user["timestamps"][end])
    return body


def example_request(cfg: PipelineConfig, k: int = 5) -> dict:
    """The first prepared user's test-time request."""
    return test_time_request(artifacts.read_users(cfg.storage_path).slice(0, 1).to_pylist()[0], k)


def post(url: str, body: dict, timeout: float = 30) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def serve_and_query(cfg: PipelineConfig) -> dict:
    url = start(cfg)
    body = example_request(cfg)
    answer = post(f"{url}/recommend", body)
    print(f"\nServing at {url} (model {answer['model_version']}, index {answer['index_version']}). A real query:\n"
          f"  curl -s {url}/recommend -H 'content-type: application/json' -d '{json.dumps(body)}'")
    print(json.dumps(answer, indent=2))
    if cfg.serve.keep_serving:
        print(f"\nThe endpoint stays up (docs: {url}/docs); Ctrl-C stops it.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return answer


if __name__ == "__main__":
    run_stage(__doc__, serve_and_query)
