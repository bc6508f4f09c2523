"""GenARM-style token-level personalised reward heads on frozen backbone features.

User u's reward for token v after a prefix with final-norm hidden state h [d] is the bilinear form
    r_u(v | h) = e_v . (A_u h),   A_u = P_u^T Q_u,   P_u, Q_u in R^{r x d} (rank r),
where e_v [d] is the backbone's output-embedding (LM head) row of v. A response y = (y_1..y_T) with prefix states
h_0..h_{T-1} gets R_u(y) = sum_t r_u(y_t | h_{t-1}) = sum_t (P_u e_t) . (Q_u h_t); in a TokenSeq row t of h is
the state that predicts token t, whose embedding row is row t of e. A_u ([d, d]) is never materialised in training.

Training (GenARM): mean over pairs of -log sigmoid(beta * (R_u(y_w) - R_u(y_l))) plus L2 terms on the factors.
Interface as rgd_eval.reward_models: TOKEN_METHODS[name](**hparams); .fit(train_users, seed) -> self;
.heads_for(users) -> {user: (P [r, d] float32, Q [r, d] float32)}, users mapping user id -> TokenPairFeatures of
that user's support pairs; heads_for keeps everything shared across users frozen, so it serves unseen users.

Optimisation runs in float64 on features scaled per dimension (LM hidden states have a few huge dimensions):
x / s with s = RMS over the training tokens * sqrt(d), separately for h and e, so a token vector has norm ~ 1.
Features are scaled but not centred: a shift of h or e changes the bilinear reward by a length-dependent amount.
Factors fitted on scaled features map back exactly: P_raw = P / s_e, Q_raw = Q / s_h (per column).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .reward_models import _bt_loss, _lbfgs, _one_thread, variant_name

__all__ = ["TokenSeq", "TokenPairFeatures", "TokenHead", "sequence_reward", "sequence_rewards", "TokenGlobal",
           "TokenPerUser", "TOKEN_METHODS", "token_variants", "variant_name", "make_token_method"]

TokenHead = tuple[torch.Tensor, torch.Tensor]  # (P [r, d] float32, Q [r, d] float32), raw feature space


@dataclass(frozen=True)
class TokenSeq:
    """One response: h [T, d] prefix states (row t predicts token t), e [T, d] embedding rows of its tokens."""
    h: torch.Tensor  # [T, d]
    e: torch.Tensor  # [T, d]

    def __post_init__(self):
        if (not isinstance(self.h, torch.Tensor) or not isinstance(self.e, torch.Tensor) or self.h.ndim != 2
                or self.h.shape != self.e.shape or self.h.shape[0] < 1 or self.h.shape[1] < 1):
            raise ValueError(f"TokenSeq needs h and e of one shape [T, d] with T >= 1, got h "
                             f"{_shape(self.h)} and e {_shape(self.e)}")

    @property
    def dim(self) -> int:
        return self.h.shape[1]


@dataclass(frozen=True)
class TokenPairFeatures:
    """A user's preference pairs: chosen[i] is preferred to rejected[i]; all sequences share d."""
    chosen: list[TokenSeq]
    rejected: list[TokenSeq]

    def __post_init__(self):
        if len(self.chosen) != len(self.rejected) or not self.chosen:
            raise ValueError(f"TokenPairFeatures needs equal non-empty chosen / rejected lists, got "
                             f"{len(self.chosen)} and {len(self.rejected)} sequences")
        seqs = list(self.chosen) + list(self.rejected)
        if not all(isinstance(s, TokenSeq) for s in seqs):
            raise ValueError("TokenPairFeatures holds TokenSeq objects only")
        dims = {s.dim for s in seqs}
        if len(dims) != 1:
            shapes = sorted({tuple(s.h.shape) for s in seqs})[:6]
            raise ValueError(f"TokenPairFeatures sequences differ in d: shapes {shapes}")

    @property
    def dim(self) -> int:
        return self.chosen[0].dim

    def __len__(self) -> int:
        return len(self.chosen)


