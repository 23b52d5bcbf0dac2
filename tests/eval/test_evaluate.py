"""Recording a model's metrics and ranks on real Beauty users: every stored user a block at a time gives what
scoring them all at once gives, and a split scored later joins the record."""

import pyarrow.compute as pc
import pytest

from r2end_core import models, storage
from r2end_core.data.splits import Split
from r2end_core.eval.evaluate import EvalSet, record, stored_sets
from r2end_core.layout import Layout
from tests.conftest import prepare_tables
from tests.models.test_fusion import sasrec_model


def ranks_of(layout: Layout, model, split: Split):
    table = storage.read_table(layout.model_version(model.manifest.name, model.manifest.version, "ranks.parquet"))
    return table.filter(pc.equal(table["split"], str(split))).sort_by("user_id")


def test_every_stored_user_a_block_at_a_time_is_every_user_at_once(tmp_path, beauty_dir):
    _, users, items = prepare_tables(beauty_dir)
    layout = Layout(str(tmp_path))
    for n, start in enumerate(range(0, users.num_rows, 110)):  # three files, as Ray Data writes them
        storage.write_table(users.slice(start, 110), storage.join(layout.users, f"part-{n}.parquet"))
    storage.write_table(items, layout.items)
    model = sasrec_model(items, "sasrec", seed=3)
    model.manifest = models.save(layout, model.manifest, model.write_files)

    fields = {"train_users": 300, "eval_users": 300, "wall_time_s": 0.0, "config": {}}
    at_once = record(layout, model, [EvalSet.build(users, items, Split.VALID)], **fields)
    whole = ranks_of(layout, model, Split.VALID)
    assert whole.num_rows == 300 and at_once.test is None

    blocks = record(layout, model, stored_sets(layout, items, [Split.VALID, Split.TEST], users=64), wall_time_s=1.5)
    assert ranks_of(layout, model, Split.VALID).equals(whole)
    assert blocks.valid == pytest.approx(at_once.valid, abs=1e-12) and blocks.valid["users"] == 300
    assert blocks.test["users"] == 300 and ranks_of(layout, model, Split.TEST).num_rows == 300

    # the test split scored again (on fewer users) replaces its own record only
    again = record(layout, model, [EvalSet.build(users.slice(0, 50), items, Split.TEST)])
    assert again.valid == blocks.valid and again.test["users"] == 50 and again.wall_time_s == 1.5
    assert ranks_of(layout, model, Split.VALID).equals(whole) and ranks_of(layout, model, Split.TEST).num_rows == 50
