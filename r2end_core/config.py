"""Typed configs, one section per stage, loaded from layered YAML and overridable from the command line.

A config file holds a section per stage and may extend other files (paths relative to it); later
files and ``--set`` overrides win, key by key::

    # configs/beauty-sample.yaml
    extends: base.yaml
    storage_path: artifacts/beauty-sample
    prepare: {sample_users: 2000}
    sasrec: {max_epochs: 30, patience: 5, batch_size: 128}

``--set sasrec.max_epochs=3`` overrides one field. Unknown keys are errors, so a misspelt setting
never passes silently. Model arguments (``sasrec.model``, ``project.model``) are apart from how a
run trains and from the shared ``resources`` block: a checkpoint stores the model arguments only.
Every local path is made absolute here, once (Ray workers run in other folders).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from r2end_core import storage


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: Settings added after runs were recorded whose default keeps what those runs did: dumped only when set to
    #: another value, so the runs' names and the benchmarks' record keys (digests of the dump) stay valid.
    _dumped_when_set: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_unset_late_settings(self, handler):
        dumped = handler(self)
        for name in self._dumped_when_set:
            if name in dumped and getattr(self, name) == type(self).model_fields[name].default:
                del dumped[name]
        return dumped


class UserEncoder(StrEnum):
    """What turns a user's history into R2END's user embedding e_u."""

    STUDENT = "student"  # the distilled student on the history text (R2END)
    ENCODER = "encoder"  # the pretrained encoder Enc on it, undistilled (a control)
    ITEM_MEAN = "item_mean"  # the mean of the history items' embeddings (ablation 4)


class DistillTarget(StrEnum):
    """What the student learns to produce from a history text."""

    ORACLE = "oracle"  # Enc(target metadata + oracle reasoning): R2END
    UNGUIDED_ALL = "unguided_all"  # the unguided reasoning instead, every answer (ablation 1)
    UNGUIDED_GROUNDED = "unguided_grounded"  # only rejection-sampled users' answers (ablation 2)
    METADATA = "metadata"  # Enc(target metadata) alone (ablation 3; with users=all, the no-LLM twin)


class DistillUsers(StrEnum):
    """Whose targets the student learns from."""

    WITH_REASONING = "with_reasoning"  # the users the teacher wrote reasoning for (the paper's setting)
    # every user: the teacher's target where it wrote one, Enc(target metadata) alone elsewhere, so a student
    # and its no-LLM twin (target=metadata) learn from the same users and differ only by the LLM's text
    ALL = "all"


class ItemText(StrEnum):
    """What the encoder's item vectors embed."""

    DESCRIBED = "described"  # M_i then the teacher's description D_i, where the teacher wrote one
    METADATA = "metadata"  # M_i alone for every item: no LLM text (the no-LLM twins)


class SoftmaxKind(StrEnum):
    """How a SASRec-family model's training scores the catalogue at each predicted position."""

    FULL = "full"  # every item: exact, but [positions, items] floats per batch
    SAMPLED = "sampled"  # the batch's targets and uniform draws, logQ-corrected (gSASRec / eSASRec style)
    AUTO = "auto"  # sampled when the full scores of a batch would pass sasrec.full_softmax_max_mb


class IndexKind(StrEnum):
    AUTO = "auto"  # flat up to index.exact_max_items, hnsw past it
    FLAT = "flat"  # exact
    IVF = "ivf"  # inverted lists (nlist, nprobe)
    HNSW = "hnsw"  # a graph (hnsw_m, ef_search)


#: Index kind -> the settings of IndexConfig that shape it (they name the version).
INDEX_SETTINGS = {IndexKind.FLAT: (), IndexKind.IVF: ("nlist", "nprobe"), IndexKind.HNSW: ("hnsw_m", "ef_search")}

#: The kinds of teacher output (see r2end_core.teacher.kinds for what each one is).
TeacherOutputKind = Literal["oracle", "unguided", "profile", "item"]


class RayConfig(StrictModel):
    address: str | None = Field(
        None,
        description="Ray cluster to join. None: the RAY_ADDRESS environment variable if set, else start a local one.",
    )
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="Logical CPUs for a local cluster (ignored when joining one). None: the machine's cores.",
    )
    max_failures: int = Field(
        3,
        ge=0,
        description="Ray Train: times a run restarts from its last checkpoint after a worker (or its node) dies; "
        "0: the run fails with it.",
    )


