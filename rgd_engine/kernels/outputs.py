"""The fused ops' output buffers, allocated the same way by every backend's wrapper (each wrapper also takes
`out=`, so a caller or a test can hand in its own, e.g. poisoned, buffers)."""
from __future__ import annotations

import torch


def topk_outputs(B: int, k: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lmhead_topk's outputs: logprob [B, k] f32, ids [B, k] i64, lse [B] f32."""
    return (torch.empty(B, k, device=device), torch.empty(B, k, device=device, dtype=torch.int64),
            torch.empty(B, device=device))


def selection_outputs(B: int, k: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """score_select's and gather_score_select's outputs: chosen [B] i64, scores [B, k] f32, rewards [B, k] f32."""
    return (torch.empty(B, device=device, dtype=torch.int64), torch.empty(B, k, device=device),
            torch.empty(B, k, device=device))
