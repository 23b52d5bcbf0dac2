"""Histories on real Beauty rows: the window rule, where each split's history ends, and Histories batches."""

from __future__ import annotations

from r2end_core.config import HistoryRule
from r2end_core.data.histories import SECONDS_PER_DAY as DAY
from r2end_core.data.histories import Histories, select_history
from r2end_core.data.splits import Split
from tests.conftest import prepare_tables as prepare


def test_history_window_and_fallback():
    stamps = [0, 5 * DAY, 100 * DAY, 130 * DAY, 150 * DAY]
    assert select_history(stamps, 4) == [2, 3]  # 100 and 130 are within 60 days of 150
    assert select_history(stamps, 2) == [1]  # nothing within 60 days of day 100: latest only
    assert select_history(stamps, 0) == []
    many = list(range(0, 20 * DAY, DAY))
    assert select_history(many, 19, HistoryRule(max_items=8)) == list(range(11, 19))
    assert select_history(None, 5, HistoryRule(max_items=3)) == [2, 3, 4]


def test_history_ends_before_each_target(beauty_dir):
    _, users, _ = prepare(beauty_dir)
    for row in users.to_pylist():
        seq = row["sequence"]
        for split in Split:
            ids = row[f"{split}_history_ids"]
            allowed = seq[: len(seq) - split.offset]
            assert all(i in allowed for i in ids)
            assert ids == [] or ids[-1] == allowed[-1]  # the latest item is always shown


def test_a_split_s_histories_keep_what_the_prepared_histories_kept(beauty_dir):
    """Models read Histories; the rule picks from them the very items the prepare stage wrote as text."""
    _, users, _ = prepare(beauty_dir)
    for split in Split:
        histories = Histories.of_split(users, split)
        assert histories.recent_ids(HistoryRule()) == users.column(f"{split}_history_ids").to_pylist()
        assert histories.texts == users.column(f"{split}_history_text").to_pylist()
    test = Histories.of_split(users, Split.TEST)
    assert test.at[0] == users.column("timestamps")[0].as_py()[-1] and len(test.item_ids[0]) == len(test.timestamps[0])
