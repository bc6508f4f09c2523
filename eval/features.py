"""Reward features of preference pairs: the frozen backbone's states for (chosen, rejected) responses.

The layer between Pref-LaMP pairs and the reward-model methods: `PairFeatures` ([n, d] final-norm states at
the last token of prompt + response, the input of sequence-level heads) and `Head` (one user's (w, b)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Head = tuple[torch.Tensor, float]  # (w [d] float32, b)


@dataclass(frozen=True)
class PairFeatures:
    chosen: torch.Tensor    # [n, d]
    rejected: torch.Tensor  # [n, d]

    def __post_init__(self):
        if self.chosen.shape != self.rejected.shape or self.chosen.ndim != 2 or self.chosen.shape[0] == 0:
            raise ValueError(f"PairFeatures needs two equal non-empty [n, d] tensors, got "
                             f"{tuple(self.chosen.shape)} and {tuple(self.rejected.shape)}")

    def diff(self) -> torch.Tensor:  # [n, d] float64
        return self.chosen.double() - self.rejected.double()


def features_by_user(pairs: list, chosen_h: torch.Tensor, rejected_h: torch.Tensor) -> dict[str, PairFeatures]:
    """Group per-pair features (row i belongs to pairs[i], each with a .user_id) by user. chosen_h, rejected_h: [P, d]."""
    if chosen_h.shape != rejected_h.shape or chosen_h.ndim != 2 or chosen_h.shape[0] != len(pairs):
        raise ValueError(f"features must both be [{len(pairs)}, d]; got {tuple(chosen_h.shape)} "
                         f"and {tuple(rejected_h.shape)}")
    rows: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        rows.setdefault(p.user_id, []).append(i)
    return {u: PairFeatures(chosen_h[idx], rejected_h[idx]) for u, idx in rows.items()}
