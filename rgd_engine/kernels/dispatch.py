"""Backend dispatch for the hot ops.

`RGD_BACKEND=auto|torch|cpp|triton|cuda` (or a `backend=` keyword) picks the implementation. The choice
for `auto` is made once per (process, device type) and logged once. An explicitly requested backend that
cannot run raises; `auto` never silently changes numbers: every backend is parity-tested against torch.

A backend is a module exposing `lmhead_topk(hidden, weight, k)`, `score_select(cand_hidden, bank_w,
bank_b, slot, logprob, weight, mode, tau, rand)`, `gather_score_select(query, emb, cand_ids, offset,
logprob, weight, ratio, mode, tau, rand)` and `availability(device_type) -> str | None`
(None = usable, else the reason it is not).
"""
from __future__ import annotations

import importlib
import logging
import os
from functools import lru_cache

import torch

from . import reference

log = logging.getLogger("rgd_engine.kernels")

BACKENDS = ("torch", "cpp", "triton", "cuda")
_MODULES = {
    "torch": "rgd_engine.kernels.torch_backend",
    "cpp": "rgd_engine.kernels.cpp",
    "triton": "rgd_engine.kernels.triton",
    "cuda": "rgd_engine.kernels.cuda",
}
# auto preference per device type, fastest first
_AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")}


class BackendUnavailable(RuntimeError):
    pass


def _load(name: str):
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as e:  # a backend whose module or extension is not built
        raise BackendUnavailable(f"backend {name!r} cannot be imported: {e}") from e


