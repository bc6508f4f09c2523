"""Golden end-to-end test of `rgd-eval run` on the shipped data (2 users per split) with a tiny random model.

Every headline number is recomputed independently: ROUGE with rouge-score, Kendall with scipy, RM accuracy
from fresh features, policy accuracy by brute-force recomputation of every pi and r_u on full sequences.
The resume test interrupts a run mid-way and checks the rerun reuses the cache and gives the same results.
"""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tiny_models

from tiny_models import make_tokenizer, save_tiny  # noqa: E402

ARGS = ["--limit", "2", "--max-profile-pairs", "4", "--min-profile-pairs", "2", "--weights", "0,1,3",
        "--gen-weights", "1,3", "-k", "3", "--max-new-tokens", "5", "--n-boot", "50", "--batch-size", "4"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from rgd_eval.lamp import DATA_DIR

    # A tokenizer trained on the shipped text keeps sequences short, so the brute-force checks stay cheap.
    news = [json.loads(line) for line in (DATA_DIR / "news_category_v3_lamp4_subset.jsonl").read_text().splitlines()]
    tok = make_tokenizer(vocab_size=3000, extra_corpus=[r["headline"] + " " + r["short_description"] for r in news])
    return save_tiny(tmp_path_factory.mktemp("m") / "llama", "llama", seed=5, tokenizer=tok)


def run_eval(model, out, extra=()):
    from rgd_eval.cli import main

    assert main(["run", "--model", str(model), "--output-dir", str(out), *ARGS, *extra]) == 0
    return json.loads((out / "results.json").read_text())


def strip_volatile(results):
    r = json.loads(json.dumps(results))
    for key in ("elapsed_s", "output_dir"):
        r["config"].pop(key, None)
    return r


@pytest.fixture(scope="module")
def golden(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run_eval(tiny_model, out)


def test_outputs_exist_and_schema(golden):
    out, res = golden
    for name in ("results.json", "samples.jsonl", "pairs.jsonl", "report.md", "rm_vs_policy.png", "rouge.png"):
        assert (out / name).is_file(), name
    assert set(res["generation"]) >= {"zero-shot", "icl", "rgd/global/w=1", "rgd/vpl/w=3", "rgd/token-global/w=1",
                                      "rgd/token-per-user/w=3", "rgd/logratio-icl/w=1", "bon-block/per-user"}
    assert {e["rule"] for v in res["reward_models"].values() for e in v.values()} == {"args", "token", "logratio"}
    assert set(res["kendall"]["per_rule"]) == {"args", "token", "logratio"}
    assert not any(s.startswith("bon-block") for s in res["reward_models"])
    assert "rgd/global/w=0" not in res["generation"]
    assert res["data"]["splits"]["test"]["users"] == 2
    pred = json.loads((out / "predictions" / "icl.json").read_text())
    assert pred["task"] == "LaMP_4" and len(pred["golds"]) == res["generation"]["icl"]["n"]
    assert res["config"]["versions"]["torch"] and res["config"]["seed"] == 0
    assert "RM accuracy" in (out / "report.md").read_text() or "rm" in (out / "report.md").read_text().lower()


def test_rouge_matches_rouge_score(golden):
    from rouge_score import rouge_scorer

    out, res = golden
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    per_system = {}
    for line in (out / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        sc = scorer.score(s["gold"], s["prediction"])
        per_system.setdefault(s["system"], []).append(sc["rouge1"].fmeasure)
        assert s["rougeL"] == pytest.approx(sc["rougeL"].fmeasure)
    for system, vals in per_system.items():
        assert res["generation"][system]["rouge1"]["mean"] == pytest.approx(sum(vals) / len(vals))


def test_kendall_matches_scipy(golden):
    from scipy.stats import kendalltau

    _, res = golden
    xs, ys = [], []
    for variants in res["reward_models"].values():
        for e in variants.values():
            for w, acc in e["policy_accuracy"].items():
                if float(w) != 0:
                    xs.append(e["rm_accuracy"])
                    ys.append(acc)
    want = kendalltau(xs, ys, variant="b")
    got = res["kendall"]
    assert got["n"] == len(xs)
    if math.isnan(want.statistic):
        assert got["tau"] is None
    else:
        assert got["tau"] == pytest.approx(want.statistic) and got["p_value"] == pytest.approx(want.pvalue)


@torch.no_grad()
def brute_force_S(policy, x, y, w_head, b_head, weight, k):
    """S(y) from the definition, every pi and r_u computed on full uncached sequences (HF modules only)."""
    terms = []
    for t in range(len(y)):
        prefix = x + y[:t]
        lp = torch.log_softmax(policy.hf_model(input_ids=torch.tensor([prefix])).logits[0, -1].double(), -1)
        top = torch.topk(lp, k).indices.tolist()
        cands = top + ([y[t]] if y[t] not in top else [])
        h = policy.base(input_ids=torch.tensor([prefix + [v] for v in cands])).last_hidden_state[:, -1].double()
        s = {v: float(lp[v]) + weight * (float(h[j] @ w_head.double()) + b_head) for j, v in enumerate(cands)}
        terms.append(s[y[t]] - math.log(sum(math.exp(v) for v in s.values())))
    return sum(terms) / len(terms)


def test_rm_and_policy_accuracy_match_brute_force(golden, tiny_model):
    from rgd_engine import Engine, HeadBank
    from rgd_engine.models import load_causal_lm

    out, res = golden
    engine = Engine(load_causal_lm(str(tiny_model)))
    pairs = [json.loads(l) for l in (out / "pairs.jsonl").read_text().splitlines()]
    test_q = [p for p in pairs if p["split"] == "test" and p["kind"] == "query"]
    assert test_q
    method = "per-user"
    variant = res["config"]["selected_variants"][method]
    entry = res["reward_models"][method][variant]
    bank = HeadBank.from_file(out / "heads" / f"{method}.safetensors")
    enc = lambda t: engine.tokenizer(" " + t.strip(), add_special_tokens=False)["input_ids"]  # noqa: E731
    rm_correct = pol_correct = 0
    for p in test_q:
        w_u, b_u = bank.head(p["user"])
        x = engine.encode(p["prompt"])
        h = engine.features([x, x], [enc(p["chosen"]), enc(p["rejected"])])
        rm_correct += float(h[0] @ w_u + b_u) > float(h[1] @ w_u + b_u)
        s_w = brute_force_S(engine.policy, x, enc(p["chosen"]), w_u, b_u, 1.0, 3)
        s_l = brute_force_S(engine.policy, x, enc(p["rejected"]), w_u, b_u, 1.0, 3)
        pol_correct += s_w > s_l
    assert entry["rm_accuracy"] == pytest.approx(rm_correct / len(test_q))
    assert entry["policy_accuracy"]["1"] == pytest.approx(pol_correct / len(test_q))


@torch.no_grad()
def brute_force_rule_S(policy, x, y, reward_of, weight, k):
    """S(y) from the definition for a per-token reward reward_of(prefix, v) (token and logratio rules)."""
    terms = []
    for t in range(len(y)):
        prefix = x + y[:t]
        lp = torch.log_softmax(policy.hf_model(input_ids=torch.tensor([prefix])).logits[0, -1].double(), -1)
        top = torch.topk(lp, k).indices.tolist()
        cands = top + ([y[t]] if y[t] not in top else [])
        s = {v: float(lp[v]) + weight * reward_of(prefix, v) for v in cands}
        terms.append(s[y[t]] - math.log(sum(math.exp(v) for v in s.values())))
    return sum(terms) / len(terms)


def test_token_and_logratio_accuracies_match_brute_force(golden, tiny_model):
    from rgd_engine import Engine, load_bank
    from rgd_engine.models import load_causal_lm

    out, res = golden
    engine = Engine(load_causal_lm(str(tiny_model)))
    policy = engine.policy
    pairs = [json.loads(l) for l in (out / "pairs.jsonl").read_text().splitlines()]
    test_q = [p for p in pairs if p["split"] == "test" and p["kind"] == "query"]
    enc = lambda t: engine.tokenizer(" " + t.strip(), add_special_tokens=False)["input_ids"]  # noqa: E731
    E = policy.lm_head_weight.detach().double()
    bank = load_bank(out / "heads" / "token-per-user.safetensors")
    entry = res["reward_models"]["token-per-user"][res["config"]["selected_variants"]["token-per-user"]]
    lr_entry = next(iter(res["reward_models"]["logratio-icl"].values()))

    def h_last(ids):
        return policy.base(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].double()

    def lp_last(ids):
        return torch.log_softmax(policy.hf_model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)

    counts = {"tok_rm": 0, "tok_pol": 0, "lr_rm": 0, "lr_pol": 0}
    for p in test_q:
        P, Q = (t.double() for t in bank.head(p["user"]))
        A = P.t() @ Q
        x, cond = engine.encode(p["prompt"]), engine.encode(p["cond_prompt"])
        tok_r = lambda pre, v: float(E[v] @ (A @ h_last(pre)))  # noqa: E731
        lr_r = lambda pre, v: float(lp_last(cond + pre[len(x):])[v] - lp_last(pre)[v])  # noqa: E731
        yw, yl = enc(p["chosen"]), enc(p["rejected"])
        R = {name: [sum(fn(x + y[:t], y[t]) for t in range(len(y))) for y in (yw, yl)]
             for name, fn in (("tok", tok_r), ("lr", lr_r))}
        counts["tok_rm"] += R["tok"][0] > R["tok"][1]
        counts["lr_rm"] += R["lr"][0] > R["lr"][1]
        counts["tok_pol"] += brute_force_rule_S(policy, x, yw, tok_r, 1.0, 3) > brute_force_rule_S(policy, x, yl, tok_r, 1.0, 3)
        counts["lr_pol"] += brute_force_rule_S(policy, x, yw, lr_r, 1.0, 3) > brute_force_rule_S(policy, x, yl, lr_r, 1.0, 3)
    n = len(test_q)
    assert entry["rm_accuracy"] == pytest.approx(counts["tok_rm"] / n)
    assert entry["policy_accuracy"]["1"] == pytest.approx(counts["tok_pol"] / n)
    assert lr_entry["rm_accuracy"] == pytest.approx(counts["lr_rm"] / n)
    assert lr_entry["policy_accuracy"]["1"] == pytest.approx(counts["lr_pol"] / n)


def test_interrupted_run_resumes_to_same_results(golden, tiny_model, tmp_path, monkeypatch):
    import rgd_eval.pipeline as pipeline

    _, want = golden
    real = pipeline.generate_texts

    def crash_at_icl(engine, run_dir, name, *a, **kw):
        if name == "gen-icl":
            raise KeyboardInterrupt("simulated interruption")
        return real(engine, run_dir, name, *a, **kw)

    monkeypatch.setattr(pipeline, "generate_texts", crash_at_icl)
    with pytest.raises(KeyboardInterrupt):
        run_eval(tiny_model, tmp_path)
    cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    assert any(n.startswith("policy-outputs") for n in cached) and any(n.startswith("trees") for n in cached)
    assert not (tmp_path / "results.json").exists()
    monkeypatch.setattr(pipeline, "generate_texts", real)
    got = run_eval(tiny_model, tmp_path)
    for name, mtime in cached.items():  # finished stages were reused, not recomputed
        assert (tmp_path / "cache" / name).stat().st_mtime_ns == mtime
    assert strip_volatile(got) == strip_volatile(want)


def test_bad_data_dir_is_a_clear_error(tiny_model, tmp_path):
    from rgd_eval.cli import main
    from rgd_eval.lamp import LaMPFormatError

    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "test_questions.json").write_text("[{\"id\": \"q1\", \"input\": \"x\"")  # truncated JSON
    (bad / "test_outputs.json").write_text('{"task": "LaMP_4", "golds": []}')
    with pytest.raises(LaMPFormatError, match="test_questions.json"):
        main(["run", "--model", str(tiny_model), "--data", str(bad), "--output-dir", str(tmp_path / "o")])