class Resources(StrictModel):
    """What every Ray worker of the training and encoding stages gets (one block for the whole pipeline)."""

    cpus_per_worker: int = Field(2, ge=1, description="CPUs per Ray Train worker or encoder actor; its torch threads.")
    use_gpu: bool = Field(False, description="One GPU per worker (training, encoding and the served encoder).")


class HistoryRule(StrictModel):
    """Which earlier purchases make a user's history (paper, Appendix E.1). Serving reproduces it."""

    max_items: int = Field(8, ge=1, description="Most recent items in a history (paper: 8).")
    window_days: float = Field(
        60, gt=0, description="Window before the prediction time that history items come from (paper: 60)."
    )


class PrepareConfig(StrictModel):
    dataset_path: str = Field(
        description="Folder (local path or pyarrow URI) with interactions.parquet and items.parquet."
    )
    sample_users: int | None = Field(None, ge=1, description="Keep a random sample of this many users (None: all).")
    sample_seed: int = Field(22, description="Seed of the user sample.")
    min_interactions: int = Field(
        3, ge=3, description="Users need a training target, a validation and a test item, so at least 3."
    )
    short_users: Literal["drop", "error"] = Field(
        "drop", description="Users below min_interactions: drop them (counted in the report) or fail."
    )
    history: HistoryRule = HistoryRule()
    buyer_context_max_items: int = Field(
        10, ge=0, description="Most frequent preceding items kept as an item's buyer context."
    )
    interactions_per_part: int = Field(
        1_000_000,
        ge=1,
        description="Interactions one task reads and checks: the file is read in slices of whole row groups "
        "holding at least this many rows (users are then grouped into as many parts). Sets the parallelism, "
        "not the result.",
    )


class SasrecArgs(StrictModel):
    """SASRec's model arguments: what its checkpoint stores and what rebuilds it."""

    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    inner_size: int = Field(256, ge=1, description="Width of the feed-forward layer.")
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout on embeddings, attention and feed-forward.")
    max_len: int = Field(50, ge=2, description="Most recent items the model reads.")
    positions_from_end: bool = Field(
        False,
        description="Number positions back from the most recent item, as the original SASRec's left padding "
        "does (the latest item always has the same position); False: from the oldest item read.",
    )
    scale_item_embeddings: bool = Field(
        False, description="Multiply item embeddings by sqrt(hidden_size) before adding positions (original SASRec)."
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class SasrecConfig(StrictModel):
    run_name: str = Field("sasrec", pattern=r"^[A-Za-z0-9_.-]+$", description="The model's name under models/.")
    model: SasrecArgs = SasrecArgs()
    batch_size: int = Field(256, ge=1, description="Users per optimizer step (split across workers).")
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    length_buckets: bool = Field(
        True,
        description="Batch users of similar length (little padding, faster). The loss is each batch's mean over "
        "its predicted positions, so this weighs short users' positions more; False: random batches.",
    )
    position_weighted_loss: bool = Field(
        True,
        description="Divide every batch's summed loss by the epoch's mean positions per batch instead of its own "
        "count, so every predicted position weighs the same (as with random batches) while keeping length buckets. "
        "On all of Beauty: validation NDCG@10 0.0707 against 0.0615 unweighted (bench/results/sasrec_beauty.md).",
    )
    max_epochs: int = Field(200, ge=1)
    patience: int = Field(
        10,
        ge=1,
        description="Stop after this many validations without a better validation NDCG@10 (a student's "
        "distillation phase, such as profile.distill_epochs, does not count).",
    )
    eval_every: int = Field(1, ge=1, description="Validate every this many epochs.")
    seed: int = 22
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP when more than one).")
    mask_history: bool = Field(
        True, description="Exclude a user's earlier items from the ranking (the target itself never is)."
    )
    softmax: SoftmaxKind = Field(
        SoftmaxKind.AUTO,
        description="full: the cross-entropy over every item (exact); sampled: over the batch's targets and "
        "sampled_negatives uniform draws, each score corrected by how often it is expected among them (for "
        "catalogues whose full scores do not fit); auto: sampled past full_softmax_max_mb.",
    )
    sampled_negatives: int = Field(1024, ge=1, description="Uniform draws per batch with the sampled softmax.")
    full_softmax_max_mb: float = Field(
        4096,
        gt=0,
        description="With softmax auto: the most memory a worker's full-softmax batch may take (its scores, their "
        "log-probabilities and gradient: 3 x positions x items x 4 bytes); above it, sampled.",
    )

    item_updates: Literal["dense", "sparse"] = Field(
        "dense",
        description="How the item table learns with the sampled softmax: dense (Adam moves every row at every "
        "step: a step costs O(items)) or sparse (sparse gradients and lazy Adam, SparseAdam: only the rows a step "
        "reads move, so a step costs O(batch) whatever the catalogue). sparse needs the sampled softmax, no "
        "weight decay and no auxiliary loss.",
    )
    _dumped_when_set = frozenset({"softmax", "sampled_negatives", "full_softmax_max_mb", "item_updates"})

    @model_validator(mode="after")
    def _validates_and_feeds_every_worker(self):
        if self.max_epochs < self.eval_every:
            raise ValueError(
                f"max_epochs ({self.max_epochs}) < eval_every ({self.eval_every}): no validation would run"
            )
        if self.batch_size < self.num_workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) < num_workers ({self.num_workers}): a worker gets no users"
            )
        return self


