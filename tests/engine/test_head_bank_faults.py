"""Head-bank faults: every bad head, bias, file or save target gets a HeadBankError (or an OSError naming the
target) that names the user / tensor / dtype / file, and leaves the bank and its file unchanged.

The reference for what is storable is numpy's float32 (np.finfo(np.float32).max and np.float32 casts), not the
bank's own checks.
"""
import hashlib
import math
import os
import random

import numpy as np
import pytest
import torch

from rgd_engine import HeadBank, HeadBankError, TokenHeadBank, load_bank
from rgd_engine.atomic import atomic_write
from rgd_engine.cli import main

D = 8
F32_MAX = float(np.finfo(np.float32).max)


def bank_with(users, d=D, capacity=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = HeadBank(d, capacity=capacity, backbone_id="tiny")
    for u in users:
        bank.add(u, torch.randn(d, generator=g), float(torch.rand(1, generator=g)))
    return bank


def snapshot(bank):
    return bank.W.clone(), bank.b.clone(), list(bank.users), bank.capacity


def assert_unchanged(bank, snap):
    W, b, users, cap = snap
    assert torch.equal(bank.W, W) and torch.equal(bank.b, b) and bank.users == users and bank.capacity == cap


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("op", ["add", "replace"])
@pytest.mark.parametrize("value", [1e300, 1e39, -4e38])
def test_float64_head_beyond_float32_is_rejected(tmp_path, op, value):
    """The issue's case: a finite float64 head that becomes inf in the float32 bank; the file must stay loadable."""
    bank = bank_with(["a"])
    snap = snapshot(bank)
    head = torch.full((D,), value, dtype=torch.float64)
    with pytest.raises(HeadBankError, match=r"user '(new|a)'.*W has values beyond float32"):
        bank.add("new", head) if op == "add" else bank.replace("a", head)
    assert_unchanged(bank, snap)
    with pytest.raises(HeadBankError, match=r"user 'a'.*b has values beyond float32"):
        bank.replace("a", torch.zeros(D), value)
    assert_unchanged(bank, snap)
    bank.save(tmp_path / "b.safetensors")
    again = load_bank(tmp_path / "b.safetensors")
    assert torch.equal(again.W, bank.W) and again.users == ["a"]


@pytest.mark.parametrize("bias,match", [
    (None, "bias must be a number, got NoneType"),
    ("1.5", "bias must be a number, got str '1.5'"),
    (b"1", "bias must be a number, got bytes"),
    (True, "bias must be a number, got bool"),
    (torch.ones(3), r"bias must be a scalar, got shape \(3,\)"),
    (np.zeros((2, 2)), r"bias must be a scalar, got shape \(2, 2\)"),
    (torch.tensor(1 + 2j), "bias must be a real number"),
    (math.nan, "NaN or inf in b"),
    (-math.inf, "NaN or inf in b"),
    (object(), "bias is not a numeric tensor"),
])
def test_bad_bias_names_the_user(bias, match):
    bank = bank_with(["a"])
    snap = snapshot(bank)
    with pytest.raises(HeadBankError, match=r"user 'zed'.*" + match):
        bank.add("zed", torch.zeros(D), bias)
    with pytest.raises(HeadBankError, match=r"user 'a'.*" + match):
        bank.replace("a", torch.zeros(D), bias)
    assert_unchanged(bank, snap)


@pytest.mark.parametrize("weight,match", [
    (None, "W must be a float tensor, got NoneType"),
    ("0.1", "W must be a float tensor, got str"),
    ([[1.0], [1.0, 2.0]], "W is not a numeric tensor"),
    (torch.zeros(D, dtype=torch.int32), "W must be floating point, got torch.int32"),
    (torch.zeros(D, dtype=torch.complex64), "W must be floating point, got torch.complex64"),
    (torch.zeros(D, 1), rf"W shape \({D}, 1\) != \({D},\)"),
])
def test_bad_weight_names_the_user(weight, match):
    bank = bank_with(["a"])
    snap = snapshot(bank)
    with pytest.raises(HeadBankError, match=r"user 'zed'.*" + match):
        bank.add("zed", weight)
    assert_unchanged(bank, snap)


def test_accepted_bias_forms_are_stored_exactly():
    bank = HeadBank(D)
    for i, bias in enumerate([2, 0.25, np.float64(-1.5), torch.tensor(3.0), torch.tensor([4.0]), np.array([[5]])]):
        bank.add(f"u{i}", torch.zeros(D), bias)
    assert bank.b[:6].tolist() == [2.0, 0.25, -1.5, 3.0, 4.0, 5.0]


def test_token_bank_overflow_and_none():
    bank = TokenHeadBank(D, rank=2)
    bank.add("a", torch.ones(2, D), torch.ones(2, D))
    P = bank.P.clone()
    with pytest.raises(HeadBankError, match="user 'b'.*Q has values beyond float32"):
        bank.add("b", torch.ones(2, D), torch.full((2, D), 1e39, dtype=torch.float64))
    with pytest.raises(HeadBankError, match="user 'a'.*P must be a float tensor, got NoneType"):
        bank.replace("a", None, torch.ones(2, D))
    assert torch.equal(bank.P, P) and bank.users == ["a"]


def test_user_id_must_be_utf8():
    bank = HeadBank(D)
    with pytest.raises(HeadBankError, match="not valid UTF-8"):
        bank.add("ab\udcff", torch.zeros(D))
    assert len(bank) == 0


# -- files -----------------------------------------------------------------------------------------------------
def _rewrite(path, dtype=None, W=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if W is not None:
        tensors["W"] = W
    if dtype is not None:
        tensors = {k: t.to(dtype) for k, t in tensors.items()}
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_integer_tensors_in_a_file_are_rejected_naming_the_dtype(tmp_path, dtype):
    path = tmp_path / "bank.safetensors"
    bank_with(["a"]).save(path)
    _rewrite(path, dtype=dtype)
    target = bank_with(["keep"], seed=3)
    snap = snapshot(target)
    with pytest.raises(HeadBankError, match=rf"bank.safetensors.*tensor '(W|b)' has dtype {dtype}"):
        target.load(path)
    assert_unchanged(target, snap)
    with pytest.raises(HeadBankError, match="must be floating point"):
        load_bank(path)


def test_float64_file_beyond_float32_is_rejected(tmp_path):
    path = tmp_path / "bank.safetensors"
    bank_with(["a", "b"]).save(path)
    W = torch.zeros(2, D, dtype=torch.float64)
    W[1, 3] = 1e300  # user 'b' (slot 1); finite in the file, inf in the bank
    _rewrite(path, W=W)
    target = bank_with(["keep"])
    snap = snapshot(target)
    with pytest.raises(HeadBankError, match=r"users \['b'\] contain NaN or inf \(in float32\)"):
        target.load(path)
    assert_unchanged(target, snap)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_files_load_exactly(tmp_path, dtype):
    path = tmp_path / "bank.safetensors"
    bank_with(["a", "b"]).save(path)
    _rewrite(path, dtype=dtype)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        W_file = f.get_tensor("W")
    want = np.asarray(W_file.double().numpy(), dtype=np.float32)  # independent float32 rounding
    got = load_bank(path)
    assert got.W.dtype == torch.float32 and np.array_equal(got.W.numpy(), want)


def test_directory_as_bank(tmp_path):
    with pytest.raises(HeadBankError, match=r"is a directory, not a head-bank"):
        load_bank(tmp_path)
    with pytest.raises(HeadBankError, match=r"is a directory"):
        bank_with(["a"]).load(tmp_path)


def test_save_failure_names_the_target_and_keeps_the_old_file(tmp_path):
    """A save that cannot complete (the target is a folder: a real failure even for root) names the target, not
    the temp file, removes the temp file, and leaves the old file in place."""
    target = tmp_path / "heads"
    (target / "inner").mkdir(parents=True)
    with pytest.raises(OSError) as e:
        bank_with(["a"]).save(target)
    assert str(target) in str(e.value) and ".tmp" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["heads"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_save_into_read_only_folder_names_the_target(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "bank.safetensors"
    bank_with(["a"]).save(path)
    before = digest(path)
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError) as e:
            bank_with(["b"]).save(path)
        assert str(path) in str(e.value) and ".tmp" not in str(e.value)
    finally:
        folder.chmod(0o755)
    assert digest(path) == before and os.listdir(folder) == ["bank.safetensors"]


def test_save_temp_file_errors_are_renamed(tmp_path, monkeypatch):
    """As above via a simulated read-only folder (mkstemp refused), which also runs as root."""
    import tempfile

    def refuse(dir, prefix, suffix):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "abc" + suffix))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    path = tmp_path / "bank.safetensors"
    with pytest.raises(PermissionError) as e:
        atomic_write(path, lambda f: f.write("x"))
    assert e.value.filename == str(path) and ".tmp" not in str(e.value)


def test_save_refuses_heads_edited_to_nan(tmp_path):
    path = tmp_path / "bank.safetensors"
    bank = bank_with(["a", "b"])
    bank.save(path)
    before = digest(path)
    bank.W[bank.slot("b"), 0] = math.nan  # bypassing add/replace
    with pytest.raises(HeadBankError, match=r"cannot save .*users \['b'\] contain NaN"):
        bank.save(path)
    assert digest(path) == before


def test_cli_with_a_bad_bank_file_exits_2_and_keeps_it(tiny_dirs, tmp_path, capsys):
    path = tmp_path / "bank.safetensors"
    HeadBank(64).save(path)
    _rewrite(path, dtype=torch.int32)
    before = digest(path)
    code = main(["--model", str(tiny_dirs["llama"]), "--prompt", "x", "--heads", str(path), "--user", "a"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "dtype torch.int32" in err.strip().splitlines()[-1]
    assert digest(path) == before


# -- fuzz of the bank API ----------------------------------------------------------------------------------------
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64, torch.bool,
          torch.complex64]
SHAPES = [(D,), (D - 1,), (D, 1), (), (2, D), (0,)]
MAGNITUDES = [0.0, 1.0, 3.5, 1e4, 6e4, 1e38, 3e38, 1e39, 1e300, math.inf, math.nan]
BIASES = [0, 1.5, -2, math.nan, math.inf, 1e39, 1e300, None, "1.5", torch.tensor([1.0, 2.0]), torch.tensor(0.5),
          np.float64(-0.75)]


def _storable(dtype, shape, values: np.ndarray, bias) -> bool:
    """The documented contract, computed with numpy: a float dtype, shape (D,), every value (as it exists in
    `dtype`) finite with |x| <= float32 max; a real scalar bias with the same bound."""
    if not dtype.is_floating_point or shape != (D,):
        return False
    if not (np.isfinite(values).all() and (np.abs(values) <= F32_MAX).all()):
        return False
    if bias is None or isinstance(bias, (str, bool)):
        return False
    b = np.asarray(bias.numpy() if isinstance(bias, torch.Tensor) else bias, dtype=np.float64)
    return b.size == 1 and bool(np.isfinite(b).all()) and abs(float(b.reshape(()))) <= F32_MAX


def test_fuzz_bank_api(tmp_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    bank = bank_with(["a", "b"], capacity=2)
    accepted = rejected = 0
    for case in range(150):
        dtype, shape, mag = rng.choice(DTYPES), rng.choice(SHAPES), rng.choice(MAGNITUDES)
        bias = rng.choice(BIASES)
        if rng.random() < 0.4:  # a valid draw, so that accepted heads are checked too
            dtype, shape = rng.choice(DTYPES[:4]), (D,)
            mag, bias = rng.choice(MAGNITUDES[:5]), rng.choice([0, 1.5, -2, torch.tensor(0.5), np.float64(-0.75)])
        signs = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
        head = (signs * mag).to(dtype) if dtype.is_floating_point or dtype.is_complex else \
            torch.randint(-3, 3, shape, generator=g).to(dtype)
        values = head.double().numpy() if not dtype.is_complex else np.abs(head.numpy()).astype(np.float64)
        user = rng.choice(["a", "b", f"new{case}"])
        op = "replace" if user in bank else "add"
        snap = snapshot(bank)
        ok = _storable(dtype, tuple(shape), values, bias)
        msg = f"seed {seed} case {case}: {op} {user!r} dtype={dtype} shape={shape} magnitude={mag} bias={bias!r}"
        try:
            getattr(bank, op)(user, head, bias)
        except HeadBankError as e:
            assert not ok, f"{msg}: rejected ({e})"
            assert repr(user) in str(e), f"{msg}: message does not name the user: {e}"
            assert_unchanged(bank, snap)
            rejected += 1
            continue
        assert ok, f"{msg}: accepted"
        w, b = bank.head(user)
        assert np.array_equal(w.numpy(), values.astype(np.float32)), msg
        bias_value = float(np.asarray(bias.numpy() if isinstance(bias, torch.Tensor) else bias).reshape(()))
        assert b == float(np.float32(bias_value)), msg
        accepted += 1
    assert accepted and rejected, f"seed {seed}: {accepted} accepted, {rejected} rejected"
    path = tmp_path / "fuzzed.safetensors"
    bank.save(path)  # whatever was accepted is storable and loads back identically
    again = load_bank(path)
    assert again.users == bank.users and torch.equal(again.W, bank.W) and torch.equal(again.b, bank.b), seed
