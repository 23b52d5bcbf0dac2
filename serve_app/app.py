"""The Serve application: any trained model behind HTTP. History -> the model's user vector (batched) ->
faiss top-k over its item vectors. No LLM.

    serve run serve_app/serve_config.yaml                       # local, http://127.0.0.1:8000
    serve deploy serve_app/serve_config.yaml                    # a running cluster (absolute or URI storage_path)
    curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"history": ["B004Z40048"], "k": 5}'

Three deployments, all loading one index version (which pins the model and its version): ``Recommender``
(the FastAPI ingress: validation, and the history as the model reads it), ``UserModel`` (the model, with
``@serve.batch`` dynamic batching and autoscaling) and ``ItemIndex`` (faiss and the item map). A new
version rolls out by redeploying with another ``index_version`` (Serve's rolling update).
"""

from __future__ import annotations

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from r2end_core import models, storage
from r2end_core.config import ServeConfig
from r2end_core.data.histories import Histories
from r2end_core.data.items import Catalogue, UnknownItemsError
from r2end_core.layout import Layout
from r2end_core.serve import index
from serve_app.api import Health, Item, RecommendRequest, RecommendResponse

# A replica that dies mid-request (killed, node lost) is replaced by Serve; requests are pure reads,
# so the ingress sends them again, to another replica, this many times.
RETRIES_ON_REPLICA_LOSS = 3


class AppArgs(ServeConfig):
    """What ``build_app`` takes: the storage path, the ``serve`` config section, and the device."""

    storage_path: str
    use_gpu: bool = False


@serve.deployment(max_ongoing_requests=64, health_check_period_s=5)
class UserModel:
    """Histories -> user vectors, batched across concurrent requests."""

    def __init__(
        self,
        storage_path: str,
        version: str,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        threads: int,
        use_gpu: bool,
    ):
        torch.set_num_threads(threads)
        layout = Layout(storage_path)
        built = index.load_manifest(layout, version)
        self.model = models.load(layout, built.model, built.model_version, "cuda" if use_gpu else "cpu")
        self.batched = max_batch_size > 1
        self.user_vectors_batch.set_max_batch_size(max_batch_size)
        self.user_vectors_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # both set from the config in __init__
    async def user_vectors_batch(self, histories: list[Histories]) -> list[np.ndarray]:
        return list(self.model.user_vectors(Histories.concat(histories)))

    async def user_vector(self, history: Histories) -> tuple[np.ndarray, str]:
        """The vector, and the version of the model that made it (during a rollout, old or new)."""
        vector = await self.user_vectors_batch(history) if self.batched else self.model.user_vectors(history)[0]
        return vector, self.model.manifest.version

    def check_health(self) -> None:
        if getattr(self, "model", None) is None:
            raise RuntimeError("model not loaded")


@serve.deployment(max_ongoing_requests=128, health_check_period_s=5)
class ItemIndex:
    """The faiss index and its item map: top-k item ids, titles and scores for a query vector."""

    def __init__(self, storage_path: str, version: str):
        self.faiss_index, items, manifest = index.load(Layout(storage_path), version)
        self.catalogue, self.version = Catalogue(items), manifest.version

    def search(self, vector: np.ndarray, k: int, exclude_ids: list[str]) -> tuple[list[dict], str]:
        """The top-k items, and the index version that found them (during a rollout, old or new)."""
        exclude = {self.catalogue.row[i] for i in exclude_ids if i in self.catalogue.row}
        rows, scores = index.search(self.faiss_index, vector[None, :], k, [exclude])
        found = [
            {"item_id": self.catalogue.ids[r], "title": self.catalogue.titles[r], "score": float(s)}
            for r, s in zip(rows[0], scores[0])
            if r >= 0
        ]
        return found, self.version

    def check_health(self) -> None:
        if getattr(self, "faiss_index", None) is None or self.faiss_index.ntotal == 0:
            raise RuntimeError("item index not loaded or empty")