class GenerateConfig(StrictModel):
    teacher: str = Field(
        "bundled:smollm2-135m-instruct",
        description="bundled:<name> (see r2end_core.teacher.model.BUNDLED), a local HF or GGUF folder, a storage "
        "URI, or a Hugging Face id.",
    )
    kinds: list[TeacherOutputKind] = Field(
        ["oracle", "unguided", "item"], description="What to generate: per-user reasoning kinds and item descriptions."
    )
    max_users: int | None = Field(None, ge=1, description="A fixed random sample of this many users (None: all).")
    max_items: int | None = Field(None, ge=1, description="A fixed random sample of this many items (None: all).")
    sample_seed: int = Field(22, description="Seed of the user and item samples.")
    max_words: int = Field(
        512, ge=1, description="Word limit stated in the prompt and applied to the output (paper: 512)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Generation cap in tokens. None: 2 tokens per allowed word, so the word limit binds."
    )
    batch_size: int = Field(16, ge=1, description="Rows per batch sent to a vLLM engine.")
    concurrency: int = Field(1, ge=1, description="vLLM engine replicas.")
    accelerator_type: str | None = Field(None, description="GPU type for the engines (e.g. L4); None on CPU.")
    tensor_parallel_size: int = Field(1, ge=1)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="float32 or bfloat16 on CPU (float16 fails there); auto on GPU."
    )
    max_model_len: int = Field(4096, ge=256)
    max_num_seqs: int = Field(32, ge=1, description="Sequences a vLLM engine batches at once.")
    block_size: int | None = Field(
        None,
        ge=16,
        multiple_of=16,
        description="KV-cache block in tokens, the unit vLLM's prefix cache reuses (None: vLLM's default, 128 on "
        "CPU). Every prompt of a kind opens with the same ~80 template tokens, which only blocks of 32 or 64 "
        "can cache (bench.generation_cpu).",
    )
    cpu_kv_cache_gib: int = Field(2, ge=1, description="VLLM_CPU_KVCACHE_SPACE for CPU engines.")
    cpu_threads_bind: str = Field(
        "auto",
        description="VLLM_CPU_OMP_THREADS_BIND for CPU engines: 'auto' keeps one core for vLLM's scheduler; "
        "'0-1' puts the model on both cores of a 2-core machine.",
    )
    repetition_penalty: float = Field(
        1.0,
        ge=1.0,
        description="Greedy decoding over logits with repeated tokens damped (1.0: plain greedy). "
        "Still deterministic; small teachers loop without it.",
    )
    write_every: int = Field(16, ge=1, description="Rows per committed output file (the unit a killed job can lose).")
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description="Stop taking new outputs after this many seconds, keep what is committed and report what is "
        "left (a re-run continues). Users' reasoning comes before item descriptions. None: no limit.",
    )
    extends: list[str] = Field(
        [],
        description="Committed teacher-output folders this run adds to (e.g. teacher_outputs/beauty-cpu): every key "
        "they hold (failures included, as a key lives in one folder) counts as done, so a bigger sample generates "
        "only its new keys, and generated/ then holds just those. Their rows must come from this run's teacher "
        "and prompt versions (else an error).",
    )

    @property
    def token_cap(self) -> int:
        return self.max_tokens or 2 * self.max_words

    @property
    def on_gpu(self) -> bool:
        return self.accelerator_type is not None

    @property
    def engine_kwargs(self) -> dict:
        """vLLM engine settings: CPU and GPU engines differ only here (and in ``cpu_env``)."""
        return {
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enforce_eager": not self.on_gpu,
            # on by default for these models; said here because block_size only matters with it
            "enable_prefix_caching": True,
            **({"block_size": self.block_size} if self.block_size else {}),
        }

    @property
    def cpu_env(self) -> dict[str, str]:
        """What vLLM's CPU backend reads from the environment."""
        return {
            "VLLM_CPU_OMP_THREADS_BIND": self.cpu_threads_bind,
            "VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kv_cache_gib),
        }

    @property
    def sampling(self) -> dict:
        """Greedy decoding, capped, with repeated tokens damped as configured."""
        return {"temperature": 0.0, "max_tokens": self.token_cap, "repetition_penalty": self.repetition_penalty}


