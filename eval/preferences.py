"""Pref-LaMP: per-user preference pairs built from LaMP-format data.

For each user: one pair per profile item ("profile" pairs: the support set heads are fitted on) and one per
held-out query ("query" pairs: RM / policy accuracy are measured on these). chosen = the user's real output.
The input of a profile pair is the item's input (LaMP-4: the article; LaMP-5: the abstract); where items are
bare texts (LaMP-7 tweets) it is a neutral paraphrase of the text written once by the policy
(`paraphrase_prompts`), so the pair asks "write this content the way this user writes it".

Rejected sources (`REJECTED_SOURCES`):
- `icl-other` (default, content-matched): what the policy writes for the SAME input when conditioned (the ICL
  prompt, BM25 top-n) on ANOTHER user's profile, the other user drawn per pair from the seed among the users of
  the same split (train users only meet train users). Chosen and rejected share the content and differ in whose
  style they carry: the pairs measure personalization.
- `policy`: the base policy's own zero-shot greedy output (sensitivity analysis: "human vs this model"; every
  rejected token is the policy's argmax, so its policy accuracy at w = 0 is 0 by construction).
- `other-user`: another user's real profile output (sensitivity analysis: differs in topic as well as style).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import RGDEvalError
from .lamp import LaMPDataset
from .prompts import icl_prompt, zero_shot_prompt
from .tasks import TASKS

REJECTED_SOURCES = ("icl-other", "policy", "other-user")
GENERATED_SOURCES = ("icl-other", "policy")  # sources whose rejected text the policy writes


class PrefLaMPError(RGDEvalError):
    """Missing or unusable inputs to the Pref-LaMP builder (names the pair id or user)."""


@dataclass(frozen=True)
class PairSource:
    pair_id: str     # "{user}/p/{profile item id}" or "{user}/q/{question id}"
    user_id: str
    split: str
    kind: str        # "profile" | "query"
    input: str       # LaMP input (instruction + source text)
    chosen: str      # the user's real output


@dataclass(frozen=True)
class PrefPair:
    pair_id: str
    user_id: str
    split: str
    kind: str
    input: str
    chosen: str
    rejected: str
    negative_user: str | None = None  # whose profile conditioned (icl-other) or wrote (other-user) the rejected text


@dataclass
class PrefLaMP:
    task: str
    rejected_source: str
    pairs: list[PrefPair]
    stats: dict      # per split: users, users_skipped, pairs per kind, dropped pairs by reason

    def select(self, split: str | None = None, kind: str | None = None) -> list[PrefPair]:
        return [p for p in self.pairs if (split is None or p.split == split) and (kind is None or p.kind == kind)]

    def users(self, split: str) -> list[str]:
        return sorted({p.user_id for p in self.pairs if p.split == split})


def _profile_items(ds: LaMPDataset, split: str, user: str, max_profile_pairs: int | None) -> list[dict]:
    items = ds.profile(split, user)
    return items[-max_profile_pairs:] if max_profile_pairs is not None else items


def paraphrase_prompts(ds: LaMPDataset, max_profile_pairs: int | None = None) -> dict[str, str]:
    """pair_id -> zero-shot prompt asking the policy to paraphrase a bare-text profile item (LaMP-7); {} where
    profile items carry an input of their own."""
    spec = TASKS[ds.task]
    if spec.profile_pair is not None:
        return {}
    return {f"{user}/p/{item['id']}": zero_shot_prompt(ds.task, spec.input_prefix + item["text"])
            for split in ds.splits for user in ds.users(split)
            for item in _profile_items(ds, split, user, max_profile_pairs)}


def pair_sources(ds: LaMPDataset, max_profile_pairs: int | None = None,
                 paraphrases: dict[str, str] | None = None) -> tuple[list[PairSource], dict[str, int]]:
    """Every user's (input, chosen) pairs: profile items (newest max_profile_pairs), then queries.

    paraphrases: pair_id -> the policy's paraphrase, needed where profile items are bare texts; an empty
    paraphrase drops the item (counted per split in the returned {split: dropped_empty_paraphrase})."""
    spec = TASKS[ds.task]
    out: list[PairSource] = []
    dropped = {split: 0 for split in ds.splits}
    for split in ds.splits:
        for user in sorted(ds.users(split)):
            for item in _profile_items(ds, split, user, max_profile_pairs):
                pid = f"{user}/p/{item['id']}"
                if spec.profile_pair is not None:
                    text, output = spec.profile_pair(item)
                else:
                    if paraphrases is None or pid not in paraphrases:
                        raise PrefLaMPError(f"{ds.task} profile items are bare texts: pair {pid!r} needs the "
                                            "policy's paraphrase as its input")
                    if not paraphrases[pid].strip():
                        dropped[split] += 1
                        continue
                    text, output = spec.input_prefix + paraphrases[pid].strip(), item["text"]
                out.append(PairSource(pid, user, split, "profile", text, output))
            for q in ds.users(split)[user]:
                out.append(PairSource(f"{user}/q/{q.id}", user, split, "query", q.input, q.gold))
    return out, dropped


def negative_user(ds: LaMPDataset, src: PairSource, seed: int) -> str:
    """The other user of the same split whose profile conditions this pair's rejected text (per-pair stream,
    so adding or removing other pairs does not shift it)."""
    others = sorted(u for u in ds.users(src.split) if u != src.user_id)
    if not others:
        raise PrefLaMPError(f"split {src.split!r} has only user {src.user_id!r}: content-matched negatives need "
                            "at least two users per split")
    return random.Random(f"{seed}/{src.pair_id}").choice(others)


def negative_prompts(ds: LaMPDataset, sources: list[PairSource], rejected: str, icl_n: int,
                     seed: int) -> dict[str, tuple[str, str | None]]:
    """pair_id -> (prompt whose greedy continuation is the rejected text, the conditioning user or None)."""
    if rejected == "policy":
        return {s.pair_id: (zero_shot_prompt(ds.task, s.input), None) for s in sources}
    if rejected != "icl-other":
        raise PrefLaMPError(f"rejected source {rejected!r} is not generated ({GENERATED_SOURCES})")
    out = {}
    for s in sources:
        v = negative_user(ds, s, seed)
        out[s.pair_id] = (icl_prompt(ds.task, s.input, ds.profile(s.split, v), n=icl_n), v)
    return out


def build_pref_lamp(ds: LaMPDataset, sources: list[PairSource], rejected: str = "icl-other",
                    texts: dict[str, str] | None = None, negative_users: dict[str, str | None] | None = None,
                    seed: int = 0, min_profile_pairs: int = 4,
                    dropped_paraphrases: dict[str, int] | None = None) -> PrefLaMP:
    """Build Pref-LaMP pairs from `pair_sources` output.

    Generated sources need `texts` (pair_id -> the policy's continuation) for every source. Pairs whose
    rejected text is empty or equal to the chosen text carry no preference and are dropped and counted; users
    left with fewer than `min_profile_pairs` profile pairs (or no query pair) are skipped and counted.
    """
    if rejected not in REJECTED_SOURCES:
        raise PrefLaMPError(f"rejected must be one of {REJECTED_SOURCES}, got {rejected!r}")
    if rejected in GENERATED_SOURCES and texts is None:
        raise PrefLaMPError(f"rejected={rejected!r} needs texts (pair_id -> the policy's greedy continuation)")
    # Other-user negatives come from profile outputs only, so no held-out gold text is used anywhere else.
    profile_outputs = sorted((s.user_id, s.chosen) for s in sources if s.kind == "profile")

    pairs: list[PrefPair] = []
    stats: dict[str, dict] = {}
    for split in ds.splits:
        st = {"users": 0, "users_skipped": 0, "profile_pairs": 0, "query_pairs": 0,
              "dropped_empty_rejected": 0, "dropped_rejected_equals_chosen": 0,
              "dropped_empty_paraphrase": (dropped_paraphrases or {}).get(split, 0)}
        by_user: dict[str, list[PairSource]] = {}
        for s in sources:
            if s.split == split:
                by_user.setdefault(s.user_id, []).append(s)
        for user, srcs in sorted(by_user.items()):
            rng = random.Random(f"{seed}/{split}/{user}")  # per-user stream: other users do not shift it
            others = [(u, out) for u, out in profile_outputs if u != user]
            user_pairs = []
            for s in srcs:
                neg_user = None
                if rejected in GENERATED_SOURCES:
                    if s.pair_id not in texts:
                        raise PrefLaMPError(f"no generated rejected text for pair id {s.pair_id!r}")
                    rej = texts[s.pair_id].strip()
                    neg_user = (negative_users or {}).get(s.pair_id)
                else:
                    if not others:
                        raise PrefLaMPError("rejected='other-user' needs at least two users")
                    neg_user, rej = rng.choice(others)
                if not rej:
                    st["dropped_empty_rejected"] += 1
                elif rej == s.chosen.strip():
                    st["dropped_rejected_equals_chosen"] += 1
                else:
                    user_pairs.append(PrefPair(s.pair_id, user, split, s.kind, s.input, s.chosen, rej, neg_user))
            n_prof = sum(p.kind == "profile" for p in user_pairs)
            n_query = len(user_pairs) - n_prof
            if n_prof < min_profile_pairs or n_query == 0:
                st["users_skipped"] += 1
                continue
            st["users"] += 1
            st["profile_pairs"] += n_prof
            st["query_pairs"] += n_query
            pairs.extend(user_pairs)
        stats[split] = st
    return PrefLaMP(task=ds.task, rejected_source=rejected, pairs=pairs, stats=stats)
