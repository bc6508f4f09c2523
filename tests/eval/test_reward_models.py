import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from rgd_eval.metrics import rm_accuracy
from rgd_eval.reward_models import (METHODS, PairFeatures, make_method, stack_heads, variant_name, variants)


def _pairs(w: torch.Tensor, n: int, gen, scale=None, margin=0.5) -> PairFeatures:
    """n clearly separable pairs for true head w: |w_hat . (a - b)| > margin; chosen = higher reward."""
    d = len(w)
    a, b = torch.randn(4 * n, d, generator=gen), torch.randn(4 * n, d, generator=gen)
    m = (a - b) @ (w / w.norm())
    keep = m.abs() > margin
    a, b, m = a[keep][:n], b[keep][:n], m[keep][:n]
    assert len(m) == n
    if scale is not None:  # anisotropic raw features, as LM hidden states are
        a, b = a / scale, b / scale
    up = (m > 0)[:, None]
    return PairFeatures(torch.where(up, a, b), torch.where(up, b, a))


def _users(ws: dict, n: int, gen, scale=None) -> dict:
    return {u: _pairs(w, n, gen, scale) for u, w in ws.items()}


def _acc(method, support, held):
    return rm_accuracy(method.heads_for(support), held)["overall"]["accuracy"]


D = 24


def test_interface_variants_and_heads(gen):
    ws = {f"u{i}": torch.randn(D, generator=gen) for i in range(4)}
    data = _users(ws, 20, gen)
    for name in METHODS:
        assert len(variants(name)) >= 3
        names = {variant_name(v) for v in variants(name)}
        assert len(names) == len(variants(name))
        heads = make_method(name, variants(name)[0]).fit(data, seed=0).heads_for(data)
        assert sorted(heads) == sorted(data)
        for w, b in heads.values():
            assert w.shape == (D,) and w.dtype == torch.float32 and b == 0.0 and torch.isfinite(w).all()
        W, bb = stack_heads(heads, sorted(data))
        assert W.shape == (4, D) and torch.equal(W[1], heads["u1"][0]) and bb.abs().sum() == 0
    with pytest.raises(KeyError):
        variants("nope")


def test_global_matches_independent_optimizer(gen):
    """GlobalBT minimises mean BT + l2/2 ||w_std||^2 on standardised features; solve the same problem in raw
    coordinates with scipy (w_raw = w_std / s) and compare."""
    ws = {f"u{i}": torch.randn(D, generator=gen) for i in range(3)}
    scale = torch.rand(D, generator=gen) * 3 + 0.2
    data = _users(ws, 30, gen, scale)
    l2 = 0.05
    m = make_method("global", {"l2": l2}).fit(data, seed=0)
    diffs = torch.cat([data[u].diff() for u in sorted(data)]).numpy()
    s = diffs.std(axis=0)

    def f(v):
        z = diffs @ v
        loss = np.logaddexp(0, -z).mean() + 0.5 * l2 * np.sum((v * s) ** 2)
        grad = -(diffs * (1 / (1 + np.exp(z)))[:, None]).mean(0) + l2 * v * s ** 2
        return loss, grad

    ref = minimize(f, np.zeros(D), jac=True, method="BFGS", options={"gtol": 1e-10, "maxiter": 10000}).x
    w = m.heads_for(data)["u0"][0].double().numpy()
    np.testing.assert_allclose(w, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("name", ["global", "per-user", "lore", "vpl"])
def test_every_method_fits_a_shared_preference(name, gen):
    """All users share one head: every method reaches >= 0.9 held-out accuracy, on train and on new users."""
    w = torch.randn(D, generator=gen)
    scale = torch.rand(D, generator=gen) * 5 + 0.1
    train = _users({f"u{i}": w for i in range(10)}, 30, gen, scale)
    test_support = _users({f"t{i}": w for i in range(4)}, 30, gen, scale)
    held_train = _users({u: w for u in train}, 40, gen, scale)
    held_test = _users({u: w for u in test_support}, 40, gen, scale)
    m = make_method(name, {}).fit(train, seed=0)
    assert _acc(m, train, held_train) >= 0.9
    assert _acc(m, test_support, held_test) >= 0.9


def test_per_user_beats_global_when_users_disagree(gen):
    w = torch.randn(D, generator=gen)
    ws = {f"u{i}": (w if i % 2 else -w) for i in range(8)}
    support, held = _users(ws, 80, gen), _users(ws, 40, gen)
    g = make_method("global", {}).fit(support, seed=0)
    p = make_method("per-user", {"lam": 0.01}).fit(support, seed=0)
    acc_g, acc_p = _acc(g, support, held), _acc(p, support, held)
    assert acc_p >= 0.9 and acc_g <= 0.7 and acc_p > acc_g + 0.2
    # strong regularisation collapses per-user heads onto the global head
    stiff = make_method("per-user", {"lam": 1e6}).fit(support, seed=0).heads_for(support)
    for u, (wu, _) in g.heads_for(support).items():
        torch.testing.assert_close(stiff[u][0], wu, rtol=1e-3, atol=1e-3 * wu.abs().max().item())


def _two_cluster_setup(gen, n_train=12, n_test=4, n_support=24):
    """Users whose heads are mixtures of two (nearly opposite) directions: one shared axis is not enough."""
    b1 = torch.randn(D, generator=gen)
    b2 = -b1 + 0.3 * torch.randn(D, generator=gen)
    mix = lambda i: b1 if i % 2 else b2  # noqa: E731
    train = {f"u{i}": mix(i) for i in range(n_train)}
    test = {f"t{i}": mix(i) for i in range(n_test)}
    return (_users(train, 30, gen), _users(train, 40, gen), _users(test, n_support, gen), _users(test, 40, gen))


@pytest.mark.parametrize("name,hp", [("lore", {"m": 2}), ("vpl", {"hidden": 8, "epochs": 200})])
def test_shared_structure_methods_personalise_new_users(name, hp, gen):
    train, held_train, test_support, held_test = _two_cluster_setup(gen)
    m = make_method(name, hp).fit(train, seed=0)
    g = make_method("global", {}).fit(train, seed=0)
    assert _acc(m, train, held_train) >= 0.9
    acc_new = _acc(m, test_support, held_test)
    assert acc_new >= 0.9 and acc_new > _acc(g, test_support, held_test) + 0.2


@pytest.mark.parametrize("name", ["lore", "vpl"])
def test_seeded_methods_are_deterministic(name, gen):
    train, _, test_support, _ = _two_cluster_setup(gen, n_train=6, n_test=2)
    hp = variants(name)[0]
    h1 = make_method(name, hp).fit(train, seed=3).heads_for(test_support)
    h2 = make_method(name, hp).fit(train, seed=3).heads_for(test_support)
    for u in h1:
        assert torch.equal(h1[u][0], h2[u][0])


def test_pair_features_validates_shapes():
    with pytest.raises(ValueError):
        PairFeatures(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError):
        PairFeatures(torch.zeros(0, 4), torch.zeros(0, 4))