class TeacherOutputsFolder(StrictModel):
    """One exported teacher-outputs folder, or part of it (a plain string in YAML means all of it)."""

    folder: str = Field(description="The folder, e.g. teacher_outputs/beauty-cpu.")
    kinds: list[TeacherOutputKind] | None = Field(
        None,
        description="Read only these kinds from it (None: all it holds), e.g. [item] to take item descriptions "
        "from one teacher and reasoning from another.",
    )
    same_users_as: str | None = Field(
        None,
        description="Another teacher-outputs folder: keep only the reasoning (oracle, unguided) of users whose "
        "answer of the same kind has text there too, e.g. to compare two teachers on the same users. Item "
        "descriptions are not filtered.",
    )

    sample_users: int | None = Field(
        None,
        ge=0,
        description="Keep the reasoning (oracle, unguided, profile) of this many users only: a fixed random "
        "sample of the folder's users (sample_seed), nested (a smaller sample lies inside a larger one), for a "
        "teacher-data curve. None: every user.",
    )
    sample_items: int | None = Field(
        None, ge=0, description="Keep the descriptions of this many items only, sampled as sample_users."
    )
    sample_seed: int = 22

    def __str__(self) -> str:
        """The folder, with what is read of it.

        >>> str(TeacherOutputsFolder(folder="to/qwen", same_users_as="to/smol"))
        'to/qwen [users of to/smol]'
        >>> str(TeacherOutputsFolder(folder="to/smol", sample_users=4000))
        'to/smol [4000 users, seed 22]'
        """
        sampled = [
            f"{n} {what}, seed {self.sample_seed}"
            for n, what in ((self.sample_users, "users"), (self.sample_items, "items"))
            if n is not None
        ]
        limits = [
            *filter(
                None, [self.kinds and "+".join(self.kinds), self.same_users_as and f"users of {self.same_users_as}"]
            ),
            *sampled,
        ]
        return self.folder + (f" [{'; '.join(limits)}]" if limits else "")


class EmbedConfig(StrictModel):
    encoder: str = Field(
        "bundled:all-minilm-l6-v2",
        description="The pretrained text encoder Enc: bundled:<name> (see r2end_core.text.encoders) or a "
        "sentence-transformers folder. It embeds targets and items, and initialises the student.",
    )
    teacher_outputs: list[TeacherOutputsFolder] | None = Field(
        None,
        description="Folders of teacher outputs (oracle.parquet, unguided.parquet, items.parquet, optional "
        "unguided_grounding.parquet), e.g. teacher_outputs/beauty-cpu; one folder or several whose rows are "
        "joined (a key in two folders is an error); each a path or a TeacherOutputsFolder mapping. None: this "
        "storage path's generated/.",
    )
    max_seq_length: int = Field(256, ge=8, description="Tokens the encoder reads per text (longer texts are cut).")
    batch_size: int = Field(64, ge=1, description="Texts per encoder call.")
    actors: int = Field(1, ge=1, description="Ray Data encoder replicas.")
    ray_data_min_texts: int = Field(
        1000,
        ge=0,
        description="Fewer texts than this are encoded in the calling process, on CPU, not on Ray Data: starting "
        "an encoder actor (a process, its imports, the model) takes about 10 s, more than encoding a thousand "
        "texts. 0: always on Ray Data.",
    )
    cpu_history_encoder: Literal["torch", "onnx-fp32", "onnx-int8"] = Field(
        "torch",
        description="What runs a text model's encoder over history texts in bulk on CPU workers (training the "
        "projection, scoring, DLLM2Rec's teacher rankings): torch, or ONNX Runtime in fp32 (the same rankings, "
        "2.1x faster in bench.serving_cpu) or int8 (3.1x; vectors within about 0.999 cosine). GPU workers use "
        "torch. Each has its own cache of vectors.",
    )

    @field_validator("teacher_outputs", mode="before")
    @classmethod
    def _paths_are_whole_folders(cls, value):
        value = [value] if isinstance(value, str) else value
        return None if value is None else [{"folder": v} if isinstance(v, str) else v for v in value]


