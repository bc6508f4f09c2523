"""Personalized reward models: linear heads r_u(x) = w_u . h(x) + b_u on frozen backbone features.

Every method trains on (chosen, rejected) feature pairs with the Bradley-Terry loss
-log sigmoid(r_u(chosen) - r_u(rejected)); b_u cancels in that difference, so every head has b = 0.
Interface: METHODS[name](**hparams); .fit(train_users, seed); .heads_for(users) -> {user: (w [d], b)},
where users map user id -> PairFeatures of that user's support (profile) pairs. heads_for computes heads from
the given pairs with everything shared across users frozen, so it serves unseen (test) users too.
Optimisation runs in float64 on features standardised per dimension (LM hidden states have a few huge
dimensions); heads are mapped back to the raw feature space.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .features import Head, PairFeatures

def _stack(users: dict[str, PairFeatures]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Sorted user ids, all differences D [P, d] (float64), owning user index per row [P]."""
    names = sorted(users)
    if not names:
        raise ValueError("no users given")
    diffs = [users[u].diff() for u in names]
    idx = torch.cat([torch.full((len(dd),), i, dtype=torch.long) for i, dd in enumerate(diffs)])
    return names, torch.cat(diffs), idx


def _one_thread(fn):
    """Run fn with one intra-op thread: these problems are tiny ([P, d] with P ~ 1e3), and on a loaded
    machine thread synchronisation costs ~10x the arithmetic."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return wrapper


def _bt_loss(margins: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood per pair: -log sigmoid(r(chosen) - r(rejected))."""
    return F.softplus(-margins)


def _per_user_mean(values: torch.Tensor, idx: torch.Tensor, n_users: int) -> torch.Tensor:  # [U]
    sums = torch.zeros(n_users, dtype=values.dtype).index_add_(0, idx, values)
    counts = torch.zeros(n_users, dtype=values.dtype).index_add_(0, idx, torch.ones_like(values))
    return sums / counts


def _per_user_mean_rows(rows: torch.Tensor, idx: torch.Tensor, n_users: int) -> torch.Tensor:  # [U, d]
    sums = torch.zeros(n_users, rows.shape[1], dtype=rows.dtype).index_add_(0, idx, rows)
    counts = torch.zeros(n_users, dtype=rows.dtype).index_add_(0, idx, torch.ones(len(idx), dtype=rows.dtype))
    return sums / counts.clamp(min=1)[:, None]  # a user without rows gets 0, not NaN (NaN * 0 grads are NaN)


def _lbfgs(params: list[torch.Tensor], objective, max_iter: int) -> None:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)


class _Scaler:
    """Per-dimension scale of the training differences; heads fitted on D / s are w / s on raw features."""

    def __init__(self, diffs: torch.Tensor):  # [P, d]
        std = diffs.std(dim=0, unbiased=False) if len(diffs) > 1 else diffs.abs()[0]
        self.scale = torch.where(std > 0, std, torch.ones_like(std))  # [d]; constant dims left as is

    def __call__(self, diffs: torch.Tensor) -> torch.Tensor:
        return diffs / self.scale

    def to_raw(self, w: torch.Tensor) -> torch.Tensor:
        return (w / self.scale).float()


def _fit_global(d_std: torch.Tensor, l2: float, max_iter: int) -> torch.Tensor:  # [d]
    w = torch.zeros(d_std.shape[1], dtype=torch.float64, requires_grad=True)
    _lbfgs([w], lambda: _bt_loss(d_std @ w).mean() + 0.5 * l2 * w.pow(2).sum(), max_iter)
    return w.detach()


class GlobalBT:
    """One Bradley-Terry head shared by every user (L2 strength l2)."""
    name = "global"

    def __init__(self, l2: float = 1e-2, max_iter: int = 200):
        self.l2, self.max_iter = l2, max_iter

    @_one_thread
    def fit(self, train_users: dict[str, PairFeatures], seed: int = 0) -> "GlobalBT":
        """Convex objective from a zero start: the result does not depend on seed (kept for the interface)."""
        _, diffs, _ = _stack(train_users)
        self.scaler = _Scaler(diffs)
        self.w = _fit_global(self.scaler(diffs), self.l2, self.max_iter)
        return self

    @_one_thread
    def heads_for(self, users: dict[str, PairFeatures]) -> dict[str, Head]:
        w = self.scaler.to_raw(self.w)
        return {u: (w.clone(), 0.0) for u in users}


