"""Pref-LaMP: per-user preference pairs built from LaMP-format data.

For each user: one pair per profile item ("profile" pairs: the support set heads are fitted on) and one per
held-out query ("query" pairs: RM / policy accuracy are measured on these). chosen = the user's real output;
rejected = the base policy's greedy output for the same input (rejected="policy", texts passed in by pair id)
or another user's real output (rejected="other-user", seeded).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .lamp import LaMPDataset
from .reward_models import PairFeatures
from .tasks import TASKS

REJECTED_SOURCES = ("policy", "other-user")


class PrefLaMPError(ValueError):
    """Missing or unusable inputs to the Pref-LaMP builder (names the pair id)."""


@dataclass(frozen=True)
class PrefPair:
    pair_id: str     # "{user}/p/{profile item id}" or "{user}/q/{question id}"
    user_id: str
    split: str
    kind: str        # "profile" | "query"
    input: str       # LaMP input (instruction + source text)
    chosen: str
    rejected: str


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


def _source_pairs(ds: LaMPDataset, split: str, user: str, max_profile_pairs: int | None):
    """(pair_id, kind, input, chosen) for one user: profile items first (newest max_profile_pairs), then queries."""
    spec = TASKS[ds.task]
    if spec.profile_pair is None:
        raise PrefLaMPError(f"{ds.task} profile items are bare texts with no input; Pref-LaMP needs "
                            f"(input, output) profile items ({[t for t, s in TASKS.items() if s.profile_pair]})")
    items = ds.profile(split, user)
    if max_profile_pairs is not None:
        items = items[-max_profile_pairs:]
    out = []
    for item in items:
        text, output = spec.profile_pair(item)
        out.append((f"{user}/p/{item['id']}", "profile", text, output))
    for q in ds.users(split)[user]:
        out.append((f"{user}/q/{q.id}", "query", q.input, q.gold))
    return out


def generation_inputs(ds: LaMPDataset, max_profile_pairs: int | None = None) -> dict[str, str]:
    """pair_id -> LaMP input, for every pair whose rejected text the base policy must generate."""
    return {pid: text for split in ds.splits for user in ds.users(split)
            for pid, _, text, _ in _source_pairs(ds, split, user, max_profile_pairs)}


def build_pref_lamp(ds: LaMPDataset, rejected: str = "policy", policy_outputs: dict[str, str] | None = None,
                    seed: int = 0, min_profile_pairs: int = 4,
                    max_profile_pairs: int | None = None) -> PrefLaMP:
    """Build Pref-LaMP pairs.

    Pairs whose rejected text is empty or equal to the chosen text carry no preference and are dropped and
    counted; users left with fewer than `min_profile_pairs` profile pairs (or no query pair) are skipped and
    counted. rejected="policy" needs `policy_outputs` for every id of `generation_inputs(ds, max_profile_pairs)`.
    """
    if rejected not in REJECTED_SOURCES:
        raise PrefLaMPError(f"rejected must be one of {REJECTED_SOURCES}, got {rejected!r}")
    if rejected == "policy" and policy_outputs is None:
        raise PrefLaMPError("rejected='policy' needs policy_outputs (pair_id -> the base policy's greedy text)")

    sources = {split: {u: _source_pairs(ds, split, u, max_profile_pairs) for u in sorted(ds.users(split))}
               for split in ds.splits}
    # Other-user negatives come from profile outputs only, so no held-out gold text is used anywhere else.
    profile_outputs = sorted((u, out) for per_user in sources.values() for u, src in per_user.items()
                             for _, kind, _, out in src if kind == "profile")

    pairs: list[PrefPair] = []
    stats: dict[str, dict] = {}
    for split, per_user in sources.items():
        st = {"users": 0, "users_skipped": 0, "profile_pairs": 0, "query_pairs": 0,
              "dropped_empty_rejected": 0, "dropped_rejected_equals_chosen": 0}
        for user, src in per_user.items():
            rng = random.Random(f"{seed}/{split}/{user}")  # per-user stream: other users do not shift it
            others = [out for u, out in profile_outputs if u != user]
            user_pairs = []
            for pid, kind, text, chosen in src:
                if rejected == "policy":
                    if pid not in policy_outputs:
                        raise PrefLaMPError(f"policy_outputs has no text for pair id {pid!r}")
                    rej = policy_outputs[pid].strip()
                else:
                    if not others:
                        raise PrefLaMPError("rejected='other-user' needs at least two users")
                    rej = rng.choice(others)
                if not rej:
                    st["dropped_empty_rejected"] += 1
                elif rej == chosen.strip():
                    st["dropped_rejected_equals_chosen"] += 1
                else:
                    user_pairs.append(PrefPair(pid, user, split, kind, text, chosen, rej))
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


def features_by_user(pairs: list[PrefPair], chosen_h: torch.Tensor,
                     rejected_h: torch.Tensor) -> dict[str, PairFeatures]:
    """Group per-pair features (row i belongs to pairs[i]) by user. chosen_h, rejected_h: [P, d]."""
    if chosen_h.shape != rejected_h.shape or chosen_h.ndim != 2 or chosen_h.shape[0] != len(pairs):
        raise ValueError(f"features must both be [{len(pairs)}, d]; got {tuple(chosen_h.shape)} "
                         f"and {tuple(rejected_h.shape)}")
    rows: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        rows.setdefault(p.user_id, []).append(i)
    return {u: PairFeatures(chosen_h[idx], rejected_h[idx]) for u, idx in rows.items()}
