"""Build LaMP-format data from raw per-author records, the way LaMP did: each eligible author is a user, the
author's newest items are held-out queries (gold = the author's real output), the preceding items are the
profile; users are split into train/test.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from .io import write_json, write_text
from .lamp import LaMPFormatError
from .tasks import TASKS, canonical_task


@dataclass(frozen=True)
class RawRecord:
    author: str
    date: str          # ISO date; sorts chronologically as a string
    fields: dict       # task profile fields, e.g. {"text": ..., "title": ...} for LaMP-4
    line: str          # the source line verbatim (to ship the exact subset used)
    index: int         # position in the source; breaks date ties deterministically


@dataclass(frozen=True)
class BuildParams:
    task: str = "LaMP-4"
    min_items: int = 8          # an author needs this many records to become a user
    n_users: int | None = None  # None: every eligible author
    n_train: int | None = None  # None: half of the users (rounded down); the others are test users
    queries_per_user: int = 4   # newest items -> held-out queries
    profile_cap: int = 30       # newest preceding items kept as the profile
    seed: int = 0

    def check(self) -> None:
        if self.min_items < self.queries_per_user + 1:
            raise ValueError("min_items must leave at least one profile item: min_items >= queries_per_user + 1")
        if self.n_users is not None and self.n_users < 2:
            raise ValueError("n_users must be >= 2 (both splits non-empty)")
        if self.n_train is not None and self.n_users is not None and not 0 < self.n_train < self.n_users:
            raise ValueError("need 0 < n_train < n_users (both splits non-empty)")
        if self.queries_per_user < 1 or self.profile_cap < 1:
            raise ValueError("queries_per_user and profile_cap must be >= 1")


@dataclass
class Built:
    task: str
    splits: dict[str, tuple[list[dict], dict]]   # split -> (questions, outputs) in LaMP format
    stats: dict
    raw_lines: list[str] = field(default_factory=list)  # source lines of the records used, source order


def read_news_jsonl(path: str | Path) -> tuple[list[RawRecord], dict[str, int]]:
    """News Category Dataset lines -> LaMP-4 raw records (text = short_description, title = headline).

    Drops and counts: empty authors, multi-author / wire bylines (a comma in `authors`), empty text or headline.
    """
    path = Path(path)
    records: list[RawRecord] = []
    dropped = {"empty_author": 0, "multi_author_or_wire": 0, "empty_text_or_title": 0}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise LaMPFormatError(f"malformed JSON: {e.msg}", file=path, id=f"line {i + 1}") from None
            for key in ("authors", "headline", "short_description", "date"):
                if not isinstance(rec.get(key), str):
                    raise LaMPFormatError("missing or non-string field", file=path, id=f"line {i + 1}", field=key)
            author = rec["authors"].strip()
            if not author:
                dropped["empty_author"] += 1
            elif "," in author:
                dropped["multi_author_or_wire"] += 1
            elif not rec["short_description"].strip() or not rec["headline"].strip():
                dropped["empty_text_or_title"] += 1
            else:
                records.append(RawRecord(author=author, date=rec["date"], index=i, line=line.rstrip("\n"),
                                         fields={"text": rec["short_description"].strip(),
                                                 "title": rec["headline"].strip()}))
    return records, {"records_read": sum(dropped.values()) + len(records), **dropped}


def build_lamp(records: list[RawRecord], params: BuildParams = BuildParams()) -> Built:
    params.check()
    task = canonical_task(params.task)
    spec = TASKS[task]
    if spec.profile_pair is None:
        raise ValueError(f"{task} items carry no (input, output) pair; the builder supports "
                         f"{[t for t, s in TASKS.items() if s.profile_pair is not None]}")
    by_author: dict[str, list[RawRecord]] = {}
    for r in records:
        by_author.setdefault(r.author, []).append(r)
    eligible = sorted(a for a, rs in by_author.items() if len(rs) >= params.min_items)
    n_users = len(eligible) if params.n_users is None else params.n_users
    if len(eligible) < max(n_users, 2):
        raise ValueError(f"only {len(eligible)} authors have >= {params.min_items} items; "
                         f"n_users={n_users} requested")
    n_train = n_users // 2 if params.n_train is None else params.n_train
    if not 0 < n_train < n_users:
        raise ValueError(f"need 0 < n_train < n_users (both splits non-empty), got {n_train} of {n_users}")
    # Two independent seeded draws, so rebuilding from the shipped subset (only the selected authors)
    # reselects the same users and the same split.
    selected = sorted(random.Random(params.seed).sample(eligible, n_users))
    order = list(selected)
    random.Random(params.seed + 1).shuffle(order)
    train_authors = set(order[:n_train])

    splits: dict[str, tuple[list[dict], dict]] = {s: ([], {"task": task.replace("-", "_"), "golds": []})
                                                  for s in ("train", "test")}
    user_authors: dict[str, str] = {}
    profile_items = {"train": 0, "test": 0}
    kept: set[int] = set()  # source indices of the records used (queries + profiles)
    width = max(2, len(str(n_users - 1)))
    for u, author in enumerate(selected):
        uid = f"u{u:0{width}d}"
        user_authors[uid] = author
        items = sorted(by_author[author], key=lambda r: (r.date, -r.index))  # source is newest first
        queries = items[-params.queries_per_user:]
        profile_src = items[: -params.queries_per_user][-params.profile_cap:]
        kept.update(r.index for r in queries + profile_src)
        profile = [{"id": f"{uid}-p{k}", **r.fields, "date": r.date} for k, r in enumerate(profile_src)]
        split = "train" if author in train_authors else "test"
        profile_items[split] += len(profile)
        questions, outputs = splits[split]
        for k, r in enumerate(queries):
            qid = f"{uid}-q{k}"
            text, gold = spec.profile_pair(r.fields)
            questions.append({"id": qid, "user_id": uid, "input": text, "profile": profile})
            outputs["golds"].append({"id": qid, "output": gold})

    raw_lines = [r.line for r in sorted(records, key=lambda r: r.index) if r.index in kept]
    stats = {
        "params": vars(params) | {"task": task},
        "authors": len(by_author),
        "authors_eligible": len(eligible),
        "authors_skipped_too_few_items": len(by_author) - len(eligible),
        "authors_eligible_not_sampled": len(eligible) - n_users,
        "users": {s: len({q["user_id"] for q in qs}) for s, (qs, _) in splits.items()},
        "queries": {s: len(qs) for s, (qs, _) in splits.items()},
        "profile_items": profile_items,
        "user_authors": user_authors,
    }
    return Built(task=task, splits=splits, stats=stats, raw_lines=raw_lines)


def write_lamp(built: Built, out_dir: str | Path, source_stats: dict | None = None) -> None:
    """Write {split}_questions.json / {split}_outputs.json and build_stats.json (with the reader's drop counts)."""
    out = Path(out_dir)
    for split, (questions, outputs) in built.splits.items():
        write_json(out / f"{split}_questions.json", questions, indent=None)  # profiles repeat per query
        write_json(out / f"{split}_outputs.json", outputs)
    write_json(out / "build_stats.json", {"source": source_stats or {}, **built.stats})


def write_raw_subset(built: Built, path: str | Path) -> None:
    """The used records' source lines, verbatim and in source order (rebuilding from it gives the same data)."""
    write_text(path, "".join(line + "\n" for line in built.raw_lines))


def load_build_stats(lamp_dir: str | Path) -> dict | None:
    path = Path(lamp_dir) / "build_stats.json"
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
