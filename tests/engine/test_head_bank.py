import math

import pytest
import torch

from rgd_engine import HeadBank, HeadBankError, UnknownUserError


def bank_with(users, d=8, capacity=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = HeadBank(d, capacity=capacity, backbone_id="tiny")
    for u in users:
        bank.add(u, torch.randn(d, generator=g), float(torch.rand(1, generator=g)))
    return bank


def test_add_slot_replace_remove_in_place():
    bank = bank_with(["a", "b"])
    ptr = bank.W.data_ptr()
    sa = bank.slot("a")
    w_new = torch.arange(8.0)
    bank.replace("a", w_new, 2.5)
    assert bank.W.data_ptr() == ptr and bank.slot("a") == sa
    assert torch.equal(bank.W[sa], w_new) and bank.b[sa] == 2.5
    bank.remove("a")
    assert "a" not in bank and len(bank) == 1 and bank.W[sa].abs().sum() == 0
    assert bank.add("c", torch.ones(8)) == sa  # the freed slot is reused, still no reallocation
    assert bank.W.data_ptr() == ptr
    assert bank.slot(None) == -1


def test_grows_by_doubling_and_keeps_heads():
    bank = bank_with(["a", "b"], capacity=2)
    heads = {u: bank.head(u) for u in bank.users}
    bank.add("c", torch.zeros(8))
    assert bank.capacity == 4
    bank.add("d", torch.zeros(8))
    bank.add("e", torch.zeros(8))
    assert bank.capacity == 8
    for u, (w, b) in heads.items():
        assert torch.equal(bank.head(u)[0], w) and bank.head(u)[1] == b
    assert sorted(bank.slots(["a", "b", "c", "d", "e"]).tolist()) == list(range(5))


def test_save_load_round_trip(tmp_path):
    bank = bank_with(["alice", "bob", "carol"], capacity=4)
    bank.remove("bob")
    bank.default_user = "alice"
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    loaded = HeadBank.from_file(path)
    assert loaded.users == ["alice", "carol"] and loaded.backbone_id == "tiny" and loaded.default_user == "alice"
    assert loaded.hidden_size == 8 and loaded.capacity == 4
    for u in loaded.users:
        assert torch.equal(loaded.head(u)[0], bank.head(u)[0]) and loaded.head(u)[1] == bank.head(u)[1]
    assert loaded.slot("zed") == loaded.slot("alice")  # explicit default head
    loaded.add("dave", torch.ones(8))  # free slots survive the round trip
    assert loaded.capacity == 4


def test_failed_save_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "bank.safetensors"
    bank_with(["a"]).save(path)
    before = path.read_bytes()
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        bank_with(["x", "y"]).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]  # no temp file left behind


def test_unknown_user_names_user_and_count():
    bank = bank_with(["a", "b"])
    with pytest.raises(UnknownUserError, match=r"unknown user 'zoe'.*2 users"):
        bank.slot("zoe")
    with pytest.raises(UnknownUserError, match="zoe"):
        bank.replace("zoe", torch.zeros(8))


@pytest.mark.parametrize("weight,match", [
    (torch.zeros(7), r"shape \(7,\) != \(8,\)"),
    (torch.zeros(8, dtype=torch.int64), "floating point"),
    (torch.tensor([math.nan] + [0.0] * 7), "NaN or inf"),
    (torch.tensor([math.inf] + [0.0] * 7), "NaN or inf"),
])
def test_bad_heads_are_rejected_and_bank_unchanged(weight, match):
    bank = bank_with(["a"])
    W, b = bank.W.clone(), bank.b.clone()
    with pytest.raises(HeadBankError, match=match):
        bank.add("new", weight)
    with pytest.raises(HeadBankError, match=match):
        bank.replace("a", weight)
    assert torch.equal(bank.W, W) and torch.equal(bank.b, b) and bank.users == ["a"]


def test_nan_bias_and_duplicate_add():
    bank = bank_with(["a"])
    with pytest.raises(HeadBankError, match="NaN or inf"):
        bank.add("b", torch.zeros(8), math.nan)
    with pytest.raises(HeadBankError, match="'a' already has a head"):
        bank.add("a", torch.zeros(8))


def _corrupt(path, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    tensors.update(changes.pop("tensors", {}))
    meta.update(changes)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("change,match", [
    ({"format_version": "99"}, "format version"),
    ({"hidden_size": "9"}, "hidden size 9, expected 8"),
    ({"slots": '{"a": 77}'}, "slot map is invalid"),
    ({"tensors": {"W": torch.full((2, 8), math.nan)}}, r"users \['a'\] contain NaN"),
])
def test_load_validates_and_leaves_bank_unchanged(tmp_path, change, match):
    path = tmp_path / "bank.safetensors"
    bank_with(["a"]).save(path)
    _corrupt(path, **change)
    target = bank_with(["keep"], seed=3)
    W = target.W.clone()
    with pytest.raises(HeadBankError, match=match):
        target.load(path)
    assert target.users == ["keep"] and torch.equal(target.W, W)


def test_load_rejects_missing_and_garbage_files(tmp_path):
    bank = bank_with(["a"])
    with pytest.raises(HeadBankError, match="does not exist"):
        bank.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(HeadBankError, match="junk.safetensors.*not a readable"):
        bank.load(junk)
    assert bank.users == ["a"]
