"""The analysis (results.json) and report on synthetic stage outputs, each statistic checked independently:
Kendall tau per w with scipy, the personalization signal and paired comparisons by a brute-force loop over users
with an exact sign-flip enumeration, Holm by a direct loop."""
import itertools
import json
import types

import numpy as np
import pytest
import torch
from scipy import stats

from rgd_eval.analysis import analyse
from rgd_eval.build import load_build_stats
from rgd_eval.cli import main
from rgd_eval.io import read_json, write_json
from rgd_eval.lamp import DEFAULT_LAMP_DIR, LaMPDataset, load_lamp
from rgd_eval.metrics import accuracy_from_rewards, score_generation
from rgd_eval.preferences import build_pref_lamp, pair_sources
from rgd_eval.report import write_report
from rgd_eval.results import validate_results

WEIGHTS = [0.0, 1.0, 2.0]
CONFIGS = [("args", "global", "l2=1"), ("args", "global", "l2=0.01"), ("args", "per-user", "lam=1"),
           ("args", "vpl", "hidden=8"), ("token", "token-global", "rank=4"), ("token", "token-per-user", "lam=1")]


def _args(**kw):
    return types.SimpleNamespace(weights_list=WEIGHTS, n_boot=200, n_perm=500, seed=0, **kw)


def _counts(pairs, correct):
    out = {}
    for p, c in zip(pairs, correct):
        d = out.setdefault(p.user_id, {"correct": 0, "n": 0})
        d["correct"] += int(c)
        d["n"] += 1
    return out


