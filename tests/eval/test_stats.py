"""rgd_eval.stats against independent computations written here: per-resample Python loops that follow the
module's documented draw protocol (users sorted by id, one multinomial row per resample, ...), scipy, exact
enumerations, and properties that do not depend on the protocol at all (a clustered CI is wider than an
i.i.d. one when items of a user agree; reliability of a noiseless axis is 1 and of pure noise about 0)."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from rgd_eval.stats import (holm, kendall_tau_b, kendall_user_bootstrap, paired_user_difference,
                            split_half_reliability, user_cluster_bootstrap)


def _streams(seed):
    boot, perm = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(boot), np.random.default_rng(perm)


def _clustered(rng, n_users, lo=2, hi=7):
    """Per-item values whose users differ a lot (user effect) -> values [n], users [n] (ids not in sorted order)."""
    users, values = [], []
    for u in rng.permutation(n_users):
        effect = rng.normal()
        for _ in range(int(rng.integers(lo, hi))):
            users.append(f"user{u:03d}")
            values.append(effect + 0.1 * rng.normal())
    return np.array(values), users


def test_user_cluster_bootstrap_equals_a_resampling_loop(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    values, users = _clustered(rng, 9)
    n_boot, seed = 300, int(rng.integers(0, 1000))
    got = user_cluster_bootstrap(values, users, n_boot=n_boot, seed=seed)
    ids = sorted(set(users))
    items = {u: [v for v, w in zip(values, users) if w == u] for u in ids}
    boot_rng, _ = _streams(seed)
    means = []
    for _ in range(n_boot):  # one resample at a time: concatenate each drawn user's items
        counts = boot_rng.multinomial(len(ids), [1 / len(ids)] * len(ids))
        pooled = [v for u, c in zip(ids, counts) for _ in range(c) for v in items[u]]
        means.append(sum(pooled) / len(pooled))
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert got["mean"] == pytest.approx(values.mean()), f"seed {fresh_seed}"
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi)), f"seed {fresh_seed}"
    assert got["n_users"] == 9 and got["n"] == len(values)


def test_clustered_ci_is_wider_than_an_iid_ci_and_near_the_cluster_se(fresh_seed):
    """Independent of the draw protocol: items of a user nearly agree, so the information is in the users."""
    rng = np.random.default_rng(fresh_seed)
    n_users, per_user = 40, 5
    users = [f"u{u}" for u in range(n_users) for _ in range(per_user)]
    values = np.repeat(rng.normal(size=n_users), per_user) + 0.01 * rng.normal(size=n_users * per_user)
    got = user_cluster_bootstrap(values, users, n_boot=4000, seed=1)
    width = got["ci_high"] - got["ci_low"]
    cluster_se = values.reshape(n_users, per_user).mean(1).std(ddof=1) / math.sqrt(n_users)
    iid_se = values.std(ddof=1) / math.sqrt(values.size)
    assert width == pytest.approx(2 * 1.96 * cluster_se, rel=0.15), f"seed {fresh_seed}"
    assert width > 1.8 * 2 * 1.96 * iid_se, f"seed {fresh_seed}"  # sqrt(5) ~ 2.2x wider than i.i.d.


def test_paired_user_difference_equals_loops_exact_and_monte_carlo(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    for n_users in (7, 20):  # exact enumeration (<= 16 users), then Monte Carlo flips
        _, users = _clustered(rng, n_users)
        a = rng.random(len(users)) + 0.1
        b = rng.random(len(users))
        seed, n_boot, n_perm = int(rng.integers(0, 1000)), 200, 500
        got = paired_user_difference(a, b, users, n_boot=n_boot, n_perm=n_perm, seed=seed)
        ids = sorted(set(users))
        d = np.array([np.mean([x - y for x, y, w in zip(a, b, users) if w == u]) for u in ids])
        assert got["diff"] == pytest.approx(d.mean()), f"seed {fresh_seed}"
        boot_rng, perm_rng = _streams(seed)
        boots = [float(boot_rng.multinomial(n_users, [1 / n_users] * n_users) @ d / n_users) for _ in range(n_boot)]
        assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])))
        t = abs(d.mean())
        if n_users <= 16:
            null = [abs(np.mean(d * np.array(s))) for s in itertools.product((1, -1), repeat=n_users)]
            want = np.mean([x >= t - 1e-12 for x in null])
        else:
            hits = sum(abs(np.mean(d * np.where(perm_rng.random(n_users) < 0.5, -1.0, 1.0))) >= t - 1e-12
                       for _ in range(n_perm))
            want = (1 + hits) / (1 + n_perm)
        assert got["p_value"] == pytest.approx(want), f"seed {fresh_seed}, {n_users} users"
        assert got["exact"] == (n_users <= 16)


def test_holm_equals_its_definition(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    ps = {f"t{i}": float(rng.random() ** 2) for i in range(7)}
    ps["undefined"] = None
    got = holm(ps)
    order = sorted((k for k in ps if ps[k] is not None), key=lambda k: ps[k])
    m = len(order)
    for i, k in enumerate(order):
        want = max(min(1.0, (m - j) * ps[order[j]]) for j in range(i + 1))
        assert got[k] == pytest.approx(want), f"seed {fresh_seed}"
    assert got["undefined"] is None


def test_kendall_tau_b_is_scipys_and_none_when_undefined(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    x, y = rng.integers(0, 4, 12), rng.integers(0, 4, 12)  # ties on both axes
    want = sps.kendalltau(x, y, variant="b")
    got = kendall_tau_b(x, y)
    assert (got["tau"], got["p_value"]) == pytest.approx((want.statistic, want.pvalue)), f"seed {fresh_seed}"
    assert kendall_tau_b([1, 1, 1], [1, 2, 3])["tau"] is None


def _tau_b(x, y):
    """Kendall tau-b by its definition, a double loop."""
    conc = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            conc += sx * sy
            tx += sx != 0
            ty += sy != 0
    return conc / math.sqrt(tx * ty) if tx and ty else float("nan")


def test_kendall_user_bootstrap_equals_loops(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    n_conf, n_users = 5, 8
    n = rng.integers(2, 6, n_users)  # pairs per user
    xc = rng.binomial(n, rng.uniform(0.3, 0.9, (n_conf, 1)))  # [C, U]
    yc = rng.binomial(n, rng.uniform(0.3, 0.9, (n_conf, 1)))
    seed, n_boot = int(rng.integers(0, 1000)), 150
    got = kendall_user_bootstrap(xc, n, yc, n, n_boot=n_boot, n_perm=1000, seed=seed)
    x_acc, y_acc = xc.sum(1) / n.sum(), yc.sum(1) / n.sum()
    tau = _tau_b(x_acc, y_acc)
    if math.isnan(tau):
        assert got["tau"] is None
        return
    assert got["tau"] == pytest.approx(sps.kendalltau(x_acc, y_acc, variant="b").statistic)
    assert got["tau"] == pytest.approx(tau), f"seed {fresh_seed}"
    perms = list(itertools.permutations(range(n_conf)))  # 5! = 120 <= n_perm: exact
    want_p = np.mean([abs(_tau_b(x_acc, y_acc[list(p)])) >= abs(tau) - 1e-12 for p in perms])
    assert got["p_value_permutation"] == pytest.approx(want_p), f"seed {fresh_seed}"
    boot_rng, _ = _streams(seed)
    taus = []
    for _ in range(n_boot):
        w = boot_rng.multinomial(n_users, [1 / n_users] * n_users)
        taus.append(_tau_b((xc * w).sum(1) / (n * w).sum(), (yc * w).sum(1) / (n * w).sum()))
    defined = [t for t in taus if not math.isnan(t)]
    assert got["n_boot_undefined"] == n_boot - len(defined), f"seed {fresh_seed}"
    if 2 * len(defined) >= n_boot:
        assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(np.quantile(defined, [0.025, 0.975])))


def test_split_half_reliability_equals_a_loop_and_behaves(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    n_conf, n_users, n_splits = 6, 11, 50
    n = rng.integers(3, 8, n_users)
    correct = rng.binomial(n, rng.uniform(0.1, 0.9, (n_conf, 1)))  # [C, U]
    seed = int(rng.integers(0, 1000))
    got = split_half_reliability(correct, n, n_splits=n_splits, seed=seed)
    boot_rng, _ = _streams(seed)
    rs = []
    for _ in range(n_splits):
        half_a = set(np.argsort(boot_rng.random(n_users))[:n_users // 2].tolist())
        a = [u for u in range(n_users) if u in half_a]
        b = [u for u in range(n_users) if u not in half_a]
        acc_a, acc_b = correct[:, a].sum(1) / n[a].sum(), correct[:, b].sum(1) / n[b].sum()
        if np.ptp(acc_a) > 0 and np.ptp(acc_b) > 0:
            rs.append(sps.pearsonr(acc_a, acc_b).statistic)
    assert got["n_splits_undefined"] == n_splits - len(rs), f"seed {fresh_seed}"
    r = float(np.mean(rs))
    assert got["r_mean"] == pytest.approx(r), f"seed {fresh_seed}"
    assert got["r_spearman_brown"] == (pytest.approx(2 * r / (1 + r)) if r > 0 else None), f"seed {fresh_seed}"
    # a noiseless axis (every user sees the same accuracy per configuration) is perfectly reliable
    exact = np.outer(np.arange(1, n_conf + 1), np.full(n_users, 2.0))
    assert split_half_reliability(exact, np.full(n_users, 10.0), seed=seed)["r_mean"] == pytest.approx(1.0)
    # 40 configurations that differ only by binomial noise: r near 0 (its sd over data sets is about 0.11);
    # the same noise around accuracies spread over [0.2, 0.8]: r near 1
    flat = rng.binomial(20, 0.5, (40, 200))
    spread = rng.binomial(20, np.linspace(0.2, 0.8, 40)[:, None], (40, 200))
    assert abs(split_half_reliability(flat, np.full(200, 20), n_splits=100, seed=seed)["r_mean"]) < 0.5
    assert split_half_reliability(spread, np.full(200, 20), n_splits=100, seed=seed)["r_mean"] > 0.9


@pytest.mark.parametrize("call, needle", [
    (lambda: user_cluster_bootstrap([1.0, float("nan")], ["a", "b"]), "non-finite"),
    (lambda: user_cluster_bootstrap([1.0, 2.0], ["a"]), "users has 1 entries"),
    (lambda: paired_user_difference([1.0], [1.0, 2.0], ["a"]), "paired per item"),
    (lambda: holm({"a": 1.5}), r"p_values\[.a.\] must be None or a number in \[0, 1\]"),
    (lambda: split_half_reliability([[1, 2]], [0, 0]), "sums to 0"),
    (lambda: user_cluster_bootstrap([1.0], ["a"], seed=-1), "seed"),
])
def test_bad_inputs_name_the_argument(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


def test_split_half_reliability_is_none_where_the_halves_do_not_correlate():
    """Spearman-Brown steps up a positive half-test r; two users whose accuracies run opposite (r = -1 in every
    split) have no reliability, not a stepped-up negative one. The report says so with the raw r."""
    from rgd_eval.report import _reliability

    correct = np.array([[1, 9], [5, 5], [9, 1]])  # [C = 3, U = 2] of 10 pairs each
    got = split_half_reliability(correct, np.full(2, 10), n_splits=20)
    assert got["r_mean"] == pytest.approx(-1.0) and got["r_spearman_brown"] is None
    assert _reliability({"r_mean": -0.46, "r_spearman_brown": None}) == "none (r = -0.46)"
    assert _reliability({"r_mean": 0.5, "r_spearman_brown": 2 / 3}) == "0.667"
