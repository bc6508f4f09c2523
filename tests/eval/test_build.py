import json
import random

import pytest

from rgd_eval.build import BuildParams, RawRecord, build_lamp, read_news_jsonl, write_lamp, write_raw_subset
from rgd_eval.lamp import DATA_DIR, DEFAULT_LAMP_DIR, load_lamp


def _records(sizes: dict[str, int], rng: random.Random) -> list[RawRecord]:
    recs = []
    for author, n in sizes.items():
        for k in range(n):
            recs.append((author, f"2020-01-{rng.randrange(1, 29):02d}", k))
    rng.shuffle(recs)
    return [RawRecord(author=a, date=d, fields={"text": f"{a} text {k}", "title": f"{a} title {k}"},
                      line=json.dumps({"a": a, "k": k}), index=i) for i, (a, d, k) in enumerate(recs)]


def test_builder_users_profiles_queries(fresh_seed, tmp_path):
    rng = random.Random(fresh_seed)
    sizes = {f"author{i}": rng.randrange(3, 40) for i in range(30)}
    sizes.update({f"sure{i}": rng.randrange(8, 40) for i in range(6)})  # at least n_users eligible
    sizes.update({"tiny": 2, "big": 60})
    recs = _records(sizes, rng)
    p = BuildParams(min_items=8, n_users=6, n_train=4, queries_per_user=3, profile_cap=10, seed=fresh_seed % 100)
    eligible = sum(n >= 8 for n in sizes.values())
    built = build_lamp(recs, p)
    assert built.stats["authors_skipped_too_few_items"] == len(sizes) - eligible
    assert built.stats["users"] == {"train": 4, "test": 2} and built.stats["queries"] == {"train": 12, "test": 6}
    write_lamp(built, tmp_path)
    ds = load_lamp(tmp_path, task="LaMP-4")
    by_author = {}
    for r in recs:
        by_author.setdefault(r.author, []).append(r)
    for split in ("train", "test"):
        for user, qs in ds.users(split).items():
            author = built.stats["user_authors"][user]
            chrono = sorted(by_author[author], key=lambda r: (r.date, -r.index))
            # held-out queries are the newest items; the profile the newest of the rest, capped.
            assert [q.gold for q in qs] == [r.fields["title"] for r in chrono[-3:]]
            assert [it["title"] for it in ds.profile(split, user)] == [r.fields["title"] for r in chrono[:-3][-10:]]
            assert all(q.input == "Generate a headline for the following article: " + r.fields["text"]
                       for q, r in zip(qs, chrono[-3:]))


def test_builder_is_deterministic_and_seed_dependent():
    rng = random.Random(0)
    recs = _records({f"a{i}": 12 for i in range(40)}, rng)
    p = BuildParams(min_items=8, n_users=10, n_train=6, queries_per_user=2, profile_cap=5, seed=1)
    a, b = build_lamp(recs, p), build_lamp(recs, p)
    assert a.splits == b.splits
    c = build_lamp(recs, BuildParams(**{**vars(p), "seed": 2}))
    assert c.stats["user_authors"] != a.stats["user_authors"]


@pytest.mark.parametrize("bad", [dict(min_items=3, queries_per_user=3), dict(n_train=0), dict(n_train=24)])
def test_builder_rejects_bad_params(bad):
    with pytest.raises(ValueError):
        build_lamp([], BuildParams(**bad))


def test_builder_needs_enough_authors():
    recs = _records({"a": 20, "b": 20}, random.Random(0))
    with pytest.raises(ValueError, match="only 2 authors"):
        build_lamp(recs, BuildParams(n_users=3, n_train=2))


def test_read_news_jsonl_drops_and_counts(tmp_path):
    rows = [
        {"authors": "Ann Lee", "headline": "H1", "short_description": "D1", "date": "2020-01-01"},
        {"authors": "", "headline": "H2", "short_description": "D2", "date": "2020-01-01"},
        {"authors": "Bob Roe, AP", "headline": "H3", "short_description": "D3", "date": "2020-01-01"},
        {"authors": "Ann Lee", "headline": "H4", "short_description": "  ", "date": "2020-01-02"},
    ]
    path = tmp_path / "raw.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recs, stats = read_news_jsonl(path)
    assert stats == {"records_read": 4, "empty_author": 1, "multi_author_or_wire": 1, "empty_text_or_title": 1}
    assert [(r.author, r.fields) for r in recs] == [("Ann Lee", {"text": "D1", "title": "H1"})]
    assert recs[0].line == json.dumps(rows[0])


def test_read_news_jsonl_malformed_line(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text('{"authors": "A", "headline": "h", "short_description": "d", "date": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="malformed JSON") as e:
        read_news_jsonl(path)
    assert e.value.id == "line 2" and e.value.file.endswith("raw.jsonl")


def test_shipped_subset_rebuilds_the_shipped_data(tmp_path):
    stats = json.loads((DEFAULT_LAMP_DIR / "build_stats.json").read_text())
    recs, _ = read_news_jsonl(DATA_DIR / "news_category_v3_lamp4_subset.jsonl")
    built = build_lamp(recs, BuildParams(**stats["params"]))
    write_lamp(built, tmp_path)
    write_raw_subset(built, tmp_path / "subset.jsonl")
    for name in ("train_questions.json", "train_outputs.json", "test_questions.json", "test_outputs.json"):
        assert (tmp_path / name).read_bytes() == (DEFAULT_LAMP_DIR / name).read_bytes(), name
    assert (tmp_path / "subset.jsonl").read_bytes() == (DATA_DIR / "news_category_v3_lamp4_subset.jsonl").read_bytes()
    assert built.stats["user_authors"] == stats["user_authors"]
