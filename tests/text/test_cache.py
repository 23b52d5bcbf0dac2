"""The text-vector cache with the real MiniLM: each distinct text encoded once per encoder, in input order."""

from __future__ import annotations

import numpy as np

from r2end_core.layout import Layout
from r2end_core.text.cache import cached_encode, encoder_id


def test_texts_are_encoded_once_and_read_back_in_order(tmp_path, minilm_encode):
    layout, asked = Layout(str(tmp_path)), []

    def encode(texts):
        asked.append(list(texts))
        return minilm_encode(texts)

    minilm = encoder_id("bundled:all-minilm-l6-v2", 128, "end")
    first = cached_encode(["lip balm", "soap", "lip balm"], layout, minilm, encode)
    assert asked == [["lip balm", "soap"]] and np.array_equal(first[0], first[2])
    again = cached_encode(["soap", "mascara", "lip balm"], layout, minilm, encode)
    assert asked[1:] == [["mascara"]]  # only the new text
    assert np.allclose(again[[0, 2]], first[[1, 0]]) and np.allclose(again[1], minilm_encode(["mascara"])[0])
    # Another encoder (here: another max length) has its own cache.
    cached_encode(["soap"], layout, encoder_id("bundled:all-minilm-l6-v2", 64, "end"), encode)
    assert asked[2:] == [["soap"]]
