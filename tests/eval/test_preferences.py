import json

import pytest
import torch

from rgd_eval.lamp import DEFAULT_LAMP_DIR, load_lamp
from rgd_eval.preferences import PrefLaMPError, build_pref_lamp, features_by_user, generation_inputs

PREFIX = "Generate a headline for the following article: "


def _dataset(tmp_path, n_profile=(3, 3, 1)):
    questions, golds = [], []
    for u, n in enumerate(n_profile):
        profile = [{"id": f"u{u}p{k}", "text": f"story {u} {k}", "title": f"Title {u} {k}"} for k in range(n)]
        for j in range(2):
            qid = f"u{u}q{j}"
            questions.append({"id": qid, "user_id": f"u{u}", "input": PREFIX + f"query {u} {j}", "profile": profile})
            golds.append({"id": qid, "output": f"Gold {u} {j}"})
    (tmp_path / "test_questions.json").write_text(json.dumps(questions))
    (tmp_path / "test_outputs.json").write_text(json.dumps({"task": "LaMP_4", "golds": golds}))
    return load_lamp(tmp_path)


def test_generation_inputs_cover_profile_items_and_queries(tmp_path):
    ds = _dataset(tmp_path)
    inputs = generation_inputs(ds)
    assert len(inputs) == 3 + 3 + 1 + 6
    assert inputs["u0/p/u0p1"] == PREFIX + "story 0 1" and inputs["u2/q/u2q1"] == PREFIX + "query 2 1"
    assert len(generation_inputs(ds, max_profile_pairs=2)) == 2 + 2 + 1 + 6


def test_policy_rejected_pairs_drops_and_skips(tmp_path):
    ds = _dataset(tmp_path)
    outs = {pid: f"policy says {pid}" for pid in generation_inputs(ds)}
    outs["u0/p/u0p0"] = "Title 0 0"   # identical to chosen: no preference
    outs["u1/q/u1q0"] = "  "          # empty generation
    pref = build_pref_lamp(ds, "policy", outs, min_profile_pairs=2)
    st = pref.stats["test"]
    assert st == {"users": 2, "users_skipped": 1, "profile_pairs": 2 + 3, "query_pairs": 2 + 1,
                  "dropped_empty_rejected": 1, "dropped_rejected_equals_chosen": 1}
    assert pref.users("test") == ["u0", "u1"]  # u2 has one profile pair < 2
    p = next(p for p in pref.pairs if p.pair_id == "u1/p/u1p2")
    assert (p.kind, p.input, p.chosen, p.rejected) == ("profile", PREFIX + "story 1 2", "Title 1 2",
                                                        "policy says u1/p/u1p2")
    q = next(p for p in pref.pairs if p.pair_id == "u0/q/u0q1")
    assert (q.kind, q.chosen) == ("query", "Gold 0 1")


def test_policy_rejected_missing_text_names_pair(tmp_path):
    ds = _dataset(tmp_path)
    outs = {pid: "x" for pid in generation_inputs(ds)}
    del outs["u1/q/u1q1"]
    with pytest.raises(PrefLaMPError, match="u1/q/u1q1"):
        build_pref_lamp(ds, "policy", outs)
    with pytest.raises(PrefLaMPError, match="policy_outputs"):
        build_pref_lamp(ds, "policy", None)
    with pytest.raises(PrefLaMPError, match="rejected must be"):
        build_pref_lamp(ds, "random", outs)


def test_other_user_rejected_is_seeded_and_from_other_users(tmp_path, fresh_seed):
    ds = _dataset(tmp_path, n_profile=(4, 5, 6))
    a = build_pref_lamp(ds, "other-user", seed=fresh_seed, min_profile_pairs=1)
    b = build_pref_lamp(ds, "other-user", seed=fresh_seed, min_profile_pairs=1)
    c = build_pref_lamp(ds, "other-user", seed=fresh_seed + 1, min_profile_pairs=1)
    assert a.pairs == b.pairs and a.pairs != c.pairs
    for p in a.pairs:
        owner = p.rejected.split()[1]
        assert p.rejected.startswith("Title ") and f"u{owner}" != p.user_id  # another user's profile output


def test_features_by_user(gen):
    ds = load_lamp(DEFAULT_LAMP_DIR)
    pref = build_pref_lamp(ds, "other-user", seed=0)
    pairs = pref.select("test", "query")
    assert len(pairs) == 48
    ch, rj = torch.randn(48, 5, generator=gen), torch.randn(48, 5, generator=gen)
    grouped = features_by_user(pairs, ch, rj)
    assert sorted(grouped) == pref.users("test")
    for u, pf in grouped.items():
        rows = [i for i, p in enumerate(pairs) if p.user_id == u]
        assert torch.equal(pf.chosen, ch[rows]) and torch.equal(pf.rejected, rj[rows])
    with pytest.raises(ValueError):
        features_by_user(pairs, ch[:-1], rj[:-1])
