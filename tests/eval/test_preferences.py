import json

import pytest
import torch

from rgd_eval.features import features_by_user
from rgd_eval.lamp import DEFAULT_LAMP_DIR, load_lamp
from rgd_eval.preferences import (PrefLaMPError, build_pref_lamp, negative_prompts, negative_user, pair_sources,
                                  paraphrase_prompts)

PREFIX = "Generate a headline for the following article: "
TWEET = "Paraphrase the following tweet without any explanation before or after it: "


def _dataset(tmp_path, n_profile=(3, 3, 1), split="test"):
    questions, golds = [], []
    for u, n in enumerate(n_profile):
        profile = [{"id": f"u{u}p{k}", "text": f"story {u} {k}", "title": f"Title {u} {k}"} for k in range(n)]
        for j in range(2):
            qid = f"u{u}q{j}"
            questions.append({"id": qid, "user_id": f"u{u}", "input": PREFIX + f"query {u} {j}", "profile": profile})
            golds.append({"id": qid, "output": f"Gold {u} {j}"})
    (tmp_path / f"{split}_questions.json").write_text(json.dumps(questions))
    (tmp_path / f"{split}_outputs.json").write_text(json.dumps({"task": "LaMP_4", "golds": golds}))
    return load_lamp(tmp_path)


def test_pair_sources_cover_profile_items_and_queries(tmp_path):
    ds = _dataset(tmp_path)
    sources, dropped = pair_sources(ds)
    assert len(sources) == 3 + 3 + 1 + 6 and dropped == {"test": 0}
    by_id = {s.pair_id: s for s in sources}
    assert (by_id["u0/p/u0p1"].input, by_id["u0/p/u0p1"].chosen) == (PREFIX + "story 0 1", "Title 0 1")
    assert (by_id["u2/q/u2q1"].kind, by_id["u2/q/u2q1"].chosen) == ("query", "Gold 2 1")
    assert len(pair_sources(ds, max_profile_pairs=2)[0]) == 2 + 2 + 1 + 6
    assert paraphrase_prompts(ds) == {}  # LaMP-4 items carry their own input


def test_policy_rejected_pairs_drops_and_skips(tmp_path):
    ds = _dataset(tmp_path)
    sources, _ = pair_sources(ds)
    outs = {s.pair_id: f"policy says {s.pair_id}" for s in sources}
    outs["u0/p/u0p0"] = "Title 0 0"   # identical to chosen: no preference
    outs["u1/q/u1q0"] = "  "          # empty generation
    pref = build_pref_lamp(ds, sources, "policy", outs, min_profile_pairs=2)
    st = pref.stats["test"]
    assert st == {"users": 2, "users_skipped": 1, "profile_pairs": 2 + 3, "query_pairs": 2 + 1,
                  "dropped_empty_rejected": 1, "dropped_rejected_equals_chosen": 1, "dropped_empty_paraphrase": 0}
    assert pref.users("test") == ["u0", "u1"]  # u2 has one profile pair < 2
    p = next(p for p in pref.pairs if p.pair_id == "u1/p/u1p2")
    assert (p.kind, p.input, p.chosen, p.rejected) == ("profile", PREFIX + "story 1 2", "Title 1 2",
                                                        "policy says u1/p/u1p2")
    prompts = negative_prompts(ds, sources, "policy", icl_n=4, seed=0)
    assert prompts["u1/p/u1p2"] == (PREFIX + "story 1 2\nHeadline:", None)


def test_generated_rejected_missing_text_names_pair(tmp_path):
    ds = _dataset(tmp_path)
    sources, _ = pair_sources(ds)
    outs = {s.pair_id: "x" for s in sources}
    del outs["u1/q/u1q1"]
    with pytest.raises(PrefLaMPError, match="u1/q/u1q1"):
        build_pref_lamp(ds, sources, "icl-other", outs)
    with pytest.raises(PrefLaMPError, match="needs texts"):
        build_pref_lamp(ds, sources, "policy", None)
    with pytest.raises(PrefLaMPError, match="rejected must be"):
        build_pref_lamp(ds, sources, "random", outs)


def test_icl_other_negatives_are_content_matched_deterministic_and_never_own_profile(tmp_path, fresh_seed):
    ds = _dataset(tmp_path, n_profile=(4, 5, 6, 3))
    sources, _ = pair_sources(ds)
    a = negative_prompts(ds, sources, "icl-other", icl_n=2, seed=fresh_seed)
    b = negative_prompts(ds, sources, "icl-other", icl_n=2, seed=fresh_seed)
    c = negative_prompts(ds, sources, "icl-other", icl_n=2, seed=fresh_seed + 1)
    assert a == b and a != c, f"seed={fresh_seed}"
    for s in sources:
        prompt, other = a[s.pair_id]
        assert other != s.user_id and other in ds.users("test"), f"seed={fresh_seed}"
        assert prompt.endswith(s.input + "\nHeadline:")  # the same content as the chosen text's input
        assert f"Title {other[1:]} " in prompt  # conditioned on the other user's profile ...
        assert f"Title {s.user_id[1:]} " not in prompt  # ... never on the user's own
    # a pair's other user does not depend on the other pairs (per-pair stream)
    assert negative_user(ds, sources[3], fresh_seed) == a[sources[3].pair_id][1]
    pref = build_pref_lamp(ds, sources, "icl-other", {s.pair_id: f"neg {s.pair_id}" for s in sources},
                           {pid: v for pid, (_, v) in a.items()}, min_profile_pairs=1)
    assert all(p.negative_user == a[p.pair_id][1] for p in pref.pairs)


