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

# float32: the brute-force references below recompute in float32 / float64 (bf16, the default, runs in the LaMP-7 test)
ARGS = ["--dtype", "float32", "--users", "2", "--max-profile-pairs", "4", "--min-profile-pairs", "2", "--weights", "0,1,3",
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
    for key in ("elapsed_s", "output_dir", "stage_seconds", "cache"):
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
    assert set(res["kendall"]["per_rule"]) == {"args", "token"}  # logratio has one configuration
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
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)  # LaMP's setting
    stemmed = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    per_system = {}
    for line in (out / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        sc = scorer.score(s["gold"].strip(), s["prediction"].strip())
        per_system.setdefault(s["system"], []).append(sc["rouge1"].fmeasure)
        assert s["rougeL"] == pytest.approx(sc["rougeL"].fmeasure)
        assert s["rouge1_stemmed"] == pytest.approx(stemmed.score(s["gold"], s["prediction"])["rouge1"].fmeasure)
    for system, vals in per_system.items():
        assert res["generation"][system]["rouge1"]["mean"] == pytest.approx(sum(vals) / len(vals))


def test_kendall_per_w_matches_scipy(golden):
    from scipy.stats import kendalltau

    _, res = golden
    entries = [e for variants in res["reward_models"].values() for e in variants.values()]
    for w, got in res["kendall"]["per_w"].items():
        xs = [e["rm_accuracy"] for e in entries]
        ys = [e["policy_accuracy"][w] for e in entries]
        want = kendalltau(xs, ys, variant="b")
        assert got["n_points"] == len(entries) and got["n_users"] == 2
        if math.isnan(want.statistic):
            assert got["tau"] is None
        else:
            assert got["tau"] == pytest.approx(want.statistic) and got["p_value"] == pytest.approx(want.pvalue)
    assert "not independent" in res["kendall"]["pooled"]["dependence"]


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
        # w = 1 reward standard deviation: the raw head's weight is 1 / its scale
        s_w = brute_force_S(engine.policy, x, enc(p["chosen"]), w_u, b_u, 1.0 / entry["reward_scale"], 3)
        s_l = brute_force_S(engine.policy, x, enc(p["rejected"]), w_u, b_u, 1.0 / entry["reward_scale"], 3)
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
        wt, wl = 1.0 / entry["reward_scale"], 1.0 / lr_entry["reward_scale"]  # w = 1 reward standard deviation
        counts["tok_pol"] += brute_force_rule_S(policy, x, yw, tok_r, wt, 3) > brute_force_rule_S(policy, x, yl, tok_r, wt, 3)
        counts["lr_pol"] += brute_force_rule_S(policy, x, yw, lr_r, wl, 3) > brute_force_rule_S(policy, x, yl, lr_r, wl, 3)
    n = len(test_q)
    assert entry["rm_accuracy"] == pytest.approx(counts["tok_rm"] / n)
    assert entry["policy_accuracy"]["1"] == pytest.approx(counts["tok_pol"] / n)
    assert lr_entry["rm_accuracy"] == pytest.approx(counts["lr_rm"] / n)
    assert lr_entry["policy_accuracy"]["1"] == pytest.approx(counts["lr_pol"] / n)


def test_interrupted_run_resumes_to_same_results(golden, tiny_model, tmp_path, monkeypatch):
    import rgd_eval.pipeline as pipeline

    _, want = golden
    real = pipeline.Study.generate
    calls = {"icl": 0}

    def crash_in_icl(self, stage, rows, desc, *a, **kw):
        if desc == "icl":
            calls["icl"] += 1
            raise KeyboardInterrupt("simulated interruption")
        return real(self, stage, rows, desc, *a, **kw)

    monkeypatch.setattr(pipeline.Study, "generate", crash_in_icl)
    with pytest.raises(KeyboardInterrupt):
        run_eval(tiny_model, tmp_path)
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert {p.parent.name for p in cached} >= {"negatives", "features", "trees", "generation"}
    assert not (tmp_path / "results.json").exists()
    monkeypatch.setattr(pipeline.Study, "generate", real)
    got = run_eval(tiny_model, tmp_path)
    for path, mtime in cached.items():  # finished chunks were reused, not recomputed
        assert path.stat().st_mtime_ns == mtime
    assert got["config"]["cache"]["computed"].get("negatives", 0) == 0
    assert strip_volatile(got) == strip_volatile(want)


def test_bad_data_dir_is_a_one_line_error(tiny_model, tmp_path, capsys):
    from rgd_eval.cli import main

    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "test_questions.json").write_text("[{\"id\": \"q1\", \"input\": \"x\"")  # truncated JSON
    (bad / "test_outputs.json").write_text('{"task": "LaMP_4", "golds": []}')
    assert main(["run", "--model", str(tiny_model), "--data", str(bad), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "test_questions.json" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_changed_setting_recomputes_what_reads_it_and_reuses_the_rest(golden, tiny_model, tmp_path):
    import shutil

    out, want = golden
    run = tmp_path / "run"
    shutil.copytree(out, run)

    def rerun(*extra):
        args = list(ARGS)
        for flag, value in zip(extra[::2], extra[1::2]):  # override a flag's value (or append it)
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        from rgd_eval.cli import main

        assert main(["run", "--model", str(tiny_model), "--output-dir", str(run), *args]) == 0
        return json.loads((run / "results.json").read_text())["config"]["cache"]

    # --n-boot is read by no stage: everything is reused
    assert rerun("--n-boot", "60")["computed"] == {}
    # -k is read by the candidate trees and guided generation only
    got = rerun("-k", "2")["computed"]
    assert got.get("trees") and got.get("generation-guided")
    assert not {"negatives", "features", "generation", "generation-bon"} & set(got)
    # --max-new-tokens changes the negatives, hence the pairs' texts, hence everything downstream
    got = rerun("--max-new-tokens", "4")["computed"]
    assert {"negatives", "features", "trees", "generation", "generation-guided"} <= set(got)
    # --icl-n changes the negatives' prompts (and ICL's), so the same chain recomputes
    assert {"negatives", "features", "trees"} <= set(rerun("--icl-n", "2")["computed"])


def _write_lamp7(root: Path, n_users=(3, 3), n_items=4, n_queries=2):
    prefix = "Paraphrase the following tweet without any explanation before or after it: "
    words = ["rain", "cats", "coffee", "monday", "vote", "music", "news", "game", "city", "love"]
    for split, n in zip(("train", "test"), n_users):
        questions, golds = [], []
        for u in range(n):
            uid = f"{split[:2]}{u}"
            profile = [{"id": f"{uid}t{k}", "text": f"{words[(u + k) % 10]} {words[(u * k) % 10]} again lol"}
                       for k in range(n_items)]
            for j in range(n_queries):
                qid = f"{uid}q{j}"
                questions.append({"id": qid, "user_id": uid, "input": prefix + f"the {words[j]} is {words[u]}",
                                  "profile": profile})
                golds.append({"id": qid, "output": f"{words[u]} {words[j]} omg"})
        (root / f"{split}_questions.json").write_text(json.dumps(questions))
        (root / f"{split}_outputs.json").write_text(json.dumps({"task": "LaMP_7", "golds": golds}))


def test_lamp7_folder_runs_with_paraphrased_profile_pairs(tiny_model, tmp_path):
    from rgd_eval.cli import main

    data = tmp_path / "lamp7"
    data.mkdir()
    _write_lamp7(data)
    out = tmp_path / "run"
    args = ["--max-profile-pairs", "3", "--min-profile-pairs", "1", "--weights", "0,1", "-k", "3",
            "--max-new-tokens", "5", "--n-boot", "50", "--n-perm", "50", "--batch-size", "4", "--rules", "args",
            "logratio", "--methods", "global", "per-user"]
    assert main(["run", "--model", str(tiny_model), "--data", str(data), "--tasks", "LaMP-7", "--output-dir",
                 str(out), *args]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["task"] == "LaMP-7" and res["config"]["cache"]["computed"]["paraphrases"]
    pairs = [json.loads(l) for l in (out / "pairs.jsonl").read_text().splitlines()]
    prof = [p for p in pairs if p["kind"] == "profile"]
    assert prof and all(p["prompt"].startswith("Paraphrase the following tweet") and p["prompt"].endswith(
        "\nParaphrase:") for p in prof)
    assert all(p["chosen"].endswith("again lol") for p in prof)  # chosen = the user's own tweet
    assert json.loads((out / "predictions" / "icl.json").read_text())["task"] == "LaMP_7"
    assert main(["run", "--model", str(tiny_model), "--data", str(data), "--tasks", "LaMP-4", "--output-dir",
                 str(tmp_path / "o2"), *args]) == 2


@pytest.mark.parametrize("bad, needle", [
    (["--weights", "0,1,nan"], "--weights"), (["--weights", "0,inf"], "--weights"), (["--weights", "0"], "weight > 0"),
    (["--users", "0"], "--users"), (["--users", "-1"], "--users"), (["--min-profile-pairs", "9"], "exceeds"),
    (["--gen-weights", "5"], "--gen-weights"), (["-k", "0"], "-k"), (["--bon-temperature", "nan"], "temperature"),
    (["--n-boot", "0"], "--n-boot")])
def test_bad_arguments_fail_before_any_work(tiny_model, tmp_path, capsys, bad, needle):
    from rgd_eval.cli import main

    out = tmp_path / "o"
    assert main(["run", "--model", str(tiny_model), "--output-dir", str(out), *ARGS, *bad]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing was started


def test_data_without_test_split_or_usable_users_is_a_clear_error(tiny_model, tmp_path, capsys):
    from rgd_eval.cli import main

    data = tmp_path / "lamp7"
    data.mkdir()
    _write_lamp7(data)
    (data / "test_questions.json").rename(data / "dev_questions.json")
    (data / "test_outputs.json").rename(data / "dev_outputs.json")
    assert main(["run", "--model", str(tiny_model), "--data", str(data), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no test split" in err and "dev" in err
    _write_lamp7(data, n_items=1)  # every user has one profile item < --min-profile-pairs
    assert main(["run", "--model", str(tiny_model), "--data", str(data), "--output-dir", str(tmp_path / "o"),
                 "--min-profile-pairs", "2", "--rules", "args", "--methods", "global"]) == 2
    assert "no usable user" in capsys.readouterr().err


def test_reward_scale_is_the_sd_over_train_candidates_by_brute_force(golden, tiny_model):
    """The per-user heads' scale: sd of r_u over C_t = top-k U {y_t} at every step of the train users' query
    pairs, every candidate sequence recomputed in full with the HF modules; the train users' heads come from
    refitting the selected variant on features recomputed here (fitting is deterministic for a seed)."""
    import types

    from rgd_engine import Engine
    from rgd_engine.models import load_causal_lm
    from rgd_eval.features import features_by_user
    from rgd_eval.reward_models import make_method

    out, res = golden
    engine = Engine(load_causal_lm(str(tiny_model)))
    policy = engine.policy
    pairs = [json.loads(l) for l in (out / "pairs.jsonl").read_text().splitlines()]
    enc = lambda t: engine.tokenizer(" " + t.strip(), add_special_tokens=False)["input_ids"]  # noqa: E731
    method = "per-user"
    variant = res["config"]["selected_variants"][method]
    entry = res["reward_models"][method][variant]

    def feats(split, kind):
        sel = [p for p in pairs if p["split"] == split and p["kind"] == kind]
        xs = [engine.encode(p["prompt"]) for p in sel]
        h = engine.features(xs + xs, [enc(p["chosen"]) for p in sel] + [enc(p["rejected"]) for p in sel])
        rows = [types.SimpleNamespace(user_id=p["user"]) for p in sel]
        return features_by_user(rows, h[:len(sel)], h[len(sel):])

    heads = make_method(method, entry["hparams"]).fit(feats("train", "profile"), seed=0).heads_for(
        feats("train", "profile"))
    rewards = []
    with torch.no_grad():
        for p in (p for p in pairs if p["split"] == "train" and p["kind"] == "query"):
            w_u, b_u = heads[p["user"]]
            x = engine.encode(p["prompt"])
            for y in (enc(p["chosen"]), enc(p["rejected"])):
                for t in range(len(y)):
                    prefix = x + y[:t]
                    lp = policy.hf_model(input_ids=torch.tensor([prefix])).logits[0, -1]
                    cands = torch.topk(lp, 3).indices.tolist()
                    cands += [y[t]] if y[t] not in cands else []
                    h = policy.base(input_ids=torch.tensor([prefix + [v] for v in cands])).last_hidden_state[:, -1]
                    rewards += (h.double() @ w_u.double() + b_u).tolist()
    assert entry["reward_scale"] == pytest.approx(float(torch.tensor(rewards).std()), rel=1e-3)


def test_query_features_from_trees_equal_a_forward_of_each_sequence(tiny_model):
    """The query pairs' reward features are read off their candidate trees (pipeline.tree_features): they must be
    the states of a plain forward of x o y (rgd_engine.features.response_states)."""
    from types import SimpleNamespace

    from rgd_engine import Engine
    from rgd_engine.features import response_states
    from rgd_engine.models import load_causal_lm
    from rgd_engine.policy_accuracy import prompt_candidate_states
    from rgd_eval.pipeline import tree_features

    engine = Engine(load_causal_lm(str(tiny_model)))
    enc = lambda t: engine.tokenizer(" " + t, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = [("Headline for: the council voted", "Council votes", "A vote by the city council today"),
            ("Headline for: frogs in the pond", "Pond frogs sing loudly at night", "Frogs")]
    pairs, trees, xs, ys = [], {}, [], []
    for i, (x, yw, yl) in enumerate(rows):
        p = SimpleNamespace(pair_id=f"p{i}")
        pairs.append(p)
        ids, resp = engine.encode(x), [enc(yw), enc(yl)]
        trees[p.pair_id] = tuple(prompt_candidate_states(engine.policy, engine.policy, ids, resp, 3,
                                                         prompt_cache=engine.new_prompt_cache()))
        xs += [ids, ids]
        ys += resp
    emb = engine.policy.lm_head_weight.detach().float()
    hw, hl, tok = tree_features(trees, pairs, emb)
    last, prefix = response_states(engine.policy, xs, ys)
    torch.testing.assert_close(hw, last[0::2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hl, last[1::2], rtol=1e-4, atol=1e-4)
    for i, p in enumerate(pairs):
        for side in (0, 1):
            seq = tok[p.pair_id][side]
            torch.testing.assert_close(seq.h, prefix[2 * i + side], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(seq.e, emb[torch.tensor(ys[2 * i + side])])