class DistillConfig(StrictModel):
    run_name: str = Field("student", pattern=r"^[A-Za-z0-9_.-]+$", description="The student's name under students/.")
    target: DistillTarget = Field(DistillTarget.ORACLE, description="What the student learns (see DistillTarget).")
    users: DistillUsers = Field(DistillUsers.WITH_REASONING, description="Whose targets (see DistillUsers).")
    holdout_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Users kept out of distillation to measure how close the student gets to unseen targets "
        "(the before/after distances).",
    )
    epochs: int = Field(1, ge=1, description="The most epochs; with patience, validation may stop it earlier.")
    patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many epochs without a lower held-out loss, and keep the epoch with the "
        "lowest (needs holdout_fraction > 0). None: train every epoch and keep the last.",
    )
    min_improvement: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="With patience: the relative fall of the held-out loss below the best before that counts as "
        "lower for stopping (0: any fall). The epoch with the lowest loss is kept either way.",
    )
    batch_size: int = Field(16, ge=1, description="Global batch (split across workers).")
    length_buckets: bool = Field(
        False,
        description="Batch histories of similar token length together (sorted within pools of 64 batches, the "
        "batches shuffled): less padding per step; every user is still seen once per epoch.",
    )
    learning_rate: float = Field(1e-5, gt=0)
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="bfloat16 or float32 (fp16 fails on CPU).")
    checkpoint_every: int = Field(50, ge=1, description="Optimizer steps between checkpoints (the unit a kill loses).")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DeepSpeed data parallel).")
    seed: int = 22

    @model_validator(mode="after")
    def _consistent(self):
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size ({self.batch_size}) does not split over num_workers ({self.num_workers})")
        if self.patience and not self.holdout_fraction:
            raise ValueError("patience needs held-out users to validate on: holdout_fraction is 0")
        if self.min_improvement and not self.patience:
            raise ValueError(f"min_improvement={self.min_improvement} is a stopping rule: it needs patience")
        return self


class R2endArgs(StrictModel):
    """R2END's model arguments: how users and items become vectors (ablations switch them)."""

    user_encoder: UserEncoder = Field(UserEncoder.STUDENT, description="See UserEncoder.")
    use_projection: bool = Field(
        True, description="Train the shared projection f; False ranks by cos(e_u, e_i) directly (ablation 5)."
    )
    dim: int = Field(512, ge=1, description="Output dimension of f.")
    item_text: ItemText = Field(ItemText.DESCRIBED, description="What the item vectors embed (see ItemText).")


class ProjectConfig(StrictModel):
    run_name: str = Field("r2end", pattern=r"^[A-Za-z0-9_.-]+$", description="The model's name under models/.")
    model: R2endArgs = R2endArgs()
    student_run: str = Field("student", description="distill.run_name of the student to use.")
    negatives: int = Field(99, ge=1, description="Sampled negative items per user.")
    temperature: float = Field(0.07, gt=0)
    reg_weight: float = Field(0.5, ge=0, description="lambda of the L2 term (0: none, ablation 6).")
    epochs: int = Field(10, ge=1, description="The epoch with the best validation NDCG@10 is kept.")
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    train_users: int | None = Field(
        None, ge=1, description="Users whose training target trains f: a fixed random sample (None: all)."
    )
    eval_users: int | None = Field(
        None, ge=1, description="Users scored on validation and test: the first ones of the same sample (None: all)."
    )
    sample_seed: int = 22
    mask_history: bool = Field(True, description="Exclude a user's earlier items from the ranking.")
    seed: int = 22