def test_icl_other_stays_within_the_split(tmp_path):
    _dataset(tmp_path, n_profile=(2, 2), split="train")
    ds = _dataset(tmp_path, n_profile=(2, 2, 2), split="test")  # same user ids in both splits: distinct users
    assert set(ds.splits) == {"train", "test"}
    sources, _ = pair_sources(ds)
    prompts = negative_prompts(ds, sources, "icl-other", icl_n=2, seed=0)
    for s in sources:
        assert prompts[s.pair_id][1] in ds.users(s.split)


def test_icl_other_needs_two_users_per_split(tmp_path):
    ds = _dataset(tmp_path, n_profile=(3,))
    sources, _ = pair_sources(ds)
    with pytest.raises(PrefLaMPError, match="at least two users"):
        negative_prompts(ds, sources, "icl-other", icl_n=2, seed=0)


def test_other_user_rejected_is_seeded_and_from_other_users(tmp_path, fresh_seed):
    ds = _dataset(tmp_path, n_profile=(4, 5, 6))
    sources, _ = pair_sources(ds)
    a = build_pref_lamp(ds, sources, "other-user", seed=fresh_seed, min_profile_pairs=1)
    b = build_pref_lamp(ds, sources, "other-user", seed=fresh_seed, min_profile_pairs=1)
    c = build_pref_lamp(ds, sources, "other-user", seed=fresh_seed + 1, min_profile_pairs=1)
    assert a.pairs == b.pairs and a.pairs != c.pairs
    for p in a.pairs:
        owner = p.rejected.split()[1]
        assert p.rejected.startswith("Title ") and f"u{owner}" != p.user_id and p.negative_user == f"u{owner}"


def _lamp7(tmp_path):
    questions, golds = [], []
    for u in range(2):
        profile = [{"id": f"u{u}t{k}", "text": f"my tweet {u} {k} lol"} for k in range(3)]
        for j in range(2):
            qid = f"u{u}q{j}"
            questions.append({"id": qid, "user_id": f"u{u}", "input": TWEET + f"neutral text {u} {j}",
                              "profile": profile})
            golds.append({"id": qid, "output": f"real tweet {u} {j}"})
    (tmp_path / "test_questions.json").write_text(json.dumps(questions))
    (tmp_path / "test_outputs.json").write_text(json.dumps({"task": "LaMP_7", "golds": golds}))
    return load_lamp(tmp_path)


def test_lamp7_profile_pairs_take_the_policys_paraphrase_as_input(tmp_path):
    ds = _lamp7(tmp_path)
    prompts = paraphrase_prompts(ds)
    assert prompts["u0/p/u0t1"] == TWEET + "my tweet 0 1 lol\nParaphrase:" and len(prompts) == 6
    with pytest.raises(PrefLaMPError, match="paraphrase"):
        pair_sources(ds)
    para = {pid: f"a neutral version {pid}" for pid in prompts}
    para["u1/p/u1t0"] = " "  # an empty paraphrase drops its item, counted
    sources, dropped = pair_sources(ds, paraphrases=para)
    assert dropped == {"test": 1} and len(sources) == 5 + 4
    s = next(s for s in sources if s.pair_id == "u0/p/u0t2")
    assert (s.input, s.chosen) == (TWEET + "a neutral version u0/p/u0t2", "my tweet 0 2 lol")
    pref = build_pref_lamp(ds, sources, "other-user", min_profile_pairs=1, dropped_paraphrases=dropped)
    assert pref.stats["test"]["dropped_empty_paraphrase"] == 1


def test_features_by_user(gen):
    ds = load_lamp(DEFAULT_LAMP_DIR)
    sources, _ = pair_sources(ds, 4)
    pref = build_pref_lamp(ds, sources, "other-user", seed=0)
    pairs = pref.select("test", "query")
    n = len(pairs)
    ch, rj = torch.randn(n, 5, generator=gen), torch.randn(n, 5, generator=gen)
    grouped = features_by_user(pairs, ch, rj)
    assert sorted(grouped) == pref.users("test")
    for u, pf in grouped.items():
        rows = [i for i, p in enumerate(pairs) if p.user_id == u]
        assert torch.equal(pf.chosen, ch[rows]) and torch.equal(pf.rejected, rj[rows])
    with pytest.raises(ValueError):
        features_by_user(pairs, ch[:-1], rj[:-1])


def test_lamp5_profile_pairs_are_abstract_to_title(tmp_path):
    prefix = "Generate a title for the following abstract of a paper: "
    questions = [{"id": f"q{u}", "user_id": f"u{u}", "input": prefix + f"abstract {u}",
                  "profile": [{"id": f"u{u}p{k}", "title": f"T{u}{k}", "abstract": f"A{u}{k}"} for k in range(2)]}
                 for u in range(2)]
    (tmp_path / "dev_questions.json").write_text(json.dumps(questions))
    (tmp_path / "dev_outputs.json").write_text(json.dumps({"task": "LaMP_5", "golds": [
        {"id": f"q{u}", "output": f"Gold {u}"} for u in range(2)]}))
    ds = load_lamp(tmp_path)
    sources, _ = pair_sources(ds)
    s = next(s for s in sources if s.pair_id == "u1/p/u1p0")
    assert (s.input, s.chosen) == (prefix + "A10", "T10") and paraphrase_prompts(ds) == {}
    prompts = negative_prompts(ds, sources, "icl-other", icl_n=1, seed=0)
    assert prompts["u1/q/q1"][0].endswith(prefix + "abstract 1\nTitle:") and '"T0' in prompts["u1/q/q1"][0]
