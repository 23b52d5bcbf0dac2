"""The text-vector cache with the real MiniLM: each distinct text encoded once per encoder, in input order;
an encoding stopped midway keeps the parts it finished."""

from __future__ import annotations

import numpy as np
import pytest

from r2end_core.layout import Layout
from r2end_core.text.cache import cached_encode, encoder_id


def test_texts_are_encoded_once_and_read_back_in_order(tmp_path, minilm_encode):
    layout, asked = Layout(str(tmp_path)), []

    def encode(texts):
        asked.append(list(texts))
        return minilm_encode(texts)

    minilm = encoder_id("bundled:all-minilm-l6-v2", 128, "end")
    first = cached_encode(["lip balm", "soap", "lip balm"], layout, minilm, encode)
    assert asked == [["soap", "lip balm"]] and np.array_equal(first[0], first[2])  # shortest first
    again = cached_encode(["soap", "mascara", "lip balm"], layout, minilm, encode)
    assert asked[1:] == [["mascara"]]  # only the new text
    assert np.allclose(again[[0, 2]], first[[1, 0]]) and np.allclose(again[1], minilm_encode(["mascara"])[0])
    # Another encoder (here: another max length) has its own cache.
    cached_encode(["soap"], layout, encoder_id("bundled:all-minilm-l6-v2", 64, "end"), encode)
    assert asked[2:] == [["soap"]]


def test_an_encoding_stopped_midway_keeps_its_finished_parts(tmp_path, minilm_encode):
    layout, asked = Layout(str(tmp_path)), []
    minilm = encoder_id("bundled:all-minilm-l6-v2", 128, "end")
    texts = ["soap", "mascara", "lip balm", "nail polish remover"]

    def stopped_at_the_second_part(batch):
        if asked:
            raise KeyboardInterrupt  # what the time budget's SIGINT raises
        asked.append(list(batch))
        return minilm_encode(batch)

    with pytest.raises(KeyboardInterrupt):
        cached_encode(texts, layout, minilm, stopped_at_the_second_part, part_size=2)
    assert asked == [["soap", "mascara"]]

    def encode(batch):
        asked.append(list(batch))
        return minilm_encode(batch)

    vectors = cached_encode(texts, layout, minilm, encode, part_size=2)
    assert asked[1:] == [["lip balm", "nail polish remover"]]  # the first part came from the cache
    assert np.allclose(vectors, minilm_encode(texts), atol=1e-6)
