"""Serve stage: start the application on the connected Ray cluster and ask it one real question.

python -m ray_jobs.serve --config configs/beauty-sample.yaml   # serve the live index, query once, keep serving
"""

from __future__ import annotations

import json
import time
import urllib.request

from ray import serve

from r2end_core.config import PipelineConfig
from r2end_core.layout import Layout
from r2end_core.serve.requests import test_time_request
from ray_jobs.runtime import log, quiet_console, run_stage
from serve_app.app import build_app

APP_NAME = "r2end"


def start(cfg: PipelineConfig, **overrides) -> str:
    """Deploy (or roll out a new version of) the app; returns its base URL once it is ready."""
    http = {"host": cfg.serve.host, "port": cfg.serve.port, "request_timeout_s": cfg.serve.request_timeout_s}
    serve.start(http_options=http, proxy_location=cfg.serve.proxy_location)
    args = {"storage_path": cfg.storage_path, "use_gpu": cfg.resources.use_gpu, **cfg.serve.model_dump(), **overrides}
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    quiet_console()  # Serve sets up its loggers as it starts
    return f"http://{cfg.serve.host}:{cfg.serve.port}"


def example_request(cfg: PipelineConfig, k: int = 5) -> dict:
    """The first prepared user's test-time request."""
    return test_time_request(Layout(cfg.storage_path).read_users().slice(0, 1).to_pylist()[0], k)


def post(url: str, body: dict, timeout: float = 30) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def run(cfg: PipelineConfig) -> dict:
    url = start(cfg)
    body = example_request(cfg)
    answer = post(f"{url}/recommend", body)
    log.info(
        f"\nServing {answer['model']} at {url} (model version {answer['model_version']}, index "
        f"{answer['index_version']}). A real query:\n  curl -s {url}/recommend -H 'content-type: application/json' "
        f"-d '{json.dumps(body)}'\n{json.dumps(answer, indent=2)}"
    )
    if cfg.serve.keep_serving:
        log.info(f"\nThe endpoint stays up (docs: {url}/docs); Ctrl-C stops it.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:  # a local cluster this process started ends with it, the endpoint too
            log.info("Ctrl-C: the endpoint stops.")
    return answer


if __name__ == "__main__":
    run_stage(__doc__, run, "serve")
