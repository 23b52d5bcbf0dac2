"""A sentence-transformers text encoder on ONNX Runtime: the served text tower's CPU path.

The transformer is exported once with ``torch.onnx`` (dynamic batch and length) and its attention, layer
norms and GELUs fused by onnxruntime's transformer optimizer; for ``int8`` its matrix multiplications
are then quantized by onnxruntime's dynamic quantization (int8 weights per output channel, activations
quantized as they come). Tokenization, mean pooling and normalization run as sentence-transformers runs
them, so fp32 matches ``encoders.encode`` (cosine 1.0, the same ranking) and int8 comes within about
0.9992 of cosine, which can still move a ranking (``bench.serving_cpu`` measures HR@10 and NDCG@10 against
fp32 on the same validation users, beside the speed)::

    encoder = load("students/student/model", "<weights id>", 256, keep="end", precision="int8", threads=2)
    vectors = encoder.encode(["1. Rose lip balm; brand: ..."])     # [1, 384] float32, unit length

The exported files are kept per encoder (named as the text-vector cache names it: the weights' id, the
length, the kept end; and the precision) under the local temp dir, written atomically, so each node
exports once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import numpy as np

from r2end_core import storage
from r2end_core.text import encoders
from r2end_core.text.cache import encoder_id

PRECISIONS = ("fp32", "int8")
RECIPE = 3  # of export(): a node's exports made by an earlier recipe are not reused
INPUTS = ("input_ids", "attention_mask")


def check_supported(model) -> None:
    """Transformer -> mean pooling (-> normalize): what ``OnnxEncoder`` reproduces outside torch."""
    kinds = [type(m).__name__ for m in model]
    pooling = model[1].get_config_dict().get("pooling_mode") if len(kinds) > 1 else None
    if kinds[:2] != ["Transformer", "Pooling"] or pooling != "mean" or kinds[2:] not in ([], ["Normalize"]):
        raise ValueError(
            f"the ONNX encoder runs Transformer -> mean Pooling (-> Normalize); this encoder is {kinds} "
            f"with pooling {pooling!r}: serve it with serve.cpu_encoder=torch"
        )


def export(model, folder: str, precision: str) -> str:
    """``model``'s transformer as ``encoder.onnx`` in ``folder``, its attention, layer norms and GELUs fused by
    onnxruntime's transformer optimizer (and quantized to int8 for ``precision="int8"``); returns its path."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    class LastHidden(torch.nn.Module):
        def __init__(self, transformer):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask):
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    transformer = model[0].auto_model.eval()
    # The optimizer fuses attention only as the eager implementation writes it and as the TorchScript
    # exporter traces it (SDPA, or torch.export's graph, stay a dozen unfused ops per layer: 1.2x slower).
    transformer.set_attn_implementation("eager")
    # an example of two texts of different lengths: a dimension seen as 1 would be fixed at 1
    example = model.tokenizer(["a rose lip balm", "a"], padding=True, return_tensors="pt")
    traced = os.path.join(folder, "encoder.traced.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, on purpose (above)
        # the mask's traced Python branches and its arange indices are the same for every batch and length
        # (tests/text/test_onnx_encoder.py checks mixed lengths and batch sizes against torch)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing")
        torch.onnx.export(
            LastHidden(transformer),
            tuple(example[name] for name in INPUTS),
            traced,
            dynamo=False,
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={name: {0: "batch", 1: "length"} for name in (*INPUTS, "last_hidden_state")},
        )
    config = transformer.config
    fused = optimizer.optimize_model(
        traced, model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    )
    os.remove(traced)
    path = os.path.join(folder, "encoder.onnx")
    if precision == "fp32":
        fused.save_model_to_file(path)
        return path
    fp32 = os.path.join(folder, "encoder.fp32.onnx")
    fused.save_model_to_file(fp32)
    # Every MatMul to int8 weights per output channel. Not the fused Attention's QKV projection (QAttention):
    # on 8,000 Beauty validation users that lost 1.0% of NDCG@10 against fp32, the MatMuls alone none (the
    # feed-forward output, once kept fp32 for its long-tailed GELU inputs, buys 1.15x at no measured loss).
    quantize_dynamic(
        fp32,
        path,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # for the fused ops' outputs
    )
    os.remove(fp32)
    return path


class OnnxEncoder:
    """Texts -> unit-length embeddings through an exported transformer (see the module docstring)."""

    def __init__(self, path: str, tokenizer, max_seq_length: int, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # its default (a thread per core) oversubscribes a small replica
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-wait between batches
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.tokenizer, self.max_seq_length = tokenizer, max_seq_length
        self.dim = self.session.get_outputs()[0].shape[-1]  # the hidden size, fixed in the export

    def encode(self, texts: list[str], batch_size: int = 8) -> np.ndarray:
        """``[len(texts), dim]`` float32, unit length; texts are batched by length (``length_batches``)."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for rows in length_batches([len(ids) for ids in tokens["input_ids"]], batch_size):
            batch = self.tokenizer.pad({name: [tokens[name][r] for r in rows] for name in INPUTS}, return_tensors="np")
            feed = {name: batch[name].astype(np.int64) for name in INPUTS}
            hidden = self.session.run(None, feed)[0]
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out[rows] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return out


def length_batches(lengths: list[int], batch_size: int, fill: float = 0.8) -> list[np.ndarray]:
    """Rows in batches of at most ``batch_size``, longest first, each holding texts at least ``fill`` times as long
    as its longest, so padding stays small: [30, 100, 95, 12] -> [[1, 2], [0], [3]].

    A served batch holds a few dozen histories of 10 to 256 tokens: padded together, the short ones cost as much as
    the longest (bench.serving_cpu, R2END at concurrency 8: 25.3 req/s with any 8 sorted neighbours per batch,
    30.4 with this)."""
    order = np.argsort([-n for n in lengths], kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < min(start + batch_size, len(order)) and lengths[order[end]] >= fill * lengths[order[start]]:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def load(source: str, weights: str, max_seq_length: int, keep: str, precision: str, threads: int) -> OnnxEncoder:
    """The encoder at ``source`` (as ``encoders.load_encoder`` takes it) on ONNX Runtime, exported on first use.
    ``weights``: what names its weights (a student's weights id, a bundled name), as ``cache.encoder_id``."""
    if precision not in PRECISIONS:
        raise ValueError(f"ONNX precision {precision!r}: expected one of {PRECISIONS}")
    model = encoders.load_encoder(source, "cpu", max_seq_length, keep=keep)
    check_supported(model)
    name = storage.digest(
        {"encoder": encoder_id(weights, max_seq_length, keep), "precision": precision, "recipe": RECIPE}
    )
    folder = os.path.join(tempfile.gettempdir(), "r2end-onnx", name)
    if not os.path.exists(os.path.join(folder, "encoder.onnx")):
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        staging = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=".exporting-")
        try:
            export(model, staging, precision)
            try:
                os.replace(staging, folder)  # atomic: a concurrent replica never sees half a folder
            except OSError:
                pass  # another process finished first
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return OnnxEncoder(os.path.join(folder, "encoder.onnx"), model.tokenizer, model.max_seq_length, threads)
