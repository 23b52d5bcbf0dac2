"""The item catalogue on real Beauty rows: buyer context, and request-time histories written as training wrote them."""

from __future__ import annotations

import pytest

from r2end_core.data.items import Catalogue, UnknownItemsError
from tests.conftest import prepare_tables as prepare


def test_buyer_context_counts_previous_items(beauty_dir):
    _, users, items = prepare(beauty_dir)
    expected: dict[str, dict[str, int]] = {}
    for seq in users["sequence"].to_pylist():
        train = seq[:-2]
        for before, item in zip(train, train[1:]):
            expected.setdefault(item, {}).setdefault(before, 0)
            expected[item][before] += 1
    for row in items.to_pylist():
        counts = expected.get(row["item_id"], {})
        assert set(row["buyer_context_ids"]) <= set(counts)
        assert len(row["buyer_context_ids"]) == min(10, len(counts))
        got = [counts[i] for i in row["buyer_context_ids"]]
        assert got == sorted(got, reverse=True)


def test_catalogue_writes_histories_as_training_does(prepared_tables):
    users, items = prepared_tables
    catalogue = Catalogue(items)
    user = users.slice(0, 1).to_pylist()[0]
    n = len(user["sequence"])
    # The test-time history as serving receives it (every earlier item and its time), with the
    # prediction time of the test item, gives exactly the text the prepare stage wrote.
    text = catalogue.history_text(user["sequence"][: n - 1], user["timestamps"][: n - 1], at=user["timestamps"][n - 1])
    assert text == user["test_history_text"]
    with pytest.raises(UnknownItemsError) as err:
        catalogue.history_text(["NOT-AN-ITEM", user["sequence"][0]])
    assert err.value.ids == ["NOT-AN-ITEM"]
