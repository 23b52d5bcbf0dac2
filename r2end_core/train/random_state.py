"""torch's random state (dropout masks, sampled negatives), kept in a checkpoint so that a resumed run
draws what the uninterrupted run would have drawn."""

from __future__ import annotations

import torch


def capture() -> dict:
    """The CPU generator's state and, where CUDA is in use, every GPU's.

    >>> sorted(capture())
    ['cpu', 'cuda']
    """
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def restore(state: dict | torch.Tensor) -> None:
    """Put back what ``capture`` returned (or a bare CPU state, as checkpoints written before held).

    >>> state = capture(); first = torch.rand(2); restore(state); torch.equal(torch.rand(2), first)
    True
    """
    if isinstance(state, torch.Tensor):
        state = {"cpu": state, "cuda": []}
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
