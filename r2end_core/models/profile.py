"""User-profile distillation (Severin et al., ECIR 2026): a SASRec student whose pooled hidden states of one
layer are pulled towards a learned linear map of an embedding of the user's profile, during a first phase
of training; then cross-entropy alone. Serving runs the SASRec alone: no profile, no LLM.

    profiles, has = profile_matrix(users, embeddings)     # [users, dim], and who has one
    loss = ProfileDistillation(profiles, has, hidden_size, cfg)
    sasrec.train(users, items, sasrec_cfg, history, device, extras=sasrec.Extras(auxiliary=loss))

The loss of the reference is ``alpha * beta * L_distil + (1 - alpha) * L_rec``, beta bringing the
distillation term to the recommendation loss's magnitude. Under Adam a constant factor on the whole loss
changes nothing, so the student adds ``alpha / (1 - alpha) * beta * L_distil`` to the cross-entropy, with
beta the batch's cross-entropy over its distillation MSE (both detached). Users without a profile add
nothing: the MSE is over the batch's users with a profile, and the term is scaled by their share of the
batch, so each of them weighs what it would if every user had one (a source covering a tenth of the users
does not pull those users ten times harder).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from r2end_core import schemas
from r2end_core.config import ProfileConfig
from r2end_core.models.sasrec import AuxiliaryLoss, Batch, StepOutputs


def profile_matrix(users: pa.Table, embeddings: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``embeddings`` (``user_id``, ``embedding``) in the order of ``users``: ([users, dim], has_profile);
    rows of users without one are zero.

    >>> users = pa.table({"user_id": ["a", "b", "c"]})
    >>> vectors = pa.table({"user_id": ["c", "a"], "embedding": [[1.0, 0.0], [0.0, 1.0]]})
    >>> matrix, has = profile_matrix(users, vectors)
    >>> matrix.tolist(), has.tolist()
    ([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]], [True, False, True])
    """
    row = {user_id: r for r, user_id in enumerate(users.column("user_id").to_pylist())}
    ids = embeddings.column("user_id").to_pylist()
    if missing := [u for u in ids if u not in row]:
        raise ValueError(f"profiles of {len(missing)} users that are not in the users table, e.g. {missing[:3]}")
    if len(set(ids)) != len(ids):
        raise ValueError("more than one profile for a user")
    vectors = schemas.to_matrix(embeddings["embedding"])
    matrix = np.zeros((users.num_rows, vectors.shape[1]), dtype=np.float32)
    has = np.zeros(users.num_rows, dtype=bool)
    places = np.array([row[u] for u in ids], dtype=np.int64)
    matrix[places], has[places] = vectors, True
    return matrix, has


class ProfileDistillation(AuxiliaryLoss):
    """MSE between the mean-pooled outputs of block ``cfg.layer`` (1-based) and a learned map of each user's
    profile embedding, in the epochs up to ``cfg.distill_epochs`` (see the module docstring)."""

    name = "profile_distill"
    needs_layers = True

    def __init__(self, profiles: np.ndarray, has_profile: np.ndarray, hidden_size: int, cfg: ProfileConfig):
        super().__init__()
        self.cfg = cfg
        self.last_epoch = cfg.distill_epochs
        self.register_buffer("profiles", torch.from_numpy(profiles), persistent=False)
        self.register_buffer("has_profile", torch.from_numpy(has_profile), persistent=False)
        self.to_hidden = nn.Linear(profiles.shape[1], hidden_size)

    def forward(self, batch: Batch, outputs: StepOutputs, epoch: int) -> tuple[torch.Tensor, float]:
        if epoch > self.last_epoch:
            return torch.zeros((), device=outputs.hidden.device), 0.0
        if self.cfg.layer > len(outputs.layers):
            raise ValueError(f"profile.layer {self.cfg.layer}: the model has {len(outputs.layers)} blocks")
        states = outputs.layers[self.cfg.layer - 1]
        read = (batch.inputs > 0).to(states.device)[:, :, None]  # the items each row reads
        pooled = (states * read).sum(1) / read.sum(1).clamp(min=1)
        rows = torch.as_tensor(batch.rows, device=states.device)
        has = self.has_profile[rows]
        if not has.any():
            return torch.zeros((), device=states.device), 0.0
        mse = F.mse_loss(pooled[has], self.to_hidden(self.profiles[rows][has]))
        share = has.float().mean()
        scale = self.cfg.alpha / (1 - self.cfg.alpha) * outputs.cross_entropy / mse.detach().clamp(min=1e-8)
        return scale * share * mse, mse.item()
