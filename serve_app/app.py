"""The Serve application: any trained model behind HTTP. History -> the model's user vector -> faiss top-k
over its item vectors, in one replica. No LLM.

    serve run serve_app/serve_config.yaml                       # local, http://127.0.0.1:8000
    serve deploy serve_app/serve_config.yaml                    # a running cluster (absolute or URI storage_path)
    curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"history": ["B004Z40048"], "k": 5}'

One deployment, ``Recommender``: the FastAPI ingress (validation, the history as the model reads it) with
the model, the faiss index and the item map of one index version (which pins the model and its version)
in each replica, so a request makes no hop between deployments. Concurrent requests are batched
(``r2end_core.serve.batching``): one batch at a time is encoded and searched on a worker thread, so the
replica's event loop keeps taking requests and the next batch forms meanwhile. Replicas autoscale on
ongoing requests; a new version rolls out by redeploying with another ``index_version`` (Serve's rolling
update).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from r2end_core import storage
from r2end_core.config import ServeConfig
from r2end_core.data.contract import ITEM_ID_PATTERN
from r2end_core.data.histories import Histories
from r2end_core.data.items import UnknownItemsError
from r2end_core.layout import Layout
from r2end_core.serve import index
from r2end_core.serve.batching import Batcher
from r2end_core.serve.served import ServedModel
from serve_app.api import Health, Item, RecommendRequest, RecommendResponse, error_responses, with_limits

log = logging.getLogger("ray.serve")


class AppArgs(ServeConfig):
    """What ``build_app`` takes: the storage path, the ``serve`` config section, and the device."""

    storage_path: str
    use_gpu: bool = False


def error(status: int, text: str) -> JSONResponse:
    """Every error body has one shape, ``{"error": "..."}``; text a client sent that UTF-8 cannot carry (a lone
    surrogate in a key name) is escaped, so the reply itself never fails."""
    return JSONResponse(status_code=status, content={"error": text.encode("utf-8", "backslashreplace").decode()})


api = FastAPI(
    title="r2end", description="Recommendations from a trained model and a faiss item index; no LLM at request time."
)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """A 4xx that names the problem: 400 for a body that is not JSON, 422 for one that breaks the schema."""
    problems = []
    for e in err.errors():
        if e["type"] == "json_invalid":
            return error(400, f"malformed JSON: {e.get('ctx', {}).get('error', e['msg'])}")
        where = ".".join(str(p) for p in e["loc"] if p != "body")
        message = e["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return error(422, "; ".join(problems))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    response = error(err.status_code, str(err.detail))
    response.headers.update(err.headers or {})  # a 503's Retry-After
    return response


@api.exception_handler(Exception)
async def _server_error(request: Request, err: Exception) -> JSONResponse:
    """Our fault, not the client's: logged here, and never the exception's text in the reply."""
    log.exception("request failed")
    return error(500, "internal error (logged on the server)")


class BodyLimit:
    """413 for a body over ``max_bytes``: at once by its Content-Length, and while it is read when it has none
    (chunked), so no body over the limit is ever held whole; 408 for a body not received whole within
    ``timeout_s`` of the request's start, so a client trickling bytes holds no replica. Plain ASGI: no
    per-request task."""

    max_bytes, timeout_s = ServeConfig().max_body_bytes, ServeConfig().body_timeout_s  # the replica sets its own

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, declared = self.max_bytes, Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await error(413, f"request body of {declared} bytes; at most {limit}")(scope, receive, send)
        seen, deadline = 0, asyncio.get_running_loop().time() + self.timeout_s

        async def limited_receive():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                raise StarletteHTTPException(408, f"request body not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # Starlette's HTTPException: FastAPI passes it to _http_error, a 413
                    raise StarletteHTTPException(413, f"request body over {limit} bytes; at most {limit}")
            return message

        await self.app(scope, limited_receive, send)


api.add_middleware(BodyLimit)


@serve.deployment(health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress(api)
class Recommender:
    def __init__(self, storage_path: str, version: str, cfg: dict, threads: int, use_gpu: bool):
        torch.set_num_threads(threads)
        self.cfg = ServeConfig(**cfg)
        BodyLimit.max_bytes, BodyLimit.timeout_s = self.cfg.max_body_bytes, self.cfg.body_timeout_s
        api.openapi_schema = None
        with_limits(api.openapi(), self.cfg)  # FastAPI serves the schema it cached, with this config's bounds
        device = "cuda" if use_gpu else "cpu"
        self.served = ServedModel(Layout(storage_path), version, self.cfg.cpu_encoder, threads, device)
        self.batcher = Batcher(self.search, self.cfg.max_batch_size, self.cfg.batch_wait_timeout_s)
        self.probe = self.served.history(self.served.catalogue.ids[:1])  # what check_health asks

    def search(self, requests: list[tuple[Histories, int, set[int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """A batch of (history, k, excluded rows) -> each one's top-k (rows, scores), on the batcher's thread."""
        histories, ks, excludes = zip(*requests)
        return self.served.search(list(histories), list(ks), list(excludes))

    def history(self, body: RecommendRequest) -> Histories:
        """The request's history as the model reads it: its text, or ids (with text written by the model's rule)."""
        model = self.served.manifest
        if body.history_text is not None:
            if model.reads != "text":
                raise HTTPException(422, f"model {model.name} ({model.kind}) reads item ids: send 'history'")
            return Histories([[]], texts=[body.history_text])
        try:
            return self.served.history(body.history, body.timestamps, body.at)
        except UnknownItemsError as err:
            shown = ", ".join(err.ids[:10]) + (f" and {len(err.ids) - 10} more" if len(err.ids) > 10 else "")
            raise HTTPException(422, f"unknown item ids in history: {shown}") from None

    @api.post("/recommend", response_model=RecommendResponse, responses=error_responses(400, 408, 413, 422, 503))
    async def recommend(self, body: RecommendRequest) -> RecommendResponse:
        """Top-k items for a history of item ids (or history text, for a model that reads text)."""
        cfg = self.cfg
        if not 1 <= body.k <= cfg.max_k:
            raise HTTPException(422, f"k={body.k} is out of range: 1 to {cfg.max_k}")
        if body.history is not None and len(body.history) > cfg.max_history:
            raise HTTPException(422, f"history has {len(body.history)} items; at most {cfg.max_history}")
        if body.history_text is not None and len(body.history_text) > cfg.max_text_chars:
            raise HTTPException(
                422, f"history_text has {len(body.history_text)} characters; at most {cfg.max_text_chars}"
            )
        if self.batcher.waiting >= cfg.max_queued_requests:  # shed load here: the queue's wait would pass timeouts
            retry = {"Retry-After": str(math.ceil(cfg.retry_after_s))}
            raise HTTPException(503, f"{self.batcher.waiting} requests are waiting here; retry later", retry)
        history = self.history(body)
        exclude = self.served.catalogue.rows(body.history) if body.exclude_history and body.history else set()
        rows, scores = await self.batcher.answer((history, body.k, exclude))
        return RecommendResponse(
            items=self.served.items(rows, scores),
            history_text=history.texts[0] if history.texts else None,
            model=self.served.manifest.name,
            model_version=self.served.manifest.version,
            index_version=self.served.index.version,
        )

    @api.get("/items/{item_id}", response_model=Item, responses=error_responses(404, 408, 413, 422, 503))
    async def item(self, item_id: Annotated[str, Path(pattern=ITEM_ID_PATTERN)]) -> Item:
        """One indexed item: id, title, and the metadata text histories are written from."""
        catalogue = self.served.catalogue
        if item_id not in catalogue.row:
            raise HTTPException(404, f"unknown item id: {item_id}")
        row = catalogue.row[item_id]
        return Item(item_id=item_id, title=catalogue.titles[row], metadata_text=catalogue.metadata_text[item_id])

    @api.get("/healthz", response_model=Health, responses=error_responses(408, 413, 503))
    async def healthz(self) -> Health:
        """What this replica serves, from its state (no encoding; Serve's check_health asks the model)."""
        served = self.served
        return Health(
            status="ok",
            model=served.manifest.name,
            model_version=served.manifest.version,
            index_version=served.index.version,
            items=served.faiss_index.ntotal,
            batches=self.batcher.batches,
            batched_requests=self.batcher.requests,
        )

    async def check_health(self) -> None:
        """Serve's deep check, every ``health_check_period_s``: the model encodes a one-item history and the
        index answers it; a replica that cannot is replaced."""
        if getattr(self, "served", None) is None:
            raise RuntimeError("model and index not loaded")
        rows, _ = await self.batcher.answer((self.probe, 1, set()))
        if rows[0] < 0:
            raise RuntimeError("the index answered nothing for the probe history")


def build_app(args: dict) -> serve.Application:
    """The application for ``serve run`` / ``serve deploy`` (``args``: ``AppArgs`` fields) or ``serve.run``."""
    cfg = AppArgs(**args)
    root = storage.absolute(cfg.storage_path)
    version = index.resolve_version(Layout(root), cfg.index_version)  # "latest" pinned now: every replica loads it
    return Recommender.options(
        # A replica takes in twice what it may queue and sheds what passes the limit itself, with 503 and
        # Retry-After: behind HAProxy's ingress, Serve's own queue limit is not consulted (HAProxy queues what
        # a replica does not take in). Requests waiting for a replica in Serve's proxy are bounded by Serve's.
        max_ongoing_requests=2 * cfg.max_queued_requests + cfg.max_batch_size,
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=cfg.retry_after_s),
        autoscaling_config={
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        },
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": 1 if cfg.use_gpu else 0},
    ).bind(
        root,
        version,
        cfg.model_dump(exclude={"storage_path", "use_gpu"}),
        max(1, int(cfg.cpus_per_replica)),
        cfg.use_gpu,
    )