def _shape(x) -> tuple | str:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_factors(P: torch.Tensor, Q: torch.Tensor, d: int) -> None:
    if P.ndim != 2 or P.shape != Q.shape or P.shape[1] != d:
        raise ValueError(f"factors P, Q must both be [r, {d}], got P {_shape(P)} and Q {_shape(Q)}")


# --- rewards -----------------------------------------------------------------------------------------------------

def _token_rewards(P: torch.Tensor, Q: torch.Tensor, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:  # [N]
    """r(token n) = (P e_n) . (Q h_n) for stacked tokens h, e [N, d]; P, Q [r, d]. Cost O(N d r)."""
    return ((e @ P.T) * (h @ Q.T)).sum(-1)  # [N, r] * [N, r] -> [N]


def _segment_sum(values: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:  # [n_seg]
    return torch.zeros(n_seg, dtype=values.dtype).index_add_(0, seg, values)


def _stack_seqs(seqs: list[TokenSeq]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All tokens of seqs as h, e [N, d] float64 and the owning sequence per token [N]."""
    if len({s.dim for s in seqs}) > 1:
        raise ValueError(f"sequences differ in d: shapes {sorted({tuple(s.h.shape) for s in seqs})[:6]}")
    h = torch.cat([s.h for s in seqs]).double()
    e = torch.cat([s.e for s in seqs]).double()
    seg = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor([len(s.h) for s in seqs]))
    return h, e, seg


def sequence_rewards(P: torch.Tensor, Q: torch.Tensor, seqs: list[TokenSeq]) -> torch.Tensor:  # [n] float64
    """R(y) = sum_t (P e_t) . (Q h_t) for every sequence, batched: all tokens stacked, summed per sequence."""
    if not seqs:
        return torch.zeros(0, dtype=torch.float64)
    h, e, seg = _stack_seqs(seqs)
    _check_factors(P, Q, h.shape[1])
    return _segment_sum(_token_rewards(P.double(), Q.double(), h, e), seg, len(seqs))


def sequence_reward(P: torch.Tensor, Q: torch.Tensor, seq: TokenSeq) -> float:
    """R(y) = sum_t e_t . (P^T Q h_t) = sum_t (P e_t) . (Q h_t) in float64; P, Q [r, d], seq.h / seq.e [T, d]."""
    _check_factors(P, Q, seq.dim)
    return float(_token_rewards(P.double(), Q.double(), seq.h.double(), seq.e.double()).sum())


# --- training data -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _PairTokens:
    """Every token of a set of pairs, for all margins m_k = R(chosen_k) - R(rejected_k) in one pass. Embedding rows
    repeat (they are rows of a vocabulary), so e is kept once per distinct row: P e costs O(V d r) for V distinct
    rows instead of O(N d r). The prefix states h are all distinct. A_u = P^T Q is never formed."""
    h: torch.Tensor       # [N, d] float64
    e_rows: torch.Tensor  # [V, d] float64, distinct embedding rows
    e_idx: torch.Tensor   # [N] row of e_rows of each token
    sign: torch.Tensor    # [N] float64: +1 on chosen, -1 on rejected tokens
    pair: torch.Tensor    # [N] pair index of each token
    n_pairs: int

    def margins(self, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:  # [n_pairs]
        pe = (self.e_rows @ P.T)[self.e_idx]  # [V, r] -> [N, r]
        hq = self.h @ Q.T  # [N, r]
        return _segment_sum(self.sign * (pe * hq).sum(-1), self.pair, self.n_pairs)

    def scaled(self, scaler: "_TokenScaler") -> "_PairTokens":
        return _PairTokens(scaler.h(self.h), scaler.e(self.e_rows), self.e_idx, self.sign, self.pair, self.n_pairs)


def _pair_tokens(feats: list[TokenPairFeatures]) -> _PairTokens:
    """Stack all pairs of feats (in order): chosen sequences' tokens, then rejected ones'; raw features."""
    chosen = [s for f in feats for s in f.chosen]
    rejected = [s for f in feats for s in f.rejected]
    h, e, seg = _stack_seqs(chosen + rejected)
    n = len(chosen)
    e_rows, e_idx = torch.unique(e, dim=0, return_inverse=True)  # exact row equality
    return _PairTokens(h, e_rows, e_idx, torch.where(seg < n, 1.0, -1.0).double(), torch.where(seg < n, seg, seg - n),
                       n)


def _check_users(users: dict[str, TokenPairFeatures], d: int | None = None) -> list[str]:
    names = sorted(users)
    if not names:
        raise ValueError("no users given")
    for u in names:
        f = users[u]
        if not isinstance(f, TokenPairFeatures):
            raise ValueError(f"user {u!r}: expected TokenPairFeatures, got {type(f).__name__}")
        if d is not None and f.dim != d:
            raise ValueError(f"user {u!r}: token features are [T, {f.dim}] (e.g. h {tuple(f.chosen[0].h.shape)}), "
                             f"the model was fitted on d = {d}")
    dims = {users[u].dim for u in names}
    if len(dims) != 1:
        raise ValueError(f"users' token features differ in d: {sorted(dims)}")
    return names


class _TokenScaler:
    """Per-dimension scales s_h, s_e [d] = RMS over the training tokens * sqrt(d) (0 -> 1): scaled token vectors
    have mean squared norm 1. Factors fitted on h / s_h, e / s_e are Q / s_h, P / s_e on raw features."""

    def __init__(self, toks: _PairTokens):
        self.s_h = self._scale(toks.h)
        self.s_e = self._scale(toks.e_rows, torch.bincount(toks.e_idx, minlength=len(toks.e_rows)))

    @staticmethod
    def _scale(x: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:  # [d]
        """x [n, d] rows, each counted counts[i] times (default once)."""
        sq = x.pow(2)
        ms = sq.mean(0) if counts is None else (counts.double()[:, None] * sq).sum(0) / counts.sum()
        rms = ms.sqrt()
        return torch.where(rms > 0, rms, torch.ones_like(rms)) * x.shape[1] ** 0.5

    def h(self, h: torch.Tensor) -> torch.Tensor:
        return h / self.s_h

    def e(self, e: torch.Tensor) -> torch.Tensor:
        return e / self.s_e

    def to_raw(self, P: torch.Tensor, Q: torch.Tensor) -> TokenHead:
        return (P / self.s_e).float(), (Q / self.s_h).float()


# --- optimisation ------------------------------------------------------------------------------------------------

def _genarm_loss(toks: _PairTokens, P: torch.Tensor, Q: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(beta * (R(chosen) - R(rejected)))."""
    return _bt_loss(beta * toks.margins(P, Q)).mean()


def _fit_factors(toks: _PairTokens, P0: torch.Tensor, Q0: torch.Tensor, beta: float, penalty, steps: int):
    """min_{P, Q} GenARM loss + penalty(P, Q) by L-BFGS (strong Wolfe) from (P0, Q0) [r, d]; float64."""
    P = P0.clone().requires_grad_(True)
    Q = Q0.clone().requires_grad_(True)
    _lbfgs([P, Q], lambda: _genarm_loss(toks, P, Q, beta) + penalty(P, Q), steps)
    return P.detach(), Q.detach()


INIT_STD = 0.1  # entries of the random start (scaled space: token vectors have norm ~1, so P e ~ N(0, 0.01))


def _init_factors(rank: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Small random (P0, Q0) [r, d] from seed: the bilinear objective has a saddle at P = Q = 0."""
    gen = torch.Generator().manual_seed(seed)
    P0 = torch.randn(rank, d, generator=gen, dtype=torch.float64) * INIT_STD
    Q0 = torch.randn(rank, d, generator=gen, dtype=torch.float64) * INIT_STD
    return P0, Q0


class TokenGlobal:
    """One token-level head (P, Q) shared by every user: min GenARM loss + l2/2 (||P||^2 + ||Q||^2) over all train
    users' pairs (on balanced factors the L2 term is l2 * nuclear norm of A = P^T Q)."""
    name = "token-global"

    def __init__(self, rank: int = 4, beta: float = 1.0, l2: float = 1e-2, steps: int = 100):
        if rank < 1 or steps < 1 or beta <= 0:
            raise ValueError(f"need rank >= 1, steps >= 1, beta > 0; got rank={rank}, steps={steps}, beta={beta}")
        self.rank, self.beta, self.l2, self.steps = rank, beta, l2, steps

    def _global_penalty(self, P, Q):
        return 0.5 * self.l2 * (P.pow(2).sum() + Q.pow(2).sum())

    @_one_thread
    def fit(self, train_users: dict[str, TokenPairFeatures], seed: int = 0) -> "TokenGlobal":
        """Non-convex: the seeded random start matters; the same seed gives the same factors."""
        names = _check_users(train_users)
        toks = _pair_tokens([train_users[u] for u in names])
        self.scaler = _TokenScaler(toks)
        toks = toks.scaled(self.scaler)
        self.d, self.seed = toks.h.shape[1], seed
        P0, Q0 = _init_factors(self.rank, self.d, seed)
        self.P, self.Q = _fit_factors(toks, P0, Q0, self.beta, self._global_penalty, self.steps)  # [r, d] scaled
        return self

    @_one_thread
    def heads_for(self, users: dict[str, TokenPairFeatures]) -> dict[str, TokenHead]:
        _check_users(users, self.d)
        P, Q = self.scaler.to_raw(self.P, self.Q)
        return {u: (P.clone(), Q.clone()) for u in users}


class TokenPerUser(TokenGlobal):
    """Per-user heads: the global (P_g, Q_g) is fitted on the train users in fit(); heads_for solves, per user and
    independently, min GenARM_u(P_u, Q_u) + lam (||P_u - P_g||^2 + ||Q_u - Q_g||^2) on that user's support pairs,
    starting from the global factors (plus a tiny fixed perturbation drawn from the fit seed, which only matters
    where the global factors sit at the P = Q = 0 saddle). l2 acts on the global fit only."""
    name = "token-per-user"
    JITTER = 1e-3

    def __init__(self, rank: int = 4, beta: float = 1.0, l2: float = 1e-2, lam: float = 0.1, steps: int = 100):
        super().__init__(rank=rank, beta=beta, l2=l2, steps=steps)
        self.lam = lam

    @_one_thread
    def heads_for(self, users: dict[str, TokenPairFeatures]) -> dict[str, TokenHead]:
        names = _check_users(users, self.d)
        jP, jQ = _init_factors(self.rank, self.d, self.seed + 1)
        P0, Q0 = self.P + jP * (self.JITTER / INIT_STD), self.Q + jQ * (self.JITTER / INIT_STD)

        def penalty(P, Q):
            return self.lam * ((P - self.P).pow(2).sum() + (Q - self.Q).pow(2).sum())

        heads = {}
        for u in names:  # independent problems: a user's head does not depend on who else is in `users`
            toks = _pair_tokens([users[u]]).scaled(self.scaler)
            heads[u] = self.scaler.to_raw(*_fit_factors(toks, P0, Q0, self.beta, penalty, self.steps))
        return heads


TOKEN_METHODS: dict[str, type] = {cls.name: cls for cls in (TokenGlobal, TokenPerUser)}

_TOKEN_VARIANTS: dict[str, list[dict]] = {
    "token-global": [{"rank": 1}, {"rank": 4}, {"rank": 4, "l2": 1.0}],
    "token-per-user": [{"lam": 1.0}, {"lam": 0.1}, {"lam": 0.01}],
}


def token_variants(name: str) -> list[dict]:
    """Hyperparameter grid of a token-level method (a spread of RM accuracies for the Kendall analysis)."""
    if name not in TOKEN_METHODS:
        raise KeyError(f"unknown token method {name!r}; known: {', '.join(TOKEN_METHODS)}")
    return [dict(v) for v in _TOKEN_VARIANTS[name]]


def make_token_method(name: str, hparams: dict):
    if name not in TOKEN_METHODS:
        raise KeyError(f"unknown token method {name!r}; known: {', '.join(TOKEN_METHODS)}")
    return TOKEN_METHODS[name](**hparams)