class Dllm2recConfig(StrictModel):
    """DLLM2Rec (RecSys 2024): the baseline SASRec (its ``sasrec`` settings) plus importance-aware ranking
    distillation from a teacher recommender's top-K and collaborative embedding distillation from r2end's
    item embeddings. The base loss is SASRec's full-softmax cross-entropy; selection on validation."""

    run_name: str = Field("dllm2rec", pattern=r"^[A-Za-z0-9_.-]+$", description="The model's name under models/.")
    teacher: str = Field("r2end", description="The teacher: a trained model's name under models/ (latest version).")
    top_k: int = Field(10, ge=1, description="Teacher's top-K items per training instance (K).")
    positions: Literal["last", "all"] = Field(
        "last",
        description="Training instances with a teacher ranking: each user's training target only, or every "
        "position the student predicts.",
    )
    ranking_weight: float = Field(
        0.5, ge=0, description="lambda_d: weight of the ranking distillation term (0: without it, an ablation)."
    )
    embedding_weight: float = Field(
        0.2, ge=0, description="Weight of the mapped item embeddings in the input embeddings (0: without, ablation)."
    )
    gamma_position: float = Field(0.3, ge=0, description="Weight of the teacher-rank term of each importance weight.")
    gamma_confidence: float = Field(
        0.5, ge=0, description="Weight of the teacher-confidence term (how close the teacher put the true target)."
    )
    gamma_consistency: float = Field(
        0.1, ge=0, description="Weight of the consistency term (the item is also in the student's own top-K)."
    )
    beta: float = Field(1.0, gt=0, description="Temperature of the position and confidence weights.")
    item_text: ItemText = Field(
        ItemText.DESCRIBED, description="What the distilled item embeddings embed (see ItemText)."
    )

    @model_validator(mode="after")
    def _distills_something(self):
        if self.ranking_weight == 0 and self.embedding_weight == 0:
            raise ValueError("ranking_weight and embedding_weight are both 0: that is plain SASRec (train_sasrec)")
        return self


class ProfileSource(StrEnum):
    """Where a user's profile embedding comes from (profile distillation)."""

    GENERATED = "generated"  # the teacher's profile of the user (generate kind "profile"), embedded by Enc
    ORACLE = "oracle"  # R2END's oracle distillation target: Enc(target metadata + the teacher's reasoning)
    STUDENT = "student"  # the distilled R2END student's embedding of the user's training history: every user


class ProfileConfig(StrictModel):
    """User-profile distillation (ECIR 2026): the baseline SASRec (its ``sasrec`` settings) whose pooled
    hidden states of one block learn a map of each user's profile embedding, then cross-entropy alone."""

    run_name: str = Field("profile", pattern=r"^[A-Za-z0-9_.-]+$", description="The model's name under models/.")
    source: ProfileSource = Field(ProfileSource.GENERATED, description="See ProfileSource.")
    student_run: str = Field("student", description="source student: distill.run_name of the student.")
    alpha: float = Field(0.4, gt=0, lt=1, description="Share of the distillation term in the loss (reference: 0.4).")
    layer: int = Field(1, ge=1, description="The block (1-based) whose mean-pooled outputs learn the profile.")
    distill_epochs: int = Field(
        40,
        ge=1,
        description="Epochs with the distillation term; cross-entropy alone after, and early stopping counts "
        "only the validations after them.",
    )


class FusionConfig(StrictModel):
    """Our student: trained models' scores summed, the weights chosen on validation (``models.fusion``)."""

    run_name: str = Field("fusion", pattern=r"^[A-Za-z0-9_.-]+$", description="The model's name under models/.")
    parts: list[str] = Field(
        ["sasrec", "r2end"],
        min_length=2,
        description="The trained models summed (names under models/, latest versions, one catalogue); the "
        "first's weight is 1.",
    )
    weight_grid: list[float] = Field(
        [0, 0.25, 0.5, 1, 2, 4, 6, 8, 10, 12, 16, 24],
        min_length=1,
        description="Weights tried for each other part, every combination scored by validation NDCG@10 (0 leaves "
        "a part out; an R2END cosine lies in [-1, 1], a SASRec logit spans tens).",
    )
    min_long_tail_ratio: float = Field(
        0.0,
        ge=0,
        description="A floor on the chosen weights' long-tail HR@10 on validation, as a multiple of the first "
        "part's alone (e.g. 1.5: keep 1.5x SASRec's on the items outside the 20% most bought); the best NDCG@10 "
        "above it is chosen; when none reaches it, the most long-tail HR@10 there is (logged). 0: no floor.",
    )

    @field_validator("weight_grid")
    @classmethod
    def non_negative(cls, grid: list[float]) -> list[float]:
        if any(w < 0 for w in grid):
            raise ValueError(f"weights must be >= 0 (a negative weight ranks a part's best items last): {grid}")
        return grid


