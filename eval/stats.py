"""User-level statistics for the study: CIs, paired tests, multiplicity, rank correlation, reliability.

Unit of replication: the USER. A user's items (queries, preference pairs) share a profile, a reward head and a
writing style, so they are not independent; every interval here resamples users (a user's items stay together)
and every comparison between systems is paired and permuted over users. The number of independent points a
statistic rests on is therefore the number of users U (or, for correlations across configurations, the number
of configurations C, which are themselves NOT independent: they share users and test items).

What each method assumes and rests on:
- `user_cluster_bootstrap`: users are i.i.d. draws from a population; items within a user may be dependent in
  any way. Point estimate: the micro mean over all n items. CI: percentile bootstrap over the U users (each
  resample draws U users with replacement and takes the mean of their concatenated items). Rests on U points;
  with few users (U < ~20) percentile intervals under-cover. No CI for U = 1.
- `paired_user_difference`: a[i] and b[i] are two systems on the same item. d_u = mean of a - b over user u's
  items; the estimate is the mean of d_u over users (every user weighs the same, unlike the micro mean). CI:
  percentile bootstrap over users. p-value: sign-flip permutation test of mean_u d_u, valid under the null that
  the two systems are exchangeable within each user (d_u symmetric about 0); exact over all 2^U flips for
  U <= 16. Rests on U points.
- `holm`: Holm step-down adjustment; controls the family-wise error rate under any dependence between tests.
- `kendall_tau_b`: scipy's tau-b and p-value across the given points; that p-value treats the points as
  independent, which configurations sharing users and items are not (it overstates certainty).
- `kendall_user_bootstrap`: tau-b between two accuracy axes across C configurations measured on the same U
  users. CI: resample users, recompute both accuracy vectors and tau (captures the user sampling of both
  axes). Permutation p-value: shuffles which y goes with which x across configurations, conditional on the
  observed accuracies (tests "no association of the rankings", not user sampling). Rests on C dependent points
  and U users.
- `split_half_reliability`: random halves of the users; Pearson r across configurations between the two halves'
  accuracy vectors. Its mean says how reproducible the ranking of configurations is between disjoint user
  samples (noise on an axis pulls any correlation with it toward 0); Spearman-Brown 2r/(1+r) projects it to
  the full user set, assuming parallel halves. The 2.5 / 97.5 percentiles describe the spread of r over splits;
  splits reuse the same users, so they are not a confidence interval. Rests on C points and U users.

Randomness: every random function takes `seed` (an int >= 0) and is deterministic for it. Draw protocol (so a
test can reproduce the draws independently): `boot_rng, perm_rng = (np.random.default_rng(s) for s in
np.random.SeedSequence(seed).spawn(2))`;
- user resamples: `boot_rng.multinomial(U, [1/U] * U, size=n_boot)` = how often each user (users sorted by id)
  is drawn in each resample;
- sign flips (Monte Carlo): `perm_rng.random((n_perm, U)) < 0.5` flips the sign of d_u;
- configuration permutations (Monte Carlo): `np.argsort(perm_rng.random((n_perm, C)), axis=1)` permutes y;
- user halves: `np.argsort(boot_rng.random((n_splits, U)), axis=1)[:, :U // 2]` are the users of half A.
Draws are generated in row chunks (bounded memory); the streams are identical to single calls.
Outputs are plain JSON-serialisable dicts; None (never NaN) where a value is undefined.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

# Row chunks of the [draws, width] matrices hold at most this many cells (bounded memory for many users).
_MAX_CELLS = 1 << 21
# Exact sign-flip enumeration up to this many users (2^16 flips).
_EXACT_FLIP_MAX_USERS = 16
# Relative tolerance for "|T*| >= |T|": equal statistics computed in a different summation order must count.
_TIE_RTOL = 1e-12

ROUGE_TYPES = ("rouge1", "rougeL")


# ---------------------------------------------------------------- input checks

def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_confidence(confidence) -> float:
    if not isinstance(confidence, (int, float, np.floating)) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def _float_array(name: str, x) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must hold numbers: {e}") from None


def _finite_array(name: str, x, ndim: int) -> np.ndarray:
    arr = _float_array(name, x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        idx = np.unravel_index(bad[0], arr.shape)
        raise ValueError(f"{name} has {bad.size} non-finite value(s), first at index {tuple(map(int, idx))}")
    return arr


def _user_codes(users, n_items: int, values_name: str) -> tuple[np.ndarray, int]:
    """users [n] of str -> (codes [n] into the sorted distinct ids, number of distinct users)."""
    users = list(users)
    if len(users) != n_items:
        raise ValueError(f"users has {len(users)} entries but {values_name} has {n_items}")
    for i, u in enumerate(users):
        if not isinstance(u, str):
            raise ValueError(f"users[{i}] must be a str user id, got {type(u).__name__} {u!r}")
    ids, codes = np.unique(np.asarray(users, dtype=object).astype(str), return_inverse=True)
    return codes.reshape(-1), len(ids)


def _counts_and_totals(c_name: str, correct, n_name: str, n) -> tuple[np.ndarray, np.ndarray]:
    """correct [C, U], n [U] or [C, U] -> (correct [C, U], n [C, U]) as float64, validated."""
    correct = _finite_array(c_name, correct, 2)
    n = _float_array(n_name, n)
    if n.shape == correct.shape[1:]:
        n = np.broadcast_to(n, correct.shape)
    elif n.shape != correct.shape:
        raise ValueError(f"{n_name} must have shape {correct.shape[1:]} or {correct.shape} "
                         f"(like {c_name}), got {n.shape}")
    n = _finite_array(n_name, n, 2)
    if (n < 0).any():
        c, u = np.argwhere(n < 0)[0]
        raise ValueError(f"{n_name} must be >= 0, got {n[c, u]} for configuration {c}, user {u}")
    empty = np.flatnonzero(n.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"{n_name} sums to 0 over users for configuration(s) {empty.tolist()}: no accuracy")
    return correct, n


# ---------------------------------------------------------------- draws

def _streams(seed) -> tuple[np.random.Generator, np.random.Generator]:
    """(bootstrap/split stream, permutation stream) of `seed`; see the module docstring's draw protocol."""
    seed = _check_int("seed", seed, 0)
    boot, perm = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(boot), np.random.default_rng(perm)


