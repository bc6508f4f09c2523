"""Load and validate LaMP-format data: {split}_questions.json + {split}_outputs.json per split.

questions: list of {id, input, profile: [{id, ...task fields}], user_id?}; outputs: {task, golds: [{id, output}]}.
`user_id` is our extension (several held-out queries per user share one profile); without it each question
is its own user, as in the original LaMP files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import RGDEvalError
from .tasks import TASKS, canonical_task


class LaMPFormatError(RGDEvalError):
    """Bad LaMP-format data; names the file, the record id and the field where known."""

    def __init__(self, message: str, file: str | Path | None = None, id: str | None = None,
                 field: str | None = None):
        self.file, self.id, self.field = (str(file) if file is not None else None), id, field
        where = ", ".join(f"{k}={v!r}" for k, v in (("file", self.file), ("id", id), ("field", field))
                          if v is not None)
        super().__init__(f"{message} [{where}]" if where else message)


@dataclass(frozen=True)
class Query:
    id: str
    user_id: str
    input: str
    profile: tuple[dict, ...]   # the user's other items, each {id, <task fields>, ...}
    gold: str                   # the user's real output


@dataclass
class LaMPDataset:
    task: str                           # canonical, e.g. "LaMP-4"
    root: Path
    splits: dict[str, list[Query]]      # split name -> queries in file order

    def users(self, split: str) -> dict[str, list[Query]]:
        """user_id -> that user's queries in `split` (insertion order = file order)."""
        out: dict[str, list[Query]] = {}
        for q in self.splits[split]:
            out.setdefault(q.user_id, []).append(q)
        return out

    def profile(self, split: str, user_id: str) -> list[dict]:
        """Union of the profile items of the user's queries, deduplicated by item id, in first-seen order."""
        seen: dict[str, dict] = {}
        for q in self.users(split)[user_id]:
            for item in q.profile:
                seen.setdefault(item["id"], item)
        return list(seen.values())

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: {"users": len(self.users(s)), "queries": len(qs),
                    "profile_items": sum(len(self.profile(s, u)) for u in self.users(s))}
                for s, qs in self.splits.items()}


def _read(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise LaMPFormatError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", file=path) from None
    except FileNotFoundError:
        raise LaMPFormatError("file not found", file=path) from None


def _str_field(rec, field: str, path: Path, rec_id, allow_empty: bool = False) -> str:
    if not isinstance(rec, dict):
        raise LaMPFormatError(f"expected an object, got {type(rec).__name__}", file=path, id=rec_id)
    if field not in rec:
        raise LaMPFormatError("missing field", file=path, id=rec_id, field=field)
    val = rec[field]
    if isinstance(val, int) and not isinstance(val, bool) and field == "id":
        val = str(val)  # original LaMP ids are sometimes numbers
    if not isinstance(val, str):
        raise LaMPFormatError(f"expected a string, got {type(val).__name__}", file=path, id=rec_id, field=field)
    if not allow_empty and not val.strip():
        raise LaMPFormatError("empty value", file=path, id=rec_id, field=field)
    return val


def _load_split(root: Path, split: str, task: str | None) -> tuple[str, list[Query]]:
    qpath, opath = root / f"{split}_questions.json", root / f"{split}_outputs.json"
    outputs = _read(opath)
    if not isinstance(outputs, dict):
        raise LaMPFormatError("expected an object {task, golds}", file=opath)
    task_name = _str_field(outputs, "task", opath, None)
    try:
        file_task = canonical_task(task_name)
    except ValueError as e:
        raise LaMPFormatError(str(e), file=opath, field="task") from None
    if task is not None and file_task != task:
        raise LaMPFormatError(f"task is {file_task}, expected {task}", file=opath, field="task")
    spec = TASKS[file_task]
    golds_raw = outputs.get("golds")
    if not isinstance(golds_raw, list):
        raise LaMPFormatError("missing or non-list field", file=opath, field="golds")
    golds: dict[str, str] = {}
    for i, g in enumerate(golds_raw):
        gid = _str_field(g, "id", opath, f"#{i}")
        if gid in golds:
            raise LaMPFormatError("duplicate id", file=opath, id=gid)
        golds[gid] = _str_field(g, "output", opath, gid)

    questions_raw = _read(qpath)
    if not isinstance(questions_raw, list):
        raise LaMPFormatError("expected a list of questions", file=qpath)
    queries: list[Query] = []
    seen: set[str] = set()
    for i, q in enumerate(questions_raw):
        qid = _str_field(q, "id", qpath, f"#{i}")
        if qid in seen:
            raise LaMPFormatError("duplicate id", file=qpath, id=qid)
        seen.add(qid)
        text = _str_field(q, "input", qpath, qid)
        user = _str_field(q, "user_id", qpath, qid) if "user_id" in q else qid
        profile_raw = q.get("profile")
        if not isinstance(profile_raw, list):
            raise LaMPFormatError("missing or non-list field", file=qpath, id=qid, field="profile")
        profile = []
        for j, item in enumerate(profile_raw):
            where = f"{qid}/profile#{j}"
            item_id = _str_field(item, "id", qpath, where)
            for field in spec.profile_fields:
                _str_field(item, field, qpath, f"{qid}/profile/{item_id}")
            profile.append({**item, "id": item_id})
        queries.append(Query(id=qid, user_id=user, input=text, profile=tuple(profile), gold=""))

    missing_gold = [q.id for q in queries if q.id not in golds]
    extra_gold = sorted(set(golds) - seen)
    if missing_gold or extra_gold:
        raise LaMPFormatError(
            f"question and output ids differ: {len(missing_gold)} questions without gold "
            f"(first: {missing_gold[:5]}), {len(extra_gold)} golds without question (first: {extra_gold[:5]})",
            file=opath, id=(missing_gold or extra_gold)[0])
    queries = [Query(q.id, q.user_id, q.input, q.profile, golds[q.id]) for q in queries]
    return file_task, queries


def find_splits(root: str | Path) -> list[str]:
    """Split names with a {split}_questions.json in root, sorted."""
    return sorted(p.name[: -len("_questions.json")] for p in Path(root).glob("*_questions.json"))


def load_lamp(root: str | Path, task: str | None = None, splits: list[str] | None = None) -> LaMPDataset:
    """Load every split in `root` (or the named ones); all must be the same task (and equal `task` if given)."""
    root = Path(root)
    want = canonical_task(task) if task is not None else None
    names = splits if splits is not None else find_splits(root)
    if not names:
        raise LaMPFormatError("no *_questions.json files", file=root)
    loaded: dict[str, list[Query]] = {}
    for split in names:
        file_task, queries = _load_split(root, split, want)
        want = file_task  # every later split must match the first
        loaded[split] = queries
    return LaMPDataset(task=want, root=root, splits=loaded)


DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_LAMP_DIR = DATA_DIR / "lamp4_news"  # shipped LaMP-4 subset built from the News Category Dataset
