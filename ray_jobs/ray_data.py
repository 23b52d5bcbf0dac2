"""Batch text encoding on Ray Data: a pool of sentence-transformers actors, results in input order."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import ray
import torch

from r2end_core.config import EmbedConfig, Resources
from r2end_core.data.histories import Histories
from r2end_core.layout import Layout
from r2end_core.models.base import Recommender, model_path
from r2end_core.text import encoders, onnx_encoder
from r2end_core.text.cache import cached_encode, encoder_id


def load_text_encoder(
    source: str, max_seq_length: int, keep: str, threads: int, device: str, onnx: tuple[str, str] | None
) -> Callable[[list[str]], np.ndarray]:
    """texts -> unit vectors, by the encoder at ``source`` on torch or (``onnx``) ONNX Runtime."""
    if onnx:  # (what names the weights, precision)
        model = onnx_encoder.load(source, onnx[0], max_seq_length, keep, onnx[1], threads)
        return lambda texts: model.encode(texts, batch_size=ONNX_BATCH)
    model = encoders.load_encoder(source, device, max_seq_length, keep)
    return lambda texts: encoders.encode(model, texts)


class _Encoder:
    def __init__(self, threads: int, **encoder):
        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in actors
        self.encode = load_text_encoder(threads=threads, **encoder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"position": batch["position"], "embedding": self.encode(list(batch["text"]))}


ONNX_BATCH = 32  # texts per ONNX Runtime call: bulk encoding is not latency-bound as serving is


def encode_texts(
    texts: list[str],
    source: str,
    ec: EmbedConfig,
    resources: Resources,
    keep: str = "start",
    onnx: tuple[str, str] | None = None,
) -> np.ndarray:
    """``[len(texts), dim]`` unit-length float32 embeddings of ``texts`` by the encoder at ``source``.

    ``keep``: see ``encoders.load_encoder`` ("end" for history texts); ``onnx``: (what names its weights, the
    precision) to run it on ONNX Runtime (CPU), None for torch.
    """
    if not texts:
        raise ValueError("encode_texts got no texts")
    if len(texts) < ec.ray_data_min_texts:  # an actor pool's start would cost more than the encoding
        return load_text_encoder(source, ec.max_seq_length, keep, torch.get_num_threads(), "cpu", onnx)(texts)
    # Similar lengths in one batch pad less: feed the texts sorted by length, restore order after.
    order = np.argsort([len(t) for t in texts], kind="stable")
    dataset = ray.data.from_items([{"position": int(i), "text": texts[i]} for i in order])
    encoded = dataset.map_batches(
        _Encoder,
        fn_constructor_kwargs={
            "source": source,
            "max_seq_length": ec.max_seq_length,
            "keep": keep,
            "threads": resources.cpus_per_worker,
            "device": "cuda" if resources.use_gpu else "cpu",
            "onnx": onnx,
        },
        compute=ray.data.ActorPoolStrategy(size=ec.actors),
        batch_size=ec.batch_size * 4,
        num_cpus=resources.cpus_per_worker,
        num_gpus=1 if resources.use_gpu else 0,
    )
    positions, vectors = [], []
    for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
        positions.append(batch["position"])
        vectors.append(batch["embedding"])
    out = np.empty((len(texts), vectors[0].shape[1]), dtype=np.float32)
    out[np.concatenate(positions)] = np.concatenate(vectors)
    return out


def history_text_encoder(
    layout: Layout, source: str, weights: str, ec: EmbedConfig, resources: Resources
) -> Callable[[list[str]], np.ndarray]:
    """History texts -> the text encoder's embeddings (``keep="end"``), encoded on Ray Data by
    ``ec.cpu_history_encoder`` (torch on GPU workers), each text once (a cache per encoder and backend, named
    by ``weights``)."""
    backend = "torch" if resources.use_gpu else ec.cpu_history_encoder
    cache = encoder_id(weights, ec.max_seq_length, "end", backend)
    onnx = (weights, backend.removeprefix("onnx-")) if backend != "torch" else None

    def encode(texts: list[str]) -> np.ndarray:
        return encode_texts(texts, source, ec, resources, keep="end", onnx=onnx)

    return lambda texts: cached_encode(texts, layout, cache, encode)


def history_embedder(
    layout: Layout, source: str, weights: str, ec: EmbedConfig, resources: Resources
) -> Callable[[Histories], np.ndarray]:
    """Histories -> embeddings of their texts (``history_text_encoder``): a text model's fast ``embed_users``."""
    encode = history_text_encoder(layout, source, weights, ec, resources)
    return lambda histories: encode(histories.texts)


def with_bulk_encoding(model: Recommender, layout: Layout, ec: EmbedConfig, resources: Resources) -> Recommender:
    """``model``, its history texts encoded on Ray Data through the shared cache when it reads them with a
    text encoder (an R2END model); any other model as it is."""
    if "text" in model.manifest.reads and model.manifest.text_encoder:
        source = model_path(model.manifest.text_encoder, layout, model.manifest)
        weights = model.manifest.inputs["user_encoder"]
        model.embed_users = history_embedder(layout, source, weights, ec, resources)
    return model