class PerUserBT(GlobalBT):
    """Per-user heads: min mean BT_u(w) + lam/2 ||w - w_global||^2, the global head fitted on the train users."""
    name = "per-user"

    def __init__(self, lam: float = 1.0, l2: float = 1e-2, max_iter: int = 200):
        super().__init__(l2=l2, max_iter=max_iter)
        self.lam = lam

    @_one_thread
    def heads_for(self, users: dict[str, PairFeatures]) -> dict[str, Head]:
        names, diffs, idx = _stack(users)
        d_std = self.scaler(diffs)
        W = self.w.repeat(len(names), 1).requires_grad_(True)  # [U, d], start at the prior

        # The users' problems are independent; summing them lets one L-BFGS run solve all at once.
        def objective():
            margins = (d_std * W[idx]).sum(-1)  # [P]
            per_user = _per_user_mean(_bt_loss(margins), idx, len(names))
            return (per_user + 0.5 * self.lam * (W - self.w).pow(2).sum(-1)).sum()

        _lbfgs([W], objective, self.max_iter)
        return {u: (self.scaler.to_raw(W[i].detach()), 0.0) for i, u in enumerate(names)}


class LoRe:
    """Low-rank personalised RM: a shared basis B [d, m]; user u's head is B softmax(a_u) (a point on the
    simplex spanned by m basis heads). fit learns B and the train users' a jointly; heads_for refits only a_u
    (few-shot) with B frozen."""
    name = "lore"

    def __init__(self, m: int = 4, l2: float = 1e-2, alpha_l2: float = 1e-3, max_iter: int = 300):
        self.m, self.l2, self.alpha_l2, self.max_iter = m, l2, alpha_l2, max_iter

    def _objective(self, d_std, idx, n_users, B, A):
        W = torch.softmax(A, dim=-1) @ B.T  # [U, d]
        margins = (d_std * W[idx]).sum(-1)  # [P]
        return _per_user_mean(_bt_loss(margins), idx, n_users).mean() + 0.5 * self.alpha_l2 * A.pow(2).sum()

    @_one_thread
    def fit(self, train_users: dict[str, PairFeatures], seed: int = 0) -> "LoRe":
        names, diffs, idx = _stack(train_users)
        self.scaler = _Scaler(diffs)
        d_std = self.scaler(diffs)
        gen = torch.Generator().manual_seed(seed)
        # Random basis (breaks the symmetry between columns) around the global head; uniform simplex weights.
        w_g = _fit_global(d_std, self.l2, self.max_iter)
        noise = torch.randn(d_std.shape[1], self.m, generator=gen, dtype=torch.float64)
        B = (w_g[:, None] + noise * (w_g.norm() / d_std.shape[1] ** 0.5 + 1e-3)).requires_grad_(True)  # [d, m]
        A = torch.zeros(len(names), self.m, dtype=torch.float64, requires_grad=True)  # [U, m]
        _lbfgs([B, A], lambda: self._objective(d_std, idx, len(names), B, A) + 0.5 * self.l2 * B.pow(2).sum(),
               self.max_iter)
        self.B = B.detach()
        return self

    @_one_thread
    def heads_for(self, users: dict[str, PairFeatures]) -> dict[str, Head]:
        names, diffs, idx = _stack(users)
        d_std = self.scaler(diffs)
        A = torch.zeros(len(names), self.m, dtype=torch.float64, requires_grad=True)
        _lbfgs([A], lambda: self._objective(d_std, idx, len(names), self.B, A), self.max_iter)
        W = torch.softmax(A.detach(), dim=-1) @ self.B.T  # [U, d]
        return {u: (self.scaler.to_raw(W[i]), 0.0) for i, u in enumerate(names)}