class IndexConfig(StrictModel):
    model: str | None = Field(None, description="The model (its name under models/) the index serves. None: r2end's.")
    kind: IndexKind = Field(
        IndexKind.AUTO,
        description="faiss index by inner product: exact (flat), or approximate (ivf, hnsw), whose recall against "
        "exact search is measured and reported; auto: flat up to exact_max_items, hnsw past it.",
    )
    exact_max_items: int = Field(
        100_000,
        ge=1,
        description="auto: the largest catalogue searched exactly (flat reads every item vector per query: at 1M "
        "items of 384 floats, 1.5 GB).",
    )
    recall_target: float | None = Field(
        0.95,
        gt=0,
        le=1,
        description="Approximate kinds: double the search width (hnsw: efSearch from ef_search to at most "
        "max_ef_search; ivf: nprobe from nprobe to at most nlist) until recall@recall_k on the queries reaches "
        "this. None: search with the width as set.",
    )
    max_ef_search: int = Field(4096, ge=1, description="hnsw: the largest efSearch recall_target may raise it to.")
    nlist: int = Field(
        64,
        ge=1,
        description="ivf: number of clusters (at most a 39th of the items: faiss's fewest training points per "
        "cluster; it trains on at most 256 per cluster, so training costs the same past 256 x nlist items).",
    )
    nprobe: int = Field(8, ge=1, description="ivf: clusters searched per query.")
    hnsw_m: int = Field(32, ge=2, description="hnsw: neighbours per node.")
    ef_search: int = Field(64, ge=1, description="hnsw: candidates kept while searching.")
    recall_k: int = Field(10, ge=1, description="Recall@k of an approximate index against exact search.")
    recall_queries: int = Field(1000, ge=1, description="Validation users whose histories query the recall.")
    new_items: str | None = Field(
        None,
        description="Parquet of items to add without retraining: item_id and the catalogue's metadata columns "
        "(title, brand, categories, price, optional description). They go through the model's item encoder and "
        "join the index as a new version (text models only).",
    )
    base_version: str | None = Field(None, description="With new_items: the index version to extend. None: the latest.")


class ServeConfig(StrictModel):
    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds (0.0.0.0 exposes it).")
    port: int = Field(8000, ge=1, le=65535)
    index_version: str = Field(
        "live",
        description="Index version to serve (it pins the model version): an alias that ray_jobs.promote moves "
        "(live), a version, or latest (the one built last). Resolved when deployed: every replica loads the same.",
    )
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for.")
    max_history: int = Field(200, ge=1, description="Most history items a request may carry.")
    max_text_chars: int = Field(20_000, ge=1, description="Longest history text a request may carry.")
    max_body_bytes: int = Field(65_536, ge=256, description="Larger request bodies get 413.")
    body_timeout_s: float = Field(
        10, gt=0, description="A request body not received whole this long after the request began gets 408."
    )
    request_timeout_s: float = Field(
        30, gt=0, description="Serve's proxy answers a request still unanswered after this long with a timeout."
    )
    max_queued_requests: int = Field(
        256, ge=1, description="Requests waiting for a free replica, at most; more are refused with 503."
    )
    retry_after_s: float = Field(1, ge=0, description="The Retry-After header of a 503 for a full queue, seconds.")
    max_batch_size: int = Field(
        32, ge=1, description="Dynamic batching: most requests encoded and searched together (1 turns it off)."
    )
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        description="How long a batch waits to fill once the replica is free to compute it. 0: take what is "
        "queued (requests that came in during the previous batch), so a lone request never waits.",
    )
    min_replicas: int = Field(
        1, ge=0, description="Replicas (each holds the model and the index), at least (autoscaling)."
    )
    max_replicas: int = Field(2, ge=1, description="Replicas, at most (autoscaling).")
    target_ongoing_requests: float = Field(16, gt=0, description="Autoscaling target: ongoing requests per replica.")
    cpus_per_replica: float = Field(
        1, gt=0, description="CPUs reserved per replica; torch uses as many threads (at least 1)."
    )
    cpu_encoder: Literal["torch", "onnx-fp32", "onnx-int8"] = Field(
        "onnx-fp32",
        description="A text model's history encoder on CPU replicas: ONNX Runtime in fp32 (the same ranking as "
        "torch, faster; exported in seconds when a replica starts) or with int8 matrix multiplications, or torch "
        "(bench.serving_cpu measures their speed and ranking: int8 moves single ranks; the default keeps torch's). "
        "GPU replicas (resources.use_gpu) run torch on CUDA.",
    )
    keep_serving: bool = Field(
        True,
        description="The serve stage, alone or in the pipeline: after the first answered query, keep the endpoint "
        "up until Ctrl-C.",
    )
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode",
        description="Where Serve's HTTP proxies run: on every node (a load balancer may send to any), or on the "
        "head alone (nodes that share one address, as a one-machine multi-node cluster does, cannot all bind "
        "the port). Replicas run wherever they fit either way.",
    )


