"""Beauty-shaped datasets at other sizes: the shape they keep, and the prepare stage reading them."""

from collections import Counter

import pyarrow as pa
import pytest

from bench import scaled_beauty
from tests.conftest import prepare_tables, write_dataset


@pytest.fixture(scope="module")
def beauty_slice(beauty_frames) -> tuple[pa.Table, pa.Table]:
    inter, items = beauty_frames
    return pa.Table.from_pandas(inter, preserve_index=False), pa.Table.from_pandas(items, preserve_index=False)


def lengths(interactions: pa.Table) -> Counter:
    return Counter(Counter(interactions["user_id"].to_pylist()).values())


def original(item_id: str) -> str:
    return item_id.split("~")[0]


def test_users_and_items_grow_and_keep_their_shape(beauty_slice, tmp_path):
    inter, items = beauty_slice
    big_inter, big_items = scaled_beauty.scaled(inter, items, users=2, item_clones=3, seed=1)
    assert big_items.num_rows == 3 * items.num_rows and len(set(big_items["item_id"].to_pylist())) == big_items.num_rows
    assert set(big_inter["item_id"].to_pylist()) <= set(big_items["item_id"].to_pylist())
    # every user copied twice, with its sequence length: the length distribution, doubled
    assert lengths(big_inter) == Counter({n: 2 * c for n, c in lengths(inter).items()})
    # each item's interactions spread over its clones: per original item, twice its count
    per_item = Counter(original(i) for i in big_inter["item_id"].to_pylist())
    assert per_item == Counter({i: 2 * c for i, c in Counter(inter["item_id"].to_pylist()).items()})
    top_item = per_item.most_common(1)[0][0]
    clones_used = {i for i in big_inter["item_id"].to_pylist() if original(i) == top_item}
    assert len(clones_used) == 3
    titles = dict(zip(big_items["item_id"].to_pylist(), big_items["title"].to_pylist()))
    first = items["item_id"][0].as_py()
    assert titles[scaled_beauty.clone_id(first, 2)] == f"{titles[first]} (edition 3)"
    # the prepare stage reads it as it reads Beauty: every user kept, and every item someone bought
    _, users, catalogue = prepare_tables(write_dataset(tmp_path / "big", big_inter, big_items))
    assert users.num_rows == 2 * len(set(inter["user_id"].to_pylist()))
    assert set(catalogue["item_id"].to_pylist()) == set(big_inter["item_id"].to_pylist())


def test_a_fraction_of_the_users_samples_them(beauty_slice):
    inter, items = beauty_slice
    half, same_items = scaled_beauty.scaled(inter, items, users=0.5, item_clones=1)
    users = set(inter["user_id"].to_pylist())
    assert len(set(half["user_id"].to_pylist())) == round(len(users) / 2) and same_items.equals(items)
    assert set(half["user_id"].to_pylist()) <= users and set(half["item_id"].to_pylist()) <= set(
        items["item_id"].to_pylist()
    )
    with pytest.raises(ValueError, match="item_clones"):
        scaled_beauty.scaled(inter, items, users=1, item_clones=0)
