"""The text encoder on ONNX Runtime against sentence-transformers, on real Beauty history texts: fp32
gives the same embeddings, int8 nearly the same; an export is made once and reused; an encoder it
cannot reproduce is refused."""

import os
import tempfile

import numpy as np
import onnx
import pytest
from sentence_transformers import SentenceTransformer, models

from r2end_core.text import encoders, onnx_encoder

MINILM = "bundled:all-minilm-l6-v2"


def test_fp32_matches_sentence_transformers_and_int8_comes_close(prepared_tables, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where exports are kept
    users, _ = prepared_tables
    texts = users.column("test_history_text").to_pylist()[:40]  # 1 to 8 items each: mixed lengths
    reference = encoders.encode(encoders.load_encoder(MINILM, max_seq_length=64, keep="end"), texts)
    assert len({len(t) for t in texts}) > 10 and max(len(t) for t in texts) > 64 * 4  # some are cut at 64 tokens

    fp32 = onnx_encoder.load(MINILM, MINILM, max_seq_length=64, keep="end", precision="fp32", threads=1)
    for batch_size in (1, 3, 17):
        got = fp32.encode(texts, batch_size=batch_size)
        assert got.shape == reference.shape and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
        assert (got * reference).sum(1).min() > 0.99999
    int8 = onnx_encoder.load(MINILM, MINILM, max_seq_length=64, keep="end", precision="int8", threads=1)
    cosines = (int8.encode(texts) * reference).sum(1)
    assert cosines.min() > 0.99 and not np.allclose(cosines, 1, atol=1e-6)  # close, and really quantized
    assert int8.encode([]).shape == (0, reference.shape[1])

    exported = sorted(str(p) for p in tmp_path.rglob("encoder.onnx"))
    assert len(exported) == 2  # one per precision
    graphs = {p: [node.op_type for node in onnx.load(p).graph.node] for p in exported}
    assert all(ops.count("Attention") == 6 for ops in graphs.values())  # every layer's attention fused
    int8_ops = next(ops for ops in graphs.values() if "DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops)
    assert int8_ops.count("MatMul") == 0 and int8_ops.count("Attention") == 6  # every MatMul int8, QKV fp32
    before = [os.stat(p).st_mtime_ns for p in exported]
    onnx_encoder.load(MINILM, MINILM, max_seq_length=64, keep="end", precision="int8", threads=1)
    assert [os.stat(p).st_mtime_ns for p in exported] == before  # reused, not exported again


def test_an_encoder_it_cannot_reproduce_is_refused(tmp_path):
    folder = encoders.resolve_encoder(MINILM)
    cls_pooled = SentenceTransformer(modules=[models.Transformer(folder), models.Pooling(384, pooling_mode="cls")])
    cls_pooled.save(str(tmp_path / "cls"))
    with pytest.raises(ValueError, match="pooling 'cls'.*serve.cpu_encoder=torch"):
        onnx_encoder.load(str(tmp_path / "cls"), "cls", max_seq_length=64, keep="end", precision="int8", threads=1)
    with pytest.raises(ValueError, match="precision 'int4'"):
        onnx_encoder.load(MINILM, MINILM, max_seq_length=64, keep="end", precision="int4", threads=1)


def test_texts_are_batched_with_others_of_nearly_their_length():
    assert [b.tolist() for b in onnx_encoder.length_batches([30, 100, 95, 12], 8)] == [[1, 2], [0], [3]]
    lengths = np.random.default_rng(0).integers(10, 257, 500).tolist()
    batches = onnx_encoder.length_batches(lengths, 8)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))  # every text once
    assert max(len(b) for b in batches) == 8 and len(batches) < 500 / 4  # 500 lengths are dense: most batches fill
    assert all(min(lengths[r] for r in b) >= 0.8 * max(lengths[r] for r in b) for b in batches)
    assert [len(b) for b in onnx_encoder.length_batches([5] * 5, 2)] == [2, 2, 1]
