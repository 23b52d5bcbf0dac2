"""What the encoder embeds (paper §3.2-3.3): the embed stage's logic, with the encoder passed in.

* Item i: ``M_i`` then the teacher's description ``D_i`` (metadata alone when the item has none), and
  ``M_i`` alone for every item (``ItemText.METADATA``: no LLM text).
* User u's distillation target, one per target kind:
  ``oracle`` / ``unguided``: ``M_target`` then the teacher's reasoning ``R_u``; ``metadata``:
  ``M_target`` alone, for every user (ablation 3; the no-LLM twin). The target item is the user's
  *training* target.
* User u's profile (``profile``): the teacher's profile text alone, for profile distillation.

The paper writes ``R_u ⊕ M_target``; the metadata goes first here so an encoder that cuts long
texts never cuts the target item away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from r2end_core import schemas, storage
from r2end_core.config import EmbedConfig, ItemText
from r2end_core.layout import Layout, require
from r2end_core.teacher import grounding
from r2end_core.teacher.folders import check_users_known
from r2end_core.teacher.kinds import KINDS
from r2end_core.teacher.outputs import succeeded


@dataclass(frozen=True)
class TargetKind:
    """A kind of distillation target: whose users it covers and what its text holds."""

    name: str
    answers: str | None  # the teacher-output kind it is built from (its users; its text); None: every user
    with_target: bool  # the text starts with M_target
    with_answer: bool  # the text holds the teacher's answer (its reasoning, or a profile)


TARGET_KINDS = {
    kind.name: kind
    for kind in (
        TargetKind("oracle", "oracle", True, True),
        TargetKind("unguided", "unguided", True, True),
        TargetKind("metadata", None, True, False),  # no teacher text: every user's target metadata
        TargetKind("profile", "profile", False, True),
    )
}


def join_texts(*parts: str | None) -> str:
    """``M ⊕ R``: the present parts, one per line.

    >>> join_texts("Lip Balm; brand: Burt's", None, "The user likes lip care.")
    "Lip Balm; brand: Burt's\\nThe user likes lip care."
    """
    return "\n".join(p for p in parts if p)


def item_texts(items: pa.Table, descriptions: pa.Table | None) -> tuple[list[str], np.ndarray]:
    """Per item (item_index order): ``M_i ⊕ D_i``, and whether it had a description."""
    described = {}
    if descriptions is not None:
        ok = succeeded(descriptions)
        described = dict(zip(ok.column("item_id").to_pylist(), ok.column("text").to_pylist()))
    ids = items.column("item_id").to_pylist()
    texts = [join_texts(m, described.get(i)) for i, m in zip(ids, items.column("metadata_text").to_pylist())]
    return texts, np.array([i in described for i in ids], dtype=bool)


def target_texts(
    target: TargetKind, users: pa.Table, items: pa.Table, answers: pa.Table | None
) -> tuple[list[str], list[str]]:
    """(user ids, target texts) for one target kind; ``answers``: the teacher's rows of ``target.answers``
    (unused where the kind needs none: every user then)."""
    if target.answers is None:
        return users.column("user_id").to_pylist(), [
            metadata_of(items)[t] for t in users.column("train_target").to_pylist()
        ]
    if answers is None:
        raise ValueError(
            f"target '{target.name}' needs the teacher's {target.answers} outputs, and there are none: run the "
            f"generate stage with kinds including '{target.answers}', or set embed.teacher_outputs"
        )
    ok, metadata = succeeded(answers), metadata_of(items)
    train_target = dict(zip(users.column("user_id").to_pylist(), users.column("train_target").to_pylist()))
    user_ids = ok.column("user_id").to_pylist()
    answers_text = ok.column("text").to_pylist() if target.with_answer else [None] * len(user_ids)
    return user_ids, [
        join_texts(metadata[train_target[u]] if target.with_target else None, answer)
        for u, answer in zip(user_ids, answers_text)
    ]


def metadata_of(items: pa.Table) -> dict[str, str]:
    return dict(zip(items.column("item_id").to_pylist(), items.column("metadata_text").to_pylist()))


def inputs_digest(ec: EmbedConfig, layout: Layout) -> str:
    """What the embeddings depend on: the encoder settings and the content of every file read."""
    if ec.teacher_outputs:
        folders = [f for s in ec.teacher_outputs for f in (s.folder, s.same_users_as) if f]
        teacher_files = [f for folder in folders for f in storage.list_files(folder)]
    else:
        teacher_files = [f for kind in KINDS.values() for f in storage.list_files(layout.generated(kind.folder))]
    require(layout.items, "prepare")  # what a storage path not prepared yet lacks, said as such
    files = [*storage.list_files(layout.users), layout.items, *teacher_files]
    inputs = {"encoder": ec.encoder, "max_seq_length": ec.max_seq_length, "files": [storage.sha256(f) for f in files]}
    if restricted := [str(s) for s in ec.teacher_outputs or [] if str(s) != s.folder]:
        inputs["restricted_sources"] = restricted  # only then: whole-folder embeddings keep their digest
    return storage.digest(inputs, length=16)


def embed(
    users: pa.Table, items: pa.Table, outputs: dict, source: str, encode: Callable[[list[str]], np.ndarray]
) -> dict:
    """The embed stage: ``{"items", "targets", "grounding"}`` tables (schemas.ITEM_EMBEDDINGS,
    TARGET_EMBEDDINGS, GROUNDING or None) and the counts its report needs.

    ``outputs``: ``folders.read_teacher_outputs``; ``source``: how to name them in errors; ``encode``:
    texts -> unit vectors. Unguided answers not yet grounded are grounded here (rejection sampling).
    """
    for kind in (k.name for k in KINDS.values() if k.about == "users"):
        if outputs[kind] is not None:
            check_users_known(outputs[kind], users, f"{source} ({kind})")
    encoded: dict[str, np.ndarray] = {}

    def encode_once(texts: list[str]) -> np.ndarray:
        """Each distinct text once: grounding re-reads item metadata the item embeddings already hold."""
        new = list(dict.fromkeys(t for t in texts if t not in encoded))
        if new:
            encoded.update(zip(new, encode(new)))
        return np.stack([encoded[t] for t in texts])

    texts, described = item_texts(items, outputs["item"])
    item_table = pa.table(
        {
            "item_id": items["item_id"],
            "item_index": items["item_index"],
            "has_description": described,
            "embedding": schemas.vector_column(encode_once(texts)),
            # each text once: an item without a description has the same vector in both columns
            "metadata_embedding": schemas.vector_column(encode_once(items.column("metadata_text").to_pylist())),
        },
        schema=schemas.ITEM_EMBEDDINGS,
    )
    accepted, grounded, grounded_here = {}, outputs["grounding"], None
    if outputs["unguided"] is not None:
        unguided = outputs["unguided"]
        todo = (
            unguided
            if grounded is None
            else unguided.filter(pc.invert(pc.is_in(unguided["user_id"], grounded["user_id"])))
        )
        if todo.num_rows:  # rejection sampling, computed once per answer
            new = grounding.ground_unguided(todo, users, items, encode_once)
            grounded = grounded_here = (
                new if grounded is None else pa.concat_tables([grounded, new.cast(grounded.schema)])
            )
        accepted = dict(zip(grounded.column("user_id").to_pylist(), grounded.column("accepted").to_pylist()))
    kinds, user_ids, texts, missing = [], [], [], []
    for target in TARGET_KINDS.values():
        answers = outputs[target.answers] if target.answers else None
        if target.answers and answers is None:
            missing.append(target.name)
            continue
        ids, target_text = target_texts(target, users, items, answers)
        kinds += [target.name] * len(ids)
        user_ids += ids
        texts += target_text
    target_table = pa.table(
        {
            "user_id": user_ids,
            "target": kinds,
            # rejection sampling judged unguided answers: a target built from one says whether it was kept
            "accepted": [
                accepted.get(u) if TARGET_KINDS[k].answers == "unguided" else None for u, k in zip(user_ids, kinds)
            ],
            "embedding": schemas.vector_column(encode_once(texts)),
        },
        schema=schemas.TARGET_EMBEDDINGS,
    )
    return {
        "items": item_table,
        "targets": target_table,
        "grounding": grounded_here,  # None: nothing grounded here
        "counts": {
            "items": items.num_rows,
            "items_with_description": int(described.sum()),
            "items_metadata_only": int((~described).sum()),
            "targets": {k: kinds.count(k) for k in TARGET_KINDS if k not in missing},
            "targets_missing": missing,
            "teacher_rows_without_text": {
                kind: outputs[kind].num_rows - succeeded(outputs[kind]).num_rows
                for kind in KINDS
                if outputs[kind] is not None
            },
            "teacher_rows_outside_same_users": outputs["outside_same_users"],
            "unguided_accepted": int(sum(bool(v) for v in accepted.values())),
        },
    }


def read_item_embeddings(layout: Layout, items: pa.Table, item_text: ItemText = ItemText.DESCRIBED) -> pa.Table:
    """The embed stage's item embeddings (schemas.ITEM_EMBEDDINGS) in item_index order, checked against
    the prepared items; ``embedding`` holds what ``item_text`` asks for (``metadata``: ``M_i`` alone)."""
    path = layout.embeddings("items.parquet")
    require(path, "embed")
    table = storage.read_table(path).sort_by("item_index")
    if table.num_rows != items.num_rows or not pc.all(pc.equal(table["item_id"], items["item_id"])).as_py():
        raise ValueError(f"{path} does not match the prepared items: run the embed stage again after prepare")
    if item_text == ItemText.METADATA:
        if "metadata_embedding" not in table.column_names:
            raise ValueError(f"{path} has no metadata_embedding column (an older embed stage): run embed again")
        described = table.column_names.index("embedding")
        table = table.set_column(described, "embedding", table["metadata_embedding"])
    return table