class VPL:
    """Amortised user-conditioned head (VPL-style): w_u = w0 + U tanh(V^T s_u + c), where s_u is the mean
    standardised difference (chosen - rejected) of the user's support pairs. Trained across train users on
    episodes: each step splits every user's pairs at random into a context half (-> s_u) and a target half
    (-> BT loss), so the network learns to predict heads for pairs it has not summarised."""
    name = "vpl"

    def __init__(self, hidden: int = 16, epochs: int = 300, lr: float = 1e-2, l2: float = 1e-3):
        self.hidden, self.epochs, self.lr, self.l2 = hidden, epochs, lr, l2

    def _heads(self, summaries: torch.Tensor) -> torch.Tensor:  # [U, d] -> [U, d]
        return self.w0 + torch.tanh(summaries @ self.V + self.c) @ self.U

    @_one_thread
    def fit(self, train_users: dict[str, PairFeatures], seed: int = 0) -> "VPL":
        names, diffs, idx = _stack(train_users)
        self.scaler = _Scaler(diffs)
        d_std = self.scaler(diffs)
        n_users, d = len(names), d_std.shape[1]
        gen = torch.Generator().manual_seed(seed)
        self.V = (torch.randn(d, self.hidden, generator=gen, dtype=torch.float64) / d ** 0.5).requires_grad_(True)
        self.c = torch.zeros(self.hidden, dtype=torch.float64, requires_grad=True)
        self.U = (torch.randn(self.hidden, d, generator=gen, dtype=torch.float64) * 0.01).requires_grad_(True)
        self.w0 = torch.zeros(d, dtype=torch.float64, requires_grad=True)
        params = [self.V, self.c, self.U, self.w0]
        opt = torch.optim.Adam(params, lr=self.lr)
        n_all = torch.bincount(idx, minlength=n_users)  # [U]
        for _ in range(self.epochs):
            ctx = torch.rand(len(idx), generator=gen) < 0.5  # [P] context / target split for this episode
            n_ctx = torch.bincount(idx[ctx], minlength=n_users)  # [U]
            target = ~ctx & ((n_ctx > 0) & (n_ctx < n_all))[idx]  # [P]; only users with both halves
            if not target.any():
                continue
            s = _per_user_mean_rows(d_std[ctx], idx[ctx], n_users)  # [U, d]
            W = self._heads(s)  # [U, d]
            margins = (d_std[target] * W[idx[target]]).sum(-1)
            loss = _bt_loss(margins).mean() + 0.5 * self.l2 * sum(p.pow(2).sum() for p in params)
            opt.zero_grad()
            loss.backward()
            opt.step()
        for p in params:
            p.requires_grad_(False)
        return self

    @_one_thread
    def heads_for(self, users: dict[str, PairFeatures]) -> dict[str, Head]:
        names, diffs, idx = _stack(users)
        d_std = self.scaler(diffs)
        s = _per_user_mean_rows(d_std, idx, len(names))  # [U, d]
        W = self._heads(s)
        return {u: (self.scaler.to_raw(W[i]), 0.0) for i, u in enumerate(names)}


METHODS: dict[str, type] = {cls.name: cls for cls in (GlobalBT, PerUserBT, LoRe, VPL)}

_VARIANTS: dict[str, list[dict]] = {
    "global": [{"l2": 1.0}, {"l2": 1e-2}, {"l2": 1e-4}],
    "per-user": [{"lam": 10.0}, {"lam": 1.0}, {"lam": 0.1}, {"lam": 0.01}],
    "lore": [{"m": 2}, {"m": 4}, {"m": 8}],
    "vpl": [{"hidden": 8, "epochs": 100}, {"hidden": 8, "epochs": 400}, {"hidden": 32, "epochs": 400}],
}


def variants(name: str) -> list[dict]:
    """Hyperparameter grid of a method (the spread of RM accuracies the Kendall analysis needs)."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return [dict(v) for v in _VARIANTS[name]]


def variant_name(hparams: dict) -> str:
    """Stable display / results key, e.g. {'lam': 0.1} -> 'lam=0.1'."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hparams.items()))


def make_method(name: str, hparams: dict):
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name](**hparams)


def stack_heads(heads: dict[str, Head], users: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads in `users` order as W [U, d] float32 and b [U] float32 (e.g. to fill a head bank)."""
    W = torch.stack([heads[u][0] for u in users]).float()
    b = torch.tensor([heads[u][1] for u in users], dtype=torch.float32)
    return W, b
