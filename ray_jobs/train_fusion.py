"""Our student on Ray Train: SASRec fitted to the residual of a trained text model's scores (R2END).

    ray job submit --working-dir . -- python -m ray_jobs.train_fusion --config configs/beauty-sample.yaml

The text model (``fusion.text_model``, frozen) gives a user vector for every position the SASRec predicts
(its history texts encoded on Ray Data through the shared cache) and for every user's validation history.
The SASRec trains with full cross-entropy on its own scores plus a learned weight times the text model's
(``r2end_core.models.fusion``). Writes ``models/<fusion.run_name>/<version>/``: one inner-product model
that reads item ids and the history text, served like any other.
"""

from __future__ import annotations

from r2end_core import models
from r2end_core.config import PipelineConfig
from r2end_core.data.histories import Histories
from r2end_core.data.items import Catalogue
from r2end_core.data.splits import Split
from r2end_core.layout import Layout
from r2end_core.models import fusion, instances
from r2end_core.summaries import TrainSummary
from ray_jobs import ray_data, sequential
from ray_jobs.runtime import run_stage


def run(cfg: PipelineConfig, score_test: bool = True) -> TrainSummary:
    layout, fc = Layout(cfg.storage_path), cfg.fusion
    users, items = layout.read_users(), layout.read_items()
    text = ray_data.with_bulk_encoding(models.load(layout, fc.text_model), layout, cfg.embed, cfg.resources)
    if text.manifest.kind != "r2end" or text.manifest.reads != "text":
        raise ValueError(
            f"fusion.text_model {fc.text_model} is a {text.manifest.kind} model that reads "
            f"{text.manifest.reads}: the fused model needs a text model (R2END)"
        )
    rows, positions = instances.training_instances(users, "all", cfg.sasrec.model.max_len)
    trained_on = instances.instance_histories(users, Catalogue(items), rows, positions, text.manifest.history)
    scored = [Histories.of_split(users, split) for split in (Split.VALID, Split.TEST)]
    text = fusion.known_texts(text, trained_on.texts + [t for h in scored for t in h.texts])
    user_ids = users.column("user_id").to_pylist()
    index = instances.InstanceIndex(users, [user_ids[r] for r in rows.tolist()], positions)
    prior = fusion.TextPrior(index, text.user_vectors(trained_on), text.item_vectors(), fc.initial_weight)
    inputs = {"text_model": f"{fc.text_model}/{text.manifest.version}"}
    sc = cfg.sasrec.model_copy(update={"run_name": fc.run_name})
    return sequential.fit(cfg, sc, fusion.FusionExtras(prior=prior, text_model=text), inputs, score_test)


if __name__ == "__main__":
    run_stage(__doc__, run, "train_fusion")
