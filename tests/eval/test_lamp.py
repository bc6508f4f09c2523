import json

import pytest

from rgd_eval.lamp import DEFAULT_LAMP_DIR, LaMPFormatError, load_lamp
from rgd_eval.tasks import canonical_task


def _write(root, split, questions, outputs):
    (root / f"{split}_questions.json").write_text(json.dumps(questions), encoding="utf-8")
    (root / f"{split}_outputs.json").write_text(json.dumps(outputs), encoding="utf-8")


def _valid(task="LaMP_4"):
    questions = [
        {"id": "1", "input": "Generate a headline for the following article: a", "user_id": "ua",
         "profile": [{"id": "p1", "text": "t1", "title": "h1"}, {"id": "p2", "text": "t2", "title": "h2"}]},
        {"id": "2", "input": "Generate a headline for the following article: b", "user_id": "ua",
         "profile": [{"id": "p1", "text": "t1", "title": "h1"}, {"id": "p3", "text": "t3", "title": "h3"}]},
        {"id": 3, "input": "Generate a headline for the following article: c",
         "profile": [{"id": "p9", "text": "t9", "title": "h9"}]},
    ]
    outputs = {"task": task, "golds": [{"id": "1", "output": "A"}, {"id": "2", "output": "B"},
                                       {"id": "3", "output": "C"}]}
    return questions, outputs


@pytest.mark.parametrize("name", ["LaMP_4", "LaMP-4", "lamp4"])
def test_task_names(name):
    assert canonical_task(name) == "LaMP-4"


def test_unknown_task_raises():
    with pytest.raises(ValueError, match="LaMP-4"):
        canonical_task("LaMP-99")


@pytest.mark.parametrize("task", ["LaMP_4", "LaMP-4"])
def test_load_valid(tmp_path, task):
    _write(tmp_path, "dev", *_valid(task))
    ds = load_lamp(tmp_path)
    assert ds.task == "LaMP-4" and list(ds.splits) == ["dev"]
    users = ds.users("dev")
    # user_id groups queries; a question without user_id is its own user (original LaMP semantics).
    assert {u: [q.id for q in qs] for u, qs in users.items()} == {"ua": ["1", "2"], "3": ["3"]}
    assert [it["id"] for it in ds.profile("dev", "ua")] == ["p1", "p2", "p3"]
    assert [q.gold for q in ds.splits["dev"]] == ["A", "B", "C"]
    assert ds.counts() == {"dev": {"users": 2, "queries": 3, "profile_items": 4}}


def test_expected_task_mismatch(tmp_path):
    _write(tmp_path, "dev", *_valid())
    with pytest.raises(LaMPFormatError, match="expected LaMP-5"):
        load_lamp(tmp_path, task="LaMP-5")


def test_malformed_json_names_file(tmp_path):
    q, o = _valid()
    _write(tmp_path, "dev", q, o)
    (tmp_path / "dev_questions.json").write_text('[{"id": "1", "input": ', encoding="utf-8")
    with pytest.raises(LaMPFormatError, match="malformed JSON") as e:
        load_lamp(tmp_path)
    assert e.value.file.endswith("dev_questions.json")


@pytest.mark.parametrize("field", ["input", "profile", "id"])
def test_missing_question_field(tmp_path, field):
    q, o = _valid()
    del q[1][field]
    _write(tmp_path, "dev", q, o)
    with pytest.raises(LaMPFormatError, match="missing") as e:
        load_lamp(tmp_path)
    assert e.value.field == field and e.value.file.endswith("dev_questions.json")
    assert e.value.id == ("2" if field != "id" else "#1")


def test_missing_profile_field_names_item(tmp_path):
    q, o = _valid()
    del q[0]["profile"][1]["title"]
    _write(tmp_path, "dev", q, o)
    with pytest.raises(LaMPFormatError) as e:
        load_lamp(tmp_path)
    assert (e.value.id, e.value.field) == ("1/profile/p2", "title")


def test_empty_output(tmp_path):
    q, o = _valid()
    o["golds"][2]["output"] = "   "
    _write(tmp_path, "dev", q, o)
    with pytest.raises(LaMPFormatError, match="empty") as e:
        load_lamp(tmp_path)
    assert (e.value.id, e.value.field) == ("3", "output") and e.value.file.endswith("dev_outputs.json")


def test_mismatched_ids(tmp_path):
    q, o = _valid()
    o["golds"][0]["id"] = "42"
    _write(tmp_path, "dev", q, o)
    with pytest.raises(LaMPFormatError, match="ids differ") as e:
        load_lamp(tmp_path)
    assert "'1'" in str(e.value) and "'42'" in str(e.value)


def test_duplicate_id(tmp_path):
    q, o = _valid()
    q[1]["id"] = "1"
    _write(tmp_path, "dev", q, o)
    with pytest.raises(LaMPFormatError, match="duplicate") as e:
        load_lamp(tmp_path)
    assert e.value.id == "1"


def test_shipped_default_data_loads_with_documented_counts():
    ds = load_lamp(DEFAULT_LAMP_DIR, task="LaMP-4")
    assert ds.counts() == {"test": {"users": 50, "queries": 200, "profile_items": 1113},
                           "train": {"users": 50, "queries": 200, "profile_items": 1056}}
    assert not set(ds.users("train")) & set(ds.users("test"))
    for split in ds.splits:
        for user, qs in ds.users(split).items():
            profile = ds.profile(split, user)
            assert len(qs) == 4 and 4 <= len(profile) <= 30
            # no held-out (article, headline) is also a profile item of that user (recurring columns reuse a
            # short description, e.g. weekly "funniest tweets", so texts alone may repeat)
            assert not {(q.input.split(": ", 1)[1], q.gold) for q in qs} & {(it["text"], it["title"]) for it in profile}
