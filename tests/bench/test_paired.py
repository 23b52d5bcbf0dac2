"""Paired comparisons of runs: users aligned by id, runs on other users refused."""

import pyarrow as pa
import pytest

from bench import paired


def ranks(users: list[str], test: list[int]) -> pa.Table:
    return pa.table(
        {"user_id": users * 2, "split": ["valid"] * len(users) + ["test"] * len(users), "rank": [0] * len(users) + test}
    )


def test_runs_are_paired_by_user_not_by_row_order():
    base = ranks(["u1", "u2", "u3"], [0, 50, 3])
    other = ranks(["u3", "u1", "u2"], [40, 0, 5])  # u2 gained a hit, u3 lost one
    d = paired.compare({"base": base, "other": other})["other"]
    assert d["test"]["users"] == 3 and d["test"]["only_a_hits"] == 1 and d["test"]["only_b_hits"] == 1
    assert d["test"]["hr@10"]["difference"] == 0 and d["valid"]["hr@10"] == {"difference": 0, "se": 0, "z": 0}
    assert "| other | test | 3 | +0.0000" in paired.table({"other": d}, "base")


def test_runs_on_other_users_are_refused():
    with pytest.raises(ValueError, match="other and base were not scored on the same valid users"):
        paired.compare({"base": ranks(["u1", "u2"], [0, 1]), "other": ranks(["u1", "u9"], [0, 1])})
