"""What the encoder embeds (paper §3.2-3.3), and the embedding tables' schemas.

* Item i: ``M_i`` then the teacher's description ``D_i`` (metadata alone when the item has none).
* User u's distillation target, one per target kind:
  ``oracle`` / ``unguided``: ``M_target`` then the teacher's reasoning ``R_u``; ``metadata``:
  ``M_target`` alone (ablation 3). The target item is the user's *training* target.

The paper writes ``R_u ⊕ M_target``; the metadata goes first here so an encoder that cuts long
texts never cuts the target item away.

Teacher outputs come from folders (``oracle.parquet``, ``unguided.parquet``, ``items.parquet``
as ``bench.teacher_outputs`` exports them, plus ``unguided_grounding.parquet``), joined, or from
a storage path's ``generated/`` (see ``read_teacher_outputs``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from r2end_core import artifacts, storage
from r2end_core.config import TeacherOutputsFolder
from r2end_core.generation import output_schema

TARGET_KINDS = ("oracle", "unguided", "metadata")

#: One row per catalogue item, in item_index order.
ITEM_EMBEDDING_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_index", pa.int32(), nullable=False),
        pa.field("has_description", pa.bool_(), nullable=False),  # False: metadata alone was embedded
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),  # unit length
    ]
)

#: One row per (user, target kind). ``accepted``: rejection sampling kept this user (unguided only).
TARGET_EMBEDDING_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("accepted", pa.bool_()),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)

#: One row per (user, split): a user encoder's embedding of that split's history text.
USER_EMBEDDING_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)


def join_texts(*parts: str | None) -> str:
    """``M ⊕ R``: the present parts, one per line.

    >>> join_texts("Lip Balm; brand: Burt's", None, "The user likes lip care.")
    "Lip Balm; brand: Burt's\\nThe user likes lip care."
    """
    return "\n".join(p for p in parts if p)


def succeeded(outputs: pa.Table) -> pa.Table:
    """Teacher output rows with text (failed and empty generations are kept in storage, not used)."""
    return outputs.filter(pc.and_(outputs["error"].is_null(), outputs["text"].is_valid()))


#: teacher-outputs kind -> its file in an exported folder
FOLDER_FILES = {"oracle": "oracle.parquet", "unguided": "unguided.parquet", "item": "items.parquet",
                "grounding": "unguided_grounding.parquet"}


def read_teacher_outputs(sources: list[TeacherOutputsFolder | str] | None, root: str) -> dict:
    """``{"oracle", "unguided", "item", "grounding"}`` -> table, or None where there is none, and
    ``"outside_same_users"``: kind -> rows left out by a source's ``same_users_as``.

    ``sources``: exported teacher-outputs folders (paths, or ``TeacherOutputsFolder`` to read some
    kinds or some users of one), whose rows are joined: a committed sample and the folders that
    extend it, or one teacher's reasoning and another's item descriptions. None reads
    ``<root>/generated/``. A key in two sources is an error naming both, as it would be ambiguous
    which answer to use.
    """
    if sources is None:
        found = {kind: artifacts.read_generated(root, kind) for kind in ("oracle", "unguided", "item")}
        grounding = artifacts.grounding_path(root)
        return {**found, "grounding": storage.read_table(grounding) if storage.exists(grounding) else None,
                "outside_same_users": {}}
    sources = [TeacherOutputsFolder(folder=s) if isinstance(s, str) else s for s in sources]
    for source in sources:  # a mistyped folder or kind would otherwise just leave its rows out
        held = {kind for kind, name in FOLDER_FILES.items() if storage.exists(storage.join(source.folder, name))}
        lacking = [k for k in source.kinds or [] if k not in held]
        if lacking or not held - {"grounding"}:
            raise ValueError(f"{source.folder}: no {' or '.join(lacking) + ' ' if lacking else ''}teacher outputs there "
                             f"(a folder holds {', '.join(FOLDER_FILES.values())} as bench.teacher_outputs exports them)")
    found, outside = {}, {}
    for kind, name in FOLDER_FILES.items():
        answers_kind = "unguided" if kind == "grounding" else kind  # grounding goes with its answers
        parts = []
        for source in sources:
            path = storage.join(source.folder, name)
            if (source.kinds is not None and answers_kind not in source.kinds) or not storage.exists(path):
                continue
            table = storage.read_table(path)
            table = table if kind == "grounding" else table.cast(output_schema(kind))
            if source.same_users_as and kind != "item":
                kept = table.filter(pc.is_in(table["user_id"], _users_with_text(source.same_users_as, answers_kind)))
                outside[kind] = outside.get(kind, 0) + table.num_rows - kept.num_rows
                table = kept
            parts.append((str(source), table))
        _check_no_shared_keys(parts, "item_id" if kind == "item" else "user_id", name)
        found[kind] = pa.concat_tables([table for _, table in parts]) if parts else None
    return {**found, "outside_same_users": outside}


def _users_with_text(folder: str, kind: str) -> pa.Array:
    path = storage.join(folder, FOLDER_FILES[kind])
    if not storage.exists(path):
        raise ValueError(f"{path} not found: same_users_as keeps the {kind} answers of the users that folder "
                         f"has {kind} answers for, and it has none")
    return succeeded(storage.read_table(path).cast(output_schema(kind)))["user_id"].combine_chunks()


def _check_no_shared_keys(parts: list[tuple[str, pa.Table]], key: str, name: str) -> None:
    seen: dict[str, str] = {}
    for source, table in parts:
        for k in table.column(key).to_pylist():
            if k in seen:
                raise ValueError(f"{name}: {key} {k!r} is in both {seen[k]} and {source}; "
                                 "teacher-output folders that are joined must hold different keys")
            seen[k] = source


def check_users_known(outputs: pa.Table, users: pa.Table, source: str) -> None:
    known = set(users.column("user_id").to_pylist())
    unknown = [u for u in outputs.column("user_id").to_pylist() if u not in known]
    if unknown:
        raise ValueError(
            f"{source}: outputs for {len(unknown)} users that are not in the prepared users, e.g. {unknown[:3]}; "
            "the teacher outputs and the prepared data come from different samples or datasets"
        )


def item_texts(items: pa.Table, descriptions: pa.Table | None) -> tuple[list[str], np.ndarray]:
    """Per item (item_index order): ``M_i ⊕ D_i``, and whether it had a description."""
    described = {}
    if descriptions is not None:
        ok = succeeded(descriptions)
        described = dict(zip(ok.column("item_id").to_pylist(), ok.column("text").to_pylist()))
    ids = items.column("item_id").to_pylist()
    texts = [join_texts(m, described.get(i)) for i, m in zip(ids, items.column("metadata_text").to_pylist())]
    return texts, np.array([i in described for i in ids], dtype=bool)


def target_texts(target: str, users: pa.Table, items: pa.Table, reasoning: pa.Table | None) -> tuple[list[str], list[str]]:
    """(user ids, target texts) for one target kind.

    ``reasoning``: the teacher's oracle or unguided rows (for ``metadata``, the oracle rows: the
    ablation changes the target, not the users).
    """
    if reasoning is None:
        need = "oracle" if target == "metadata" else target
        raise ValueError(f"target '{target}' needs the teacher's {need} outputs, and there are none: run the "
                         f"generate stage with kinds including '{need}', or set embed.teacher_outputs")
    ok = succeeded(reasoning)
    metadata = dict(zip(items.column("item_id").to_pylist(), items.column("metadata_text").to_pylist()))
    train_target = dict(zip(users.column("user_id").to_pylist(), users.column("train_target").to_pylist()))
    user_ids = ok.column("user_id").to_pylist()
    texts = ok.column("text").to_pylist()
    if target == "metadata":
        return user_ids, [metadata[train_target[u]] for u in user_ids]
    return user_ids, [join_texts(metadata[train_target[u]], r) for u, r in zip(user_ids, texts)]


def embedding_column(vectors: np.ndarray) -> pa.Array:
    return pa.array(list(np.asarray(vectors, dtype=np.float32)), type=pa.list_(pa.float32()))


def to_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float32> column as a ``[rows, dim]`` float32 matrix."""
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), -1).astype(np.float32)  # a writable copy (torch wants one)


def read_item_vectors(root: str, items: pa.Table) -> np.ndarray:
    """``[n_items, dim]`` item embeddings in ``item_index`` order, checked against the prepared items."""
    table = artifacts.read_embeddings(root, "items.parquet").sort_by("item_index")
    if table.num_rows != items.num_rows or not pc.all(pc.equal(table["item_id"], items["item_id"])).as_py():
        raise ValueError(f"{artifacts.embeddings_path(root, 'items.parquet')} does not match the prepared items: "
                         "run the embed stage again after prepare")
    return to_matrix(table["embedding"])