class PipelineConfig(StrictModel):
    storage_path: str = Field(
        description="Where every stage reads and writes artifacts: a local folder or a pyarrow URI "
        "(s3://bucket/prefix, gs://...)."
    )
    ray: RayConfig = RayConfig()
    resources: Resources = Resources()
    prepare: PrepareConfig
    sasrec: SasrecConfig = SasrecConfig()
    dllm2rec: Dllm2recConfig = Dllm2recConfig()
    profile: ProfileConfig = ProfileConfig()
    fusion: FusionConfig = FusionConfig()
    generate: GenerateConfig = GenerateConfig()
    embed: EmbedConfig = EmbedConfig()
    distill: DistillConfig = DistillConfig()
    project: ProjectConfig = ProjectConfig()
    index: IndexConfig = IndexConfig()
    serve: ServeConfig = ServeConfig()

    def with_section(self, section: str, **changes) -> PipelineConfig:
        """A copy with some fields of one section changed and checked (the config itself is left as it is);
        a nested block changes only the fields given.

        >>> cfg = PipelineConfig(storage_path="/s", prepare={"dataset_path": "/d"})
        >>> cfg.with_section("distill", run_name="x").distill.run_name, cfg.distill.run_name
        ('x', 'student')
        >>> changed = cfg.with_section("sasrec", model={"dropout": 0.2}).sasrec.model
        >>> changed.dropout, changed.hidden_size == cfg.sasrec.model.hidden_size
        (0.2, True)
        """
        copy = self.model_copy(deep=True)
        current = getattr(copy, section)
        setattr(copy, section, type(current).model_validate(_merge(current.model_dump(), changes)))
        return copy


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _set_dotted(tree: dict, dotted_key: str, raw_value: str) -> None:
    node = tree
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted_key}: '{part}' is not a section")
    # YAML parsing turns "3" into 3, "null" into None and "[1, 2]" into a list.
    node[leaf] = yaml.safe_load(raw_value)


def _merge(base: dict, overlay: dict) -> dict:
    """``overlay`` over ``base``, section by section (a mapping merges; anything else replaces)."""
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def _read_layers(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file with the files it ``extends`` under it."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: extends itself (through {' -> '.join(map(str, seen))})")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    parents = tree.pop("extends", [])
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = _merge(merged, _read_layers(path.parent / parent, (*seen, path)))
    return _merge(merged, tree)


def absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    """Every local path of the config made absolute (URIs stay as they are): Ray workers run elsewhere."""
    cfg.storage_path = storage.absolute(cfg.storage_path)
    cfg.prepare.dataset_path = storage.absolute(cfg.prepare.dataset_path)
    for source in cfg.embed.teacher_outputs or []:
        source.folder = storage.absolute(source.folder)
        source.same_users_as = source.same_users_as and storage.absolute(source.same_users_as)
    cfg.generate.extends = [storage.absolute(folder) for folder in cfg.generate.extends]
    cfg.index.new_items = cfg.index.new_items and storage.absolute(cfg.index.new_items)
    return cfg


def load_config(paths: str | Path | list[str | Path], overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline config from one or more YAML files (later ones win) and apply ``section.field=value``
    overrides; local paths come back absolute.

    >>> cfg = load_config("configs/beauty-sample.yaml", ["sasrec.max_epochs=3"])
    >>> cfg.sasrec.max_epochs, cfg.prepare.sample_users, cfg.storage_path.startswith("/")
    (3, 2000, True)
    """
    paths = [paths] if isinstance(paths, str | Path) else paths
    tree: dict = {}
    for path in paths:
        tree = _merge(tree, _read_layers(Path(path)))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like section.field=value")
        _set_dotted(tree, key.strip(), value)
    try:
        cfg = PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{', '.join(map(str, paths))}: {err}") from None
    return absolute_paths(cfg)