def unavailable_reason(name: str, device_type: str) -> str | None:
    """None if backend `name` can run on `device_type`, else a sentence saying why not."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {', '.join(('auto',) + BACKENDS)}"
    try:
        mod = _load(name)
    except BackendUnavailable as e:
        return str(e)
    return mod.availability(device_type)


def available_backends(device_type: str = "cpu") -> list[str]:
    return [b for b in BACKENDS if unavailable_reason(b, device_type) is None]


def requested_backend() -> str:
    return os.environ.get("RGD_BACKEND", "auto").strip().lower() or "auto"


@lru_cache(maxsize=None)
def resolve_backend(requested: str, device_type: str) -> str:
    """Resolve `requested` (auto or a name) to a runnable backend name for `device_type`."""
    if requested != "auto":
        reason = unavailable_reason(requested, device_type)
        if reason is not None:
            raise BackendUnavailable(f"RGD backend {requested!r} requested for {device_type} but unavailable: {reason}")
        return requested
    reasons = []
    for name in _AUTO_ORDER.get(device_type, ("torch",)):
        reason = unavailable_reason(name, device_type)
        if reason is None:
            if reasons:
                log.warning("RGD_BACKEND=auto on %s chose %r (%s)", device_type, name, "; ".join(reasons))
            else:
                log.info("RGD_BACKEND=auto on %s chose %r", device_type, name)
            return name
        reasons.append(f"{name}: {reason}")
    raise BackendUnavailable(f"no RGD backend can run on {device_type}: {'; '.join(reasons)}")


def _backend_module(backend: str | None, device: torch.device):
    name = resolve_backend((backend or requested_backend()).lower(), device.type)
    return _load(name)


def _check(cond: bool, msg: str):
    if not cond:
        raise ValueError(msg)


def _check_selection(op: str, B: int, k: int, logprob, weight, mode: str, tau: float, rand) -> None:
    """The arguments every score-and-choose op shares: logprob [B, k], weight [B], mode, tau, rand [B]."""
    _check(tuple(logprob.shape) == (B, k), f"{op}: logprob must be [{B}, {k}], got {tuple(logprob.shape)}")
    _check(tuple(weight.shape) == (B,), f"{op}: weight must be [{B}], got {tuple(weight.shape)}")
    if mode == reference.SAMPLE:
        _check(rand is not None and tuple(rand.shape) == (B,), f"{op}: sample mode needs rand of shape [{B}]")
        _check(tau > 0, f"{op}: tau must be > 0, got {tau}")
    elif mode != reference.GREEDY:
        raise ValueError(f"{op}: mode must be 'greedy' or 'sample', got {mode!r}")


def check_slots(slot: torch.Tensor, capacity: int, op: str = "score_select") -> None:
    """slot [B] values must be in [-1, capacity): one host read of (min, max)."""
    if slot.numel():
        lo, hi = slot.aminmax()
        lo, hi = int(lo), int(hi)
        _check(lo >= -1 and hi < capacity, f"{op}: slot values must be in [-1, {capacity - 1}], got [{lo}, {hi}]")


def lmhead_topk(hidden: torch.Tensor, weight: torch.Tensor, k: int, *, backend: str | None = None):
    """Exact top-k log-softmax of the LM head without materializing [B, V] in the fused backends.

    hidden [B, d] float, weight [V, d] (same dtype and device) -> logprob [B, k] float32 sorted descending,
    ids [B, k] int64, lse [B] float32. Ties: lowest token id first.
    """
    _check(hidden.dim() == 2, f"lmhead_topk: hidden must be [B, d], got shape {tuple(hidden.shape)}")
    _check(weight.dim() == 2, f"lmhead_topk: weight must be [V, d], got shape {tuple(weight.shape)}")
    _check(hidden.shape[1] == weight.shape[1],
           f"lmhead_topk: hidden dim {hidden.shape[1]} != weight dim {weight.shape[1]} (hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)})")
    _check(1 <= k <= weight.shape[0], f"lmhead_topk: k={k} must be in [1, V={weight.shape[0]}]")
    _check(hidden.device == weight.device, f"lmhead_topk: hidden on {hidden.device} but weight on {weight.device}")
    _check(hidden.is_floating_point() and weight.is_floating_point(), "lmhead_topk: hidden and weight must be floating point")
    return _backend_module(backend, hidden.device).lmhead_topk(hidden, weight, int(k))


def score_select(cand_hidden, bank_w, bank_b, slot, logprob, weight, mode: str = reference.GREEDY,
                 tau: float = 1.0, rand: torch.Tensor | None = None, *, backend: str | None = None,
                 check_values: bool = True):
    """Gather each row's reward head, score its k candidates with the ARGS rule and choose one.

    cand_hidden [B, k, d], bank_w [U, d], bank_b [U], slot [B] int (-1 = no head), logprob [B, k], weight [B],
    rand [B] uniform [0, 1) (sample mode) -> chosen [B] int64, scores [B, k] float32, rewards [B, k] float32.
    check_values=False skips the range check of slot, the one check that reads tensor values on the host (a
    device sync): for a decode loop that checked its slots once (`check_slots`).
    """
    _check(cand_hidden.dim() == 3, f"score_select: cand_hidden must be [B, k, d], got {tuple(cand_hidden.shape)}")
    B, k, d = cand_hidden.shape
    _check(bank_w.dim() == 2 and bank_w.shape[1] == d, f"score_select: bank_w must be [U, {d}], got {tuple(bank_w.shape)}")
    _check(tuple(bank_b.shape) == (bank_w.shape[0],), f"score_select: bank_b must be [{bank_w.shape[0]}], got {tuple(bank_b.shape)}")
    _check(tuple(slot.shape) == (B,), f"score_select: slot must be [{B}], got {tuple(slot.shape)}")
    _check(not slot.is_floating_point(), "score_select: slot must be an integer tensor")
    _check_selection("score_select", B, k, logprob, weight, mode, tau, rand)
    if check_values:
        check_slots(slot, bank_w.shape[0], "score_select")
    return _backend_module(backend, cand_hidden.device).score_select(
        cand_hidden, bank_w, bank_b, slot, logprob, weight, mode, float(tau), rand)


def gather_score_select(query, emb, cand_ids, offset, logprob, weight, ratio: float = 0.0,
                        mode: str = reference.GREEDY, tau: float = 1.0, rand: torch.Tensor | None = None, *,
                        backend: str | None = None, check_values: bool = True):
    """Score each row's k candidates by their embedding rows against a per-row query, and choose one.

    query [B, d], emb [V, d], cand_ids [B, k] int in [0, V), offset [B], logprob [B, k], weight [B], ratio float,
    rand [B] uniform [0, 1) (sample mode) -> chosen [B] int64, scores [B, k] float32, rewards [B, k] float32,
    rewards = emb[cand_ids] . query + offset - ratio * logprob; scores = logprob + weight * rewards
    (see reference.gather_score_select_ref for what the `token` and `logratio` rules pass).
    check_values=False skips the range check of cand_ids (a device sync): for callers whose ids come from
    lmhead_topk over the same vocabulary, which are in range by construction.
    """
    _check(query.dim() == 2, f"gather_score_select: query must be [B, d], got {tuple(query.shape)}")
    B, d = query.shape
    _check(emb.dim() == 2 and emb.shape[1] == d, f"gather_score_select: emb must be [V, {d}], got {tuple(emb.shape)}")
    _check(cand_ids.dim() == 2 and cand_ids.shape[0] == B,
           f"gather_score_select: cand_ids must be [{B}, k], got {tuple(cand_ids.shape)}")
    k = cand_ids.shape[1]
    _check(not cand_ids.is_floating_point(), "gather_score_select: cand_ids must be an integer tensor")
    _check(tuple(offset.shape) == (B,), f"gather_score_select: offset must be [{B}], got {tuple(offset.shape)}")
    _check_selection("gather_score_select", B, k, logprob, weight, mode, tau, rand)
    _check(query.device == emb.device == cand_ids.device,
           f"gather_score_select: query on {query.device}, emb on {emb.device}, cand_ids on {cand_ids.device}")
    if check_values and cand_ids.numel():
        lo, hi = cand_ids.aminmax()
        lo, hi = int(lo), int(hi)
        _check(lo >= 0 and hi < emb.shape[0],
               f"gather_score_select: cand_ids must be in [0, {emb.shape[0] - 1}], got [{lo}, {hi}]")
    return _backend_module(backend, query.device).gather_score_select(
        query, emb, cand_ids, offset, logprob, weight, float(ratio), mode, float(tau), rand)