def _study(rng):
    """Synthetic evals / scores with the pipeline's shapes on the shipped data's users (other-user negatives)."""
    full = load_lamp(DEFAULT_LAMP_DIR)
    keep = {s: sorted(full.users(s))[:8] for s in full.splits}  # 8 users per split: exact sign-flip references
    ds = LaMPDataset(full.task, full.root, {s: [x for x in qs if x.user_id in keep[s]] for s, qs in full.splits.items()})
    sources, _ = pair_sources(ds, 4)
    pref = build_pref_lamp(ds, sources, "other-user", seed=0, min_profile_pairs=2)
    q = {s: pref.select(s, "query") for s in ("train", "test")}
    configs = {}
    for rule, name, variant in CONFIGS:
        skill = rng.uniform(0.3, 0.9)
        rm = {s: accuracy_from_rewards({u: (rng.random(n) + skill, rng.random(n)) for u, n in
                                        ((u, sum(p.user_id == u for p in q[s])) for u in pref.users(s))})
              for s in ("train", "test")}
        pol = {}
        for s in ("train", "test"):
            correct = torch.from_numpy(rng.random((len(q[s]), len(WEIGHTS))) < skill)
            correct[:, 0] = torch.from_numpy(rng.random(len(q[s])) < 0.5)
            pol[s] = {"correct": correct, "ties": torch.zeros_like(correct),
                      "per_user": [_counts(q[s], correct[:, j].tolist()) for j in range(len(WEIGHTS))]}
        configs[f"{name}/{variant}"] = {"rule": rule, "name": name, "variant": variant, "hparams": {"v": variant},
                                        "scale": float(rng.uniform(0.5, 2)), "rm_test": rm["test"],
                                        "rm_validation": rm["train"], "policy_test": pol["test"],
                                        "policy_train": pol["train"], "validated_w": float(rng.choice([1.0, 2.0]))}
    selected = {}
    for c in configs.values():
        selected.setdefault(c["name"], c["variant"])
    golds = {x.id: x.gold for x in ds.splits["test"]}
    users_of = {x.id: x.user_id for x in ds.splits["test"]}
    words = {i: g.split() for i, g in golds.items()}
    preds = {"zero-shot": {i: "A headline" for i in golds},
             "icl": {i: " ".join(w[: max(1, len(w) // 2)]) for i, w in words.items()},
             "rgd/global/w=1": {i: " ".join(w[: int(rng.integers(0, len(w) + 1))]) or "x" for i, w in words.items()},
             "rgd/per-user/w=2": {i: " ".join(w[::2]) for i, w in words.items()}}
    scores = {s: score_generation(p, golds, users_of, n_boot=200) for s, p in preds.items()}
    return ds, pref, {"configs": configs, "selected": selected}, scores, users_of


def _holm_loop(ps):
    keys = sorted(ps, key=ps.get)
    m, out, run = len(keys), {}, 0.0
    for i, k in enumerate(keys):
        run = max(run, min(1.0, (m - i) * ps[k]))
        out[k] = run
    return out


def _exact_sign_flip(d):
    d = np.asarray(d, dtype=float)
    t = abs(d.mean())
    flips = [abs((d * np.array(s)).mean()) for s in itertools.product((1, -1), repeat=len(d))]
    return float(np.mean([f >= t - 1e-12 for f in flips]))


@pytest.fixture
def study(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    ds, pref, evals, scores, users_of = _study(rng)
    res = analyse(_args(), ds, pref, evals, scores, n_params=135_000_000, backend="cpp")
    return res, evals, scores, users_of, pref


def test_kendall_per_w_and_validated_match_scipy(study, fresh_seed):
    res, evals, *_ = study
    cfgs = list(evals["configs"].values())
    rm = [c["rm_test"]["overall"]["accuracy"] for c in cfgs]
    for j, w in enumerate(WEIGHTS[1:], start=1):
        pol = [float(c["policy_test"]["correct"][:, j].double().mean()) for c in cfgs]
        got = res["kendall"]["per_w"][f"{w:g}"]
        want = stats.kendalltau(rm, pol, variant="b")
        assert got["tau"] == pytest.approx(want.statistic), f"seed={fresh_seed}"
        assert got["p_value"] == pytest.approx(want.pvalue) and got["n_points"] == len(cfgs)
        assert got["n_users"] == 8 and set(got["reliability"]) == {"rm_accuracy", "policy_accuracy"}
    val = [float(c["policy_test"]["correct"][:, WEIGHTS.index(c["validated_w"])].double().mean()) for c in cfgs]
    assert res["kendall"]["validated"]["tau"] == pytest.approx(stats.kendalltau(rm, val, variant="b").statistic)
    assert "not independent" in res["kendall"]["pooled"]["dependence"]


def test_personalization_signal_is_paired_over_users(study, fresh_seed):
    res, evals, *_ = study
    c = evals["configs"]
    for method, base in (("per-user", "global/l2=1"), ("vpl", "global/l2=1"),
                         ("token-per-user", "token-global/rank=4")):
        a = c[f"{method}/{next(k.split('/')[1] for k in c if k.startswith(method + '/'))}"]["rm_test"]["per_user"]
        b = c[base]["rm_test"]["per_user"]
        d = [a[u]["accuracy"] - b[u]["accuracy"] for u in sorted(a)]
        got = res["personalization"][method]
        assert got["diff"] == pytest.approx(np.mean(d)), f"seed={fresh_seed}"
        assert got["p_value"] == pytest.approx(_exact_sign_flip(d)), f"seed={fresh_seed}"
        assert got["ci_low"] <= got["diff"] <= got["ci_high"]


def test_paired_comparisons_and_holm(study, fresh_seed):
    res, _, scores, users_of, _ = study
    tests = res["comparisons"]["tests"]
    assert set(tests) == {"icl - rgd/global/w=1", "icl - rgd/per-user/w=2", "rgd/global/w=1 - zero-shot",
                          "rgd/per-user/w=2 - zero-shot", "icl - zero-shot"}
    for name, t in tests.items():
        a, b = name.split(" - ")
        per_user = {}
        for i, u in users_of.items():
            per_user.setdefault(u, []).append(scores[a]["per_example"][i]["rouge1"] - scores[b]["per_example"][i]["rouge1"])
        d = [np.mean(v) for _, v in sorted(per_user.items())]
        assert t["diff"] == pytest.approx(np.mean(d)), f"seed={fresh_seed}"
        assert t["p_value"] == pytest.approx(_exact_sign_flip(d)), f"seed={fresh_seed}"
    want = _holm_loop({k: t["p_value"] for k, t in tests.items()})
    for k, t in tests.items():
        assert t["p_holm"] == pytest.approx(want[k])


def test_results_schema_rouge_and_paper_rows(study):
    res, *_ = study
    json.dumps(res, allow_nan=False)
    validate_results(res)
    assert res["data"]["splits"]["test"]["users"] == 8
    g = res["generation"]["icl"]
    assert g["rouge1"]["n_users"] == 8 and {"rouge1_stemmed", "rougeL_stemmed"} <= set(g)
    assert "per_example" not in g and len(res["generation_examples"]["icl"]) == 32
    claims = [r["claim"] for r in res["paper"]]
    assert any("Kendall" in c for c in claims) and any(">= 3B" in c for c in claims)
    size_row = next(r for r in res["paper"] if ">= 3B" in r["claim"])
    assert size_row["verdict"].startswith("cannot be tested at this model size")
    rgd = {k: v["rouge1"]["mean"] for k, v in res["generation"].items() if k.startswith("rgd/")}
    assert size_row["ours"]["best"] in rgd
    if not size_row["ours"]["best_is_validated"]:  # no validated system generated: best over all RGD systems
        assert rgd[size_row["ours"]["best"]] == max(rgd.values())
    del res["generation"]["icl"]["rougeL"]["ci_low"]
    with pytest.raises(ValueError, match="generation.icl.rougeL.ci_low"):
        validate_results(res)


def test_write_report_and_cli(study, tmp_path):
    res, *_ = study
    write_json(tmp_path / "results.json", res)
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    for needle in ("| zero-shot |", "| icl |", "| rgd/global/w=1 |", "tau-b", "users_skipped", "Personalization",
                   "paper beside us", "use_stemmer=False", "icl - zero-shot", "(selected)", "validated w", "oracle"):
        assert needle in md, needle
    for png in ("rm_vs_policy.png", "rouge.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "results.json", "rm_vs_policy.png",
                                                         "rouge.png"]
    assert write_report(read_json(tmp_path / "results.json"), tmp_path / "again")[0].exists()


def test_cli_ls_and_build_data(tmp_path, capsys):
    from rgd_eval.reward_models import METHODS

    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in METHODS) and "LaMP-7" in out and "lamp4_news" in out
    assert all(m in out for m in ("token-global", "token-per-user", "logratio-icl", "bon-block"))
    for preset in ("smollm2-135m (alias demo)", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b", "Apache-2.0",
                   "Gemma Terms of Use"):
        assert preset in out, preset
    raw = tmp_path / "raw.jsonl"
    rows = [{"authors": f"Author {a}", "headline": f"H{a}{k}", "short_description": f"D{a}{k}",
             "date": f"2020-01-{k + 1:02d}"} for a in range(4) for k in range(5)]
    rows.append({"authors": "X, AP", "headline": "h", "short_description": "d", "date": "2020-01-01"})
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["build-data", "--raw", str(raw), "--out", str(tmp_path / "out"), "--min-items", "4",
                 "--n-users", "3", "--n-train", "2", "--queries-per-user", "2", "--profile-cap", "2"]) == 0
    ds = load_lamp(tmp_path / "out", task="LaMP-4")
    assert ds.counts()["train"] == {"users": 2, "queries": 4, "profile_items": 4}
    assert load_build_stats(tmp_path / "out")["source"]["multi_author_or_wire"] == 1


@pytest.mark.parametrize("tau,lo,hi,verdict", [
    (0.20, 0.10, 0.30, "agrees"), (0.21, -0.38, 0.61, "consistent but not confirmed"),
    (-0.70, -0.80, 0.19, "inconclusive"), (-0.30, -0.50, -0.10, "disagrees: weaker"),
    (0.60, 0.40, 0.80, "disagrees: RM accuracy predicts"), (0.20, None, None, "cannot be tested")])
def test_kendall_verdict_reads_the_ci_not_only_the_point(tau, lo, hi, verdict):
    from rgd_eval.analysis import paper_beside_us

    res = {"kendall": {"validated": {"tau": tau, "ci_low": lo, "ci_high": hi, "n_points": 20, "n_users": 50}},
           "generation": {}, "comparisons": {"tests": {}}, "reward_models": {}}
    rows = paper_beside_us(res, 135_000_000)
    assert rows[0]["verdict"].startswith(verdict), rows[0]["verdict"]
    assert rows[-1]["verdict"].startswith("cannot be tested: ICL or RGD generation was not run")


@pytest.mark.parametrize("acc_a,acc_b,testable", [(199 / 200, 159 / 200, True), (199 / 200, 160 / 200, False),
                                                   (1.0, 0.8, True)])
def test_a_20_point_rm_accuracy_gap_counts_despite_float_rounding(acc_a, acc_b, testable):
    """0.995 - 0.795 is 0.19999999999999996 in floating point: a gap of 40 pairs in 200 is 20 points."""
    from rgd_eval.analysis import paper_beside_us

    def entry(acc):
        return {"x": {"rm_accuracy": acc, "validated_w": 1.0, "selected": True}}

    gen = {s: {"rouge1": {"mean": m}} for s, m in (("rgd/a/w=1", 0.10), ("rgd/b/w=1", 0.11), ("icl", 0.12))}
    res = {"kendall": {}, "generation": gen, "comparisons": {"tests": {}},
           "reward_models": {"a": entry(acc_a), "b": entry(acc_b)}}
    row = next(r for r in paper_beside_us(res, 135_000_000) if r["claim"].startswith("20-point"))
    assert row["verdict"].startswith("cannot be tested") != testable, row["verdict"]
