"""Prompts: zero-shot, and LaMP-style in-context prompts from the user's BM25-retrieved profile items.

Every prompt ends with the task's answer cue ("Headline:") on its own line, so the model writes the answer on
that line and generation stops at the newline.
"""
from __future__ import annotations

import re

from rank_bm25 import BM25Okapi

from .tasks import TASKS

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens (BM25 only)."""
    return _TOKEN.findall(text.lower())


def bm25_top(task: str, query_input: str, profile: list[dict], n: int) -> list[dict]:
    """The n profile items BM25-closest to the query text (instruction stripped), best first; score ties
    keep profile order. Items with no tokens are never retrieved."""
    spec = TASKS[task]
    docs = [(i, tokenize(spec.retrieval_text(it))) for i, it in enumerate(profile)]
    docs = [(i, toks) for i, toks in docs if toks]
    if not docs or n <= 0:
        return []
    scores = BM25Okapi([toks for _, toks in docs]).get_scores(tokenize(spec.query_text(query_input)))
    ranked = sorted(range(len(docs)), key=lambda j: (-scores[j], docs[j][0]))
    return [profile[docs[j][0]] for j in ranked[:n]]


def zero_shot_prompt(task: str, query_input: str) -> str:
    return f"{query_input}\n{TASKS[task].answer_cue}"


def icl_prompt(task: str, query_input: str, profile: list[dict], n: int = 4, max_item_words: int = 60) -> str:
    """LaMP-style personalised prompt: the retrieved items as '"{title}" is the title for "{text}"' (LaMP-4),
    joined with ', and ', then the query and the answer cue. n=0 or an empty profile gives the zero-shot prompt."""
    items = bm25_top(task, query_input, profile, n)
    if not items:
        return zero_shot_prompt(task, query_input)
    spec = TASKS[task]
    context = ", and ".join(spec.icl_item(it, max_item_words) for it in items) + spec.icl_suffix
    return f"{context}.\n{zero_shot_prompt(task, query_input)}"