api = FastAPI(
    title="r2end", description="Recommendations from a trained model and a faiss item index; no LLM at request time."
)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """A 4xx that names the problem: 400 for a body that is not JSON, 422 for one that breaks the schema."""
    problems = []
    for e in err.errors():
        if e["type"] == "json_invalid":
            return JSONResponse(
                status_code=400, content={"error": f"malformed JSON: {e.get('ctx', {}).get('error', e['msg'])}"}
            )
        where = ".".join(str(p) for p in e["loc"] if p != "body")
        message = e["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return JSONResponse(status_code=422, content={"error": "; ".join(problems)})


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    """Every error body has one shape: {"error": "..."}."""
    return JSONResponse(status_code=err.status_code, content={"error": err.detail})


class BodyLimit:
    """413 for a body over ``max_bytes`` by its Content-Length (plain ASGI: no per-request task, unlike
    ``@app.middleware``)."""

    max_bytes = ServeConfig().max_body_bytes  # the ingress replica sets its configured limit

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = dict(scope["headers"]).get(b"content-length", b"0").decode()
            if not size.isdigit() or int(size) > self.max_bytes:
                response = JSONResponse(
                    status_code=413, content={"error": f"request body of {size} bytes; at most {self.max_bytes}"}
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


api.add_middleware(BodyLimit)


@serve.deployment(max_ongoing_requests=256, health_check_period_s=5)
@serve.ingress(api)
class Recommender:
    def __init__(
        self, user_model: DeploymentHandle, item_index: DeploymentHandle, storage_path: str, version: str, cfg: dict
    ):
        self.user_model, self.item_index = user_model, item_index
        self.cfg = ServeConfig(**cfg)
        BodyLimit.max_bytes = self.cfg.max_body_bytes
        layout = Layout(storage_path)
        self.index = index.load_manifest(layout, version)
        self.model = models.read_manifest(layout, self.index.model, self.index.model_version)
        self.catalogue = Catalogue(index.load_items(layout, version))

    async def _call(self, method, *args):
        for attempt in range(RETRIES_ON_REPLICA_LOSS + 1):
            try:
                return await method.remote(*args)
            except (RayActorError, ActorUnavailableError):
                if attempt == RETRIES_ON_REPLICA_LOSS:
                    raise HTTPException(503, "a serving replica was lost; retry") from None

    def history(self, body: RecommendRequest) -> Histories:
        """The request's history as the model reads it: text written by the model's history rule, or ids."""
        if body.history_text is not None:
            if self.model.reads != "text":
                raise HTTPException(422, f"model {self.model.name} ({self.model.kind}) reads item ids: send 'history'")
            return Histories([[]], texts=[body.history_text])
        try:
            rule = self.model.history if self.model.reads != "item_ids" else None
            return self.catalogue.history(body.history, body.timestamps, body.at, text_rule=rule)
        except UnknownItemsError as err:
            shown = ", ".join(err.ids[:10]) + (f" and {len(err.ids) - 10} more" if len(err.ids) > 10 else "")
            raise HTTPException(422, f"unknown item ids in history: {shown}") from None

    @api.post("/recommend", response_model=RecommendResponse)
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
        history = self.history(body)
        vector, model_version = await self._call(self.user_model.user_vector, history)
        exclude = body.history if body.exclude_history and body.history else []
        found, index_version = await self._call(self.item_index.search, vector, body.k, exclude)
        return RecommendResponse(
            items=found,
            history_text=history.texts[0] if history.texts else None,
            model=self.model.name,
            model_version=model_version,
            index_version=index_version,
        )

    @api.get("/items/{item_id}", response_model=Item)
    async def item(self, item_id: str) -> Item:
        """One indexed item: id, title, and the metadata text histories are written from."""
        catalogue = self.catalogue
        if item_id not in catalogue.row:
            raise HTTPException(404, f"unknown item id: {item_id}")
        row = catalogue.row[item_id]
        return Item(item_id=item_id, title=catalogue.titles[row], metadata_text=catalogue.metadata_text[item_id])

    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        """What this replica serves (its replicas' own health is Serve's check_health)."""
        return Health(
            status="ok",
            model=self.model.name,
            model_version=self.model.version,
            index_version=self.index.version,
            items=self.index.items,
        )


def build_app(args: dict) -> serve.Application:
    """The application for ``serve run`` / ``serve deploy`` (``args``: ``AppArgs`` fields) or ``serve.run``."""
    cfg = AppArgs(**args)
    root = storage.absolute(cfg.storage_path)
    version = index.resolve_version(
        Layout(root), cfg.index_version
    )  # "latest" pinned now: every replica loads the same
    user_model = UserModel.options(
        autoscaling_config={
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        },
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": 1 if cfg.use_gpu else 0},
    ).bind(root, version, cfg.max_batch_size, cfg.batch_wait_timeout_s, max(1, int(cfg.cpus_per_replica)), cfg.use_gpu)
    item_index = ItemIndex.options(ray_actor_options={"num_cpus": 0}).bind(root, version)
    return Recommender.options(ray_actor_options={"num_cpus": 0}).bind(
        user_model, item_index, root, version, cfg.model_dump(exclude={"storage_path", "use_gpu"})
    )
