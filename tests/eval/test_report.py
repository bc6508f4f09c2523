import json
import math

import pytest
import torch
from scipy import stats

from rgd_eval.build import load_build_stats
from rgd_eval.cli import main
from rgd_eval.io import read_json, write_json
from rgd_eval.lamp import DEFAULT_LAMP_DIR, load_lamp
from rgd_eval.metrics import rm_accuracy, score_generation
from rgd_eval.preferences import build_pref_lamp, features_by_user
from rgd_eval.report import write_report
from rgd_eval.results import data_summary, make_results, rm_entry, validate_results
from rgd_eval.reward_models import METHODS, make_method, variant_name, variants


def _study(gen):
    """The model-free half of `run`, with random features and fake policy numbers in place of the engine."""
    ds = load_lamp(DEFAULT_LAMP_DIR)
    pref = build_pref_lamp(ds, "other-user", seed=0)
    d = 16
    # A weak shared preference direction, so the RM variants' accuracies differ (pure noise often ties them all)
    taste = 0.25 * torch.randn(d, generator=gen)
    feats = {}
    for split in ("train", "test"):
        for kind in ("profile", "query"):
            pairs = pref.select(split, kind)
            feats[split, kind] = features_by_user(pairs, torch.randn(len(pairs), d, generator=gen) + taste,
                                                  torch.randn(len(pairs), d, generator=gen))
    reward_models = {}
    for name in ("global", "per-user"):
        for hp in variants(name)[:2]:
            m = make_method(name, hp).fit(feats["train", "profile"], seed=0)
            acc = rm_accuracy(m.heads_for(feats["test", "profile"]), feats["test", "query"])
            pol = {w: float(torch.rand(1, generator=gen)) for w in (0.0, 0.5, 1.0)}
            pol[0.0] = 0.5
            reward_models.setdefault(name, {})[variant_name(hp)] = rm_entry(hp, acc, pol)
    golds = {q.id: q.gold for q in ds.splits["test"]}
    generation = {"zero-shot": score_generation({i: "A headline" for i in golds}, golds, n_boot=200),
                  "icl": score_generation({i: g.split(" ", 1)[0] for i, g in golds.items()}, golds, n_boot=200),
                  "rgd/global/w=1": score_generation(dict(golds), golds, n_boot=200)}
    data = data_summary(ds, pref, load_build_stats(DEFAULT_LAMP_DIR))
    return make_results({"model": "none (test)", "seed": 0}, data, reward_models, generation)


def test_results_schema_and_kendall(gen):
    res = _study(gen)
    json.dumps(res, allow_nan=False)
    assert res["data"]["splits"]["test"]["users"] == 8 and res["data"]["splits"]["test"]["query_pairs"] == 48
    assert res["data"]["splits"]["train"]["pairs"] == 323 + 96
    assert res["data"]["build"]["authors_skipped_too_few_items"] == 381
    pts = [(e["rm_accuracy"], e["policy_accuracy"][w]) for v in res["reward_models"].values()
           for e in v.values() for w in ("0.5", "1")]
    ref = stats.kendalltau([p[0] for p in pts], [p[1] for p in pts], variant="b").statistic
    assert res["kendall"]["tau"] == (None if math.isnan(ref) else pytest.approx(ref)) and res["kendall"]["n"] == 8
    assert res["kendall"]["per_w"]["0"]["tau"] is None  # w = 0: every configuration is the base policy
    assert res["generation"]["rgd/global/w=1"]["rouge1"]["mean"] == pytest.approx(1.0)
    assert "per_example" not in res["generation"]["icl"] and len(res["generation_examples"]["icl"]) == 48


def test_validate_names_missing_key(gen):
    res = _study(gen)
    del res["generation"]["icl"]["rougeL"]["ci_low"]
    with pytest.raises(ValueError, match="generation.icl.rougeL.ci_low"):
        validate_results(res)


def test_write_report_and_cli(gen, tmp_path, capsys):
    res = _study(gen)
    write_json(tmp_path / "results.json", res)
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    for needle in ("| zero-shot |", "| icl |", "| rgd/global/w=1 |", "Kendall tau-b", "users_skipped",
                   "381 skipped", "use_stemmer=True", "lam=10"):
        assert needle in md, needle
    for png in ("rm_vs_policy.png", "rouge.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "results.json", "rm_vs_policy.png",
                                                         "rouge.png"]
    assert write_report(read_json(tmp_path / "results.json"), tmp_path / "again")[0].exists()


def test_cli_ls_and_build_data(tmp_path, capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in METHODS) and "LaMP-7" in out and "lamp4_news" in out
    assert all(m in out for m in ("token-global", "token-per-user", "logratio-icl", "bon-block"))
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
