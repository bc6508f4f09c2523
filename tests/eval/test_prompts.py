import math
import random

from rgd_eval.lamp import DEFAULT_LAMP_DIR, load_lamp
from rgd_eval.prompts import bm25_top, icl_prompt, tokenize, zero_shot_prompt

PREFIX = "Generate a headline for the following article: "


def _bm25_brute(query, docs, k1=1.5, b=0.75, eps=0.25):
    """Okapi BM25 as rank-bm25 defines it (idf floored at eps * mean idf), written out independently."""
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    df = {t: sum(t in d for d in docs) for d in docs for t in d}
    idf = {t: math.log(n - f + 0.5) - math.log(f + 0.5) for t, f in df.items()}
    floor = eps * sum(idf.values()) / len(idf)
    idf = {t: (v if v >= 0 else floor) for t, v in idf.items()}
    return [sum(idf.get(t, 0) * d.count(t) * (k1 + 1) / (d.count(t) + k1 * (1 - b + b * len(d) / avgdl))
                for t in query) for d in docs]


def test_bm25_top_matches_brute_force_ranking(fresh_seed):
    rng = random.Random(fresh_seed)
    vocab = [f"w{i}" for i in range(30)]
    profile = [{"id": str(i), "text": " ".join(rng.choices(vocab, k=rng.randint(3, 12))),
                "title": " ".join(rng.choices(vocab, k=3))} for i in range(12)]
    query = PREFIX + " ".join(rng.choices(vocab, k=5))
    got = [it["id"] for it in bm25_top("LaMP-4", query, profile, 5)]
    docs = [tokenize(f'{it["title"]} {it["text"]}') for it in profile]
    scores = _bm25_brute(tokenize(query[len(PREFIX):]), docs)
    want = sorted(range(12), key=lambda i: (-round(scores[i], 9), i))[:5]
    assert got == [profile[i]["id"] for i in want]


def test_bm25_prefers_overlapping_item_and_ignores_instruction():
    profile = [{"id": "a", "text": "stock markets fall", "title": "Dow Drops"},
               {"id": "b", "text": "a new puppy adopted by the mayor", "title": "Mayor Gets Puppy"},
               {"id": "c", "text": "generate headline following article", "title": "Words"}]
    top = bm25_top("LaMP-4", PREFIX + "the mayor and the puppy", profile, 2)
    assert top[0]["id"] == "b" and len(top) == 2
    assert bm25_top("LaMP-4", PREFIX + "x", profile, 0) == []


def test_prompt_shapes():
    profile = [{"id": "a", "text": "Stocks fell sharply.", "title": "Dow Drops"},
               {"id": "b", "text": "The mayor adopted a puppy.", "title": "Mayor Gets Puppy"},
               {"id": "c", "text": "Rain is expected.", "title": "Storm Coming"}]
    # (three items: with two, Okapi idf of a term in one of them is log(1.5/1.5) = 0 and nothing ranks)
    q = PREFIX + "The mayor's puppy learned a trick."
    assert zero_shot_prompt("LaMP-4", q) == q + "\nHeadline:"
    p = icl_prompt("LaMP-4", q, profile, n=1)
    assert p == '"Mayor Gets Puppy" is the title for "The mayor adopted a puppy.".\n' + q + "\nHeadline:"
    p2 = icl_prompt("LaMP-4", q, profile, n=2)
    assert p2.startswith('"Mayor Gets Puppy" is the title for "The mayor adopted a puppy.", and "')
    assert icl_prompt("LaMP-4", q, [], n=3) == zero_shot_prompt("LaMP-4", q)
    long = [{"id": "z", "text": " ".join(["word"] * 100), "title": "T"}]
    assert icl_prompt("LaMP-4", PREFIX + "word", long, n=1, max_item_words=5).count("word") == 5 + 1


def test_prompts_on_shipped_data_end_with_cue_and_exclude_gold():
    ds = load_lamp(DEFAULT_LAMP_DIR)
    for q in ds.splits["test"]:
        p = icl_prompt(ds.task, q.input, list(q.profile), n=4)
        assert p.endswith("\nHeadline:") and p.count('" is the title for "') == 4
        assert f'"{q.gold}" is the title for "{q.input[len(PREFIX):]}"' not in p