def _row_chunks(total: int, width: int):
    """Sizes of row chunks of a [total, width] draw matrix, each at most _MAX_CELLS cells."""
    step = max(1, _MAX_CELLS // max(1, width))
    for start in range(0, total, step):
        yield min(step, total - start)


def _user_resample_counts(rng: np.random.Generator, n_users: int, n_boot: int, width: int = 0):
    """Yields [chunk, U] counts: how often each user is drawn in each resample of U users with replacement.

    Chunks are sized for the widest per-resample array the caller builds (max(U, width) cells per row).
    """
    p = np.full(n_users, 1.0 / n_users)
    for rows in _row_chunks(n_boot, max(n_users, width)):
        yield rng.multinomial(n_users, p, size=rows).astype(np.float64)


def _percentile_ci(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _at_least_as_extreme(null_abs: np.ndarray, observed_abs: float, scale: float) -> int:
    return int((null_abs >= observed_abs - _TIE_RTOL * scale).sum())


# ---------------------------------------------------------------- means and paired differences

def user_cluster_bootstrap(values: Sequence[float], users: Sequence[str], n_boot: int = 2000, seed: int = 0,
                           confidence: float = 0.95) -> dict:
    """Micro mean of `values` [n] with a percentile CI that resamples users (items of a user stay together).

    Works for 0/1 correctness (accuracy) and per-item scores (ROUGE) alike. Returns {"mean", "ci_low",
    "ci_high", "n" (items), "n_users", "method"}; the CI is None for a single user.
    """
    x = _finite_array("values", values, 1)  # [n]
    codes, n_users = _user_codes(users, x.size, "values")
    n_boot = _check_int("n_boot", n_boot, 1)
    confidence = _check_confidence(confidence)
    boot_rng, _ = _streams(seed)
    sums = np.bincount(codes, weights=x, minlength=n_users)  # [U]
    counts = np.bincount(codes, minlength=n_users).astype(np.float64)  # [U]
    lo = hi = None
    if n_users >= 2:
        # A resample's mean of concatenated items = (draw counts . user sums) / (draw counts . user sizes).
        means = np.concatenate([(w @ sums) / (w @ counts)
                                for w in _user_resample_counts(boot_rng, n_users, n_boot)])  # [n_boot]
        lo, hi = _percentile_ci(means, confidence)
    return {"mean": float(np.mean(x)), "ci_low": lo, "ci_high": hi, "n": int(x.size), "n_users": n_users,
            "method": f"micro mean; {confidence:.0%} percentile bootstrap over users "
                      f"(n_boot={n_boot}, seed={seed})"}


def _sign_flip_p(d: np.ndarray, n_perm: int, rng: np.random.Generator) -> tuple[float, bool]:
    """Two-sided sign-flip p-value of mean(d) for d [U]; (p, exact)."""
    n_users = d.size
    observed = abs(d.mean())
    scale = float(np.abs(d).mean())
    if n_users <= _EXACT_FLIP_MAX_USERS:
        flips = np.arange(2 ** n_users)[:, None] >> np.arange(n_users)[None, :] & 1  # [2^U, U] bits
        null = np.abs((1.0 - 2.0 * flips) @ d) / n_users  # [2^U], includes the identity
        return _at_least_as_extreme(null, observed, scale) / null.size, True
    hits = 0
    for rows in _row_chunks(n_perm, n_users):
        signs = np.where(rng.random((rows, n_users)) < 0.5, -1.0, 1.0)  # [rows, U]
        hits += _at_least_as_extreme(np.abs(signs @ d) / n_users, observed, scale)
    return (1 + hits) / (1 + n_perm), False


def paired_user_difference(a: Sequence[float], b: Sequence[float], users: Sequence[str], n_boot: int = 2000,
                           n_perm: int = 10000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Paired a - b over users: mean over users of d_u (user u's mean of a - b), user-bootstrap CI and a
    two-sided sign-flip permutation p-value over users (exact for U <= 16, else n_perm Monte Carlo flips,
    p = (1 + #{|T*| >= |T|}) / (1 + n_perm)). All-zero differences give p = 1.

    Returns {"diff", "ci_low", "ci_high", "p_value", "n_users", "n_items", "method", "exact"}; the CI is None
    for a single user.
    """
    a = _finite_array("a", a, 1)  # [n]
    b = _finite_array("b", b, 1)  # [n]
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired per item: shapes {a.shape} and {b.shape}")
    codes, n_users = _user_codes(users, a.size, "a")
    n_boot = _check_int("n_boot", n_boot, 1)
    n_perm = _check_int("n_perm", n_perm, 1)
    confidence = _check_confidence(confidence)
    boot_rng, perm_rng = _streams(seed)
    d = np.bincount(codes, weights=a - b, minlength=n_users) / np.bincount(codes, minlength=n_users)  # [U]
    lo = hi = None
    if n_users >= 2:
        boots = np.concatenate([w @ d / n_users for w in _user_resample_counts(boot_rng, n_users, n_boot)])
        lo, hi = _percentile_ci(boots, confidence)
    p, exact = _sign_flip_p(d, n_perm, perm_rng)
    test = f"exact over all {2 ** n_users} sign flips" if exact else f"{n_perm} Monte Carlo sign flips"
    return {"diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "p_value": float(p), "n_users": n_users,
            "n_items": int(a.size), "exact": exact,
            "method": f"mean over users of per-user mean(a - b); {confidence:.0%} percentile bootstrap over users "
                      f"(n_boot={n_boot}); two-sided sign-flip permutation test over users ({test}); seed={seed}"}


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm step-down adjusted p-values, same keys; None stays None and is not counted in the family.

    adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) over the m defined p-values sorted ascending.
    """
    if not isinstance(p_values, Mapping):
        raise ValueError(f"p_values must be a mapping name -> p-value, got {type(p_values).__name__}")
    defined = {}
    for key, p in p_values.items():
        if p is None:
            continue
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) \
                or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p_values[{key!r}] must be None or a number in [0, 1], got {p!r}")
        defined[key] = float(p)
    keys = sorted(defined, key=lambda k: defined[k])  # stable: ties keep insertion order
    m = len(keys)
    scaled = np.minimum(1.0, np.array([(m - i) * defined[k] for i, k in enumerate(keys)]))  # [m]
    adjusted = dict(zip(keys, np.maximum.accumulate(scaled).tolist() if m else []))
    return {key: adjusted.get(key) for key in p_values}


# ---------------------------------------------------------------- rank correlation

def kendall_tau_b(x, y) -> dict:
    """scipy.stats.kendalltau(variant='b') of x [n] vs y [n]: {"tau", "p_value", "n"}; tau and p are None
    when undefined (fewer than 2 points or a constant input). The p-value treats the points as independent."""
    x = _finite_array("x", x, 1)
    y = _finite_array("y", y, 1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"tau": None, "p_value": None, "n": int(x.size)}
    res = sps.kendalltau(x, y, variant="b")
    return {"tau": float(res.statistic), "p_value": float(res.pvalue), "n": int(x.size)}


def _tau_b_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Kendall tau-b of x [B, C] vs y [B, C] -> [B]; NaN where undefined (a constant or NaN row).

    tau_b = sum_{i<j} sign(dx) sign(dy) / sqrt(#pairs untied in x * #pairs untied in y).
    """
    i, j = np.triu_indices(x.shape[1], 1)
    sx = np.sign(x[:, i] - x[:, j])  # [B, P]
    sy = np.sign(y[:, i] - y[:, j])  # [B, P]
    den = np.sqrt(np.abs(sx).sum(axis=1) * np.abs(sy).sum(axis=1))  # [B]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (sx * sy).sum(axis=1) / den, np.nan)


def _permutation_tau_p(x: np.ndarray, y: np.ndarray, tau: float, n_perm: int, rng) -> tuple[float, str]:
    """Two-sided p of |tau| under permutations of y across the C configurations; (p, description)."""
    n_conf = x.size
    pairs = n_conf * (n_conf - 1) // 2
    if math.factorial(n_conf) <= n_perm:
        perms = np.array(list(itertools.permutations(range(n_conf))))  # [C!, C], includes the identity
        null = np.abs(_tau_b_rows(np.broadcast_to(x, perms.shape), y[perms]))
        return _at_least_as_extreme(null, abs(tau), 1.0) / perms.shape[0], f"exact over all {perms.shape[0]}"
    hits = 0
    for rows in _row_chunks(n_perm, pairs):
        perms = np.argsort(rng.random((rows, n_conf)), axis=1)  # [rows, C]
        hits += _at_least_as_extreme(np.abs(_tau_b_rows(np.broadcast_to(x, perms.shape), y[perms])),
                                     abs(tau), 1.0)
    return (1 + hits) / (1 + n_perm), f"{n_perm} Monte Carlo"


def kendall_user_bootstrap(x_correct, x_n, y_correct, y_n, n_boot: int = 1000, n_perm: int = 2000,
                           seed: int = 0, confidence: float = 0.95) -> dict:
    """Kendall tau-b across C configurations between two accuracy axes measured on the same U users.

    x_correct [C, U]: correct pairs of configuration c for user u on axis x (e.g. RM accuracy); x_n [U] or
    [C, U]: that user's pairs; y_* likewise (e.g. policy accuracy); columns are the same users on both axes.
    Accuracy of c = sum_u correct[c, u] / sum_u n[c, u] (a generic per-user total with its n works too).
    tau and p_value: scipy's tau-b across the C points. CI: percentile bootstrap resampling users and
    recomputing both axes and tau; resamples with an undefined tau are dropped and counted in n_boot_undefined
    (CI None when fewer than half are defined, or with a single user). p_value_permutation: two-sided on |tau|
    over permutations of y across configurations (exact when C! <= n_perm).
    """
    xc, xn = _counts_and_totals("x_correct", x_correct, "x_n", x_n)  # [C, U] each
    yc, yn = _counts_and_totals("y_correct", y_correct, "y_n", y_n)  # [C, U] each
    if xc.shape != yc.shape:
        raise ValueError(f"x_correct {xc.shape} and y_correct {yc.shape} must be [C, U] over the same "
                         "configurations and users")
    n_boot = _check_int("n_boot", n_boot, 1)
    n_perm = _check_int("n_perm", n_perm, 1)
    confidence = _check_confidence(confidence)
    boot_rng, perm_rng = _streams(seed)
    n_conf, n_users = xc.shape
    x_acc, y_acc = xc.sum(1) / xn.sum(1), yc.sum(1) / yn.sum(1)  # [C], [C]
    point = kendall_tau_b(x_acc, y_acc)
    out = {"tau": point["tau"], "p_value": point["p_value"], "p_value_permutation": None, "ci_low": None,
           "ci_high": None, "n_points": n_conf, "n_users": n_users, "n_boot_undefined": None,
           "method": f"Kendall tau-b across configurations (scipy, p treats the {n_conf} points as independent)"}
    if point["tau"] is None:
        return out
    p_perm, perm_desc = _permutation_tau_p(x_acc, y_acc, point["tau"], n_perm, perm_rng)
    out["p_value_permutation"] = float(p_perm)
    boot_desc = "no user bootstrap CI with a single user"
    if n_users >= 2:
        taus = []
        pairs = n_conf * (n_conf - 1) // 2
        for w in _user_resample_counts(boot_rng, n_users, n_boot, width=pairs):  # w [chunk, U]
            with np.errstate(invalid="ignore", divide="ignore"):  # a resample may hold no pair of a config
                bx, by = (w @ xc.T) / (w @ xn.T), (w @ yc.T) / (w @ yn.T)  # [chunk, C] each
            taus.append(_tau_b_rows(bx, by))
        taus = np.concatenate(taus)  # [n_boot]
        defined = taus[np.isfinite(taus)]
        out["n_boot_undefined"] = int(n_boot - defined.size)
        if 2 * defined.size >= n_boot:
            out["ci_low"], out["ci_high"] = _percentile_ci(defined, confidence)
        boot_desc = f"{confidence:.0%} percentile bootstrap over users (n_boot={n_boot})"
    out["method"] += f"; {boot_desc}; permutation p over y across configurations ({perm_desc}); seed={seed}"
    return out


# ---------------------------------------------------------------- reliability

def split_half_reliability(correct, n, n_splits: int = 200, seed: int = 0) -> dict:
    """Split-half reliability of an accuracy axis across C configurations.

    correct [C, U]: per-configuration per-user counts of correct pairs; n [U] or [C, U]: pairs per user. Each
    split puts a random floor(U/2) users in half A and the rest in B; r = Pearson correlation across
    configurations of the accuracy vectors of A and B (splits where either vector is constant are skipped and
    counted in n_splits_undefined). Also takes a generic [C, U] matrix of per-user means (e.g. per-user mean
    ROUGE) with n = ones([U]): each half's value is then the mean over its users.

    Returns {"r_mean", "r_spearman_brown" (2r/(1+r) of r_mean; None when r_mean <= 0: Spearman-Brown steps up a
    positive half-test correlation, and a split-half r <= 0 means no reliability), "ci_low", "ci_high" (2.5 / 97.5
    percentiles of r over splits, a spread, not a CI), "n_splits", "n_splits_undefined", "n_points", "n_users", "method"};
    all r values are None with fewer than 2 users or 3 configurations (r of 2 points is +-1 whatever the data).
    """
    correct, n = _counts_and_totals("correct", correct, "n", n)  # [C, U] each
    n_splits = _check_int("n_splits", n_splits, 1)
    boot_rng, _ = _streams(seed)
    n_conf, n_users = correct.shape
    out = {"r_mean": None, "r_spearman_brown": None, "ci_low": None, "ci_high": None, "n_splits": n_splits,
           "n_splits_undefined": n_splits, "n_points": n_conf, "n_users": n_users,
           "method": f"split-half Pearson r across configurations, {n_splits} random user halves, seed={seed}"}
    if n_users < 2 or n_conf < 3:
        return out
    rs = []
    for rows in _row_chunks(n_splits, n_users):
        half_a = np.argsort(boot_rng.random((rows, n_users)), axis=1)[:, :n_users // 2]  # [rows, U//2]
        in_a = np.zeros((rows, n_users))
        np.put_along_axis(in_a, half_a, 1.0, axis=1)  # [rows, U] 1 = user in half A
        in_b = 1.0 - in_a
        with np.errstate(invalid="ignore", divide="ignore"):  # a half may hold no pair of a configuration
            acc_a = (in_a @ correct.T) / (in_a @ n.T)  # [rows, C]
            acc_b = (in_b @ correct.T) / (in_b @ n.T)  # [rows, C]
        rs.append(_pearson_rows(acc_a, acc_b))
    rs = np.concatenate(rs)  # [n_splits]
    defined = rs[np.isfinite(rs)]
    out["n_splits_undefined"] = int(n_splits - defined.size)
    if defined.size:
        r_mean = float(defined.mean())
        lo, hi = np.percentile(defined, [2.5, 97.5])
        out.update(r_mean=r_mean, ci_low=float(lo), ci_high=float(hi),
                   r_spearman_brown=2 * r_mean / (1 + r_mean) if r_mean > 0 else None)
    return out


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of a [B, C] vs b [B, C] -> [B]; NaN where a row is constant or holds NaN."""
    constant = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0) | ~np.isfinite(a + b).all(axis=1)
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac * bc).sum(axis=1) / np.sqrt((ac * ac).sum(axis=1) * (bc * bc).sum(axis=1))
    return np.where(constant, np.nan, np.clip(r, -1.0, 1.0))


# ---------------------------------------------------------------- LaMP's ROUGE

def lamp_rouge(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """Per-example ROUGE-1 / ROUGE-L F-measure as LaMP's evaluation computes them.

    LaMP strips predictions and references and calls HF `evaluate`'s "rouge", which scores each pair with
    rouge_score's RougeScorer(use_stemmer=False, default tokenizer) (score_multi over a one-reference list =
    score). LaMP reports evaluate's BootstrapAggregator mid (an unseeded bootstrap median of the mean), which
    the plain mean of these values matches up to that bootstrap's noise.
    """
    # Imported here so the statistics above need only numpy and scipy.
    from rouge_score import rouge_scorer

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    for name, texts in (("predictions", predictions), ("references", references)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"{name}[{i}] must be a str, got {type(t).__name__}")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    scores = [scorer.score(ref.strip(), pred.strip()) for pred, ref in zip(predictions, references)]
    return {t: [s[t].fmeasure for s in scores] for t in ROUGE_TYPES}
