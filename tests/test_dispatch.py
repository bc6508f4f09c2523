"""Backend selection: RGD_BACKEND parsing, auto choice, and clear errors for unavailable backends."""
import pytest
import torch

from seeding import fresh_seed  # noqa: F401  (autouse: a printed fresh seed per test)

from rgd_engine.kernels import cpp, dispatch, reference


@pytest.fixture(autouse=True)
def _fresh_resolution():
    dispatch.resolve_backend.cache_clear()
    yield
    dispatch.resolve_backend.cache_clear()


def test_explicit_unavailable_backend_raises_with_reason():
    with pytest.raises(dispatch.BackendUnavailable, match=r"'cuda' requested for cpu but unavailable: .*CUDA tensors only"):
        dispatch.resolve_backend("cuda", "cpu")


def test_explicit_unavailable_backend_raises_through_the_op(monkeypatch):
    monkeypatch.setenv("RGD_BACKEND", "cuda")
    with pytest.raises(dispatch.BackendUnavailable, match="cuda"):
        dispatch.lmhead_topk(torch.randn(1, 8), torch.randn(16, 8), 2)


def test_unknown_backend_name_is_rejected():
    with pytest.raises(dispatch.BackendUnavailable, match="unknown backend 'fast'"):
        dispatch.resolve_backend("fast", "cpu")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in dispatch.unavailable_reason("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.unavailable_reason("triton", "cpu") is None


def test_auto_on_cpu_picks_cpp_when_built():
    if cpp._C is None:
        pytest.skip(f"rgd_engine._C not built: {cpp._IMPORT_ERROR}")
    assert dispatch.resolve_backend("auto", "cpu") == "cpp"


def test_auto_on_cpu_falls_back_to_torch_without_the_extension(monkeypatch, caplog):
    monkeypatch.setattr(cpp, "_C", None)
    with caplog.at_level("WARNING", logger="rgd_engine.kernels"):
        assert dispatch.resolve_backend("auto", "cpu") == "torch"
    assert "cpp" in caplog.text and "not importable" in caplog.text


@pytest.mark.parametrize("raw,parsed", [(None, "auto"), ("", "auto"), ("  CPP ", "cpp"), ("Torch", "torch"),
                                        ("triton", "triton")])
def test_rgd_backend_env_parsing(monkeypatch, raw, parsed):
    if raw is None:
        monkeypatch.delenv("RGD_BACKEND", raising=False)
    else:
        monkeypatch.setenv("RGD_BACKEND", raw)
    assert dispatch.requested_backend() == parsed


def test_env_choice_is_used_by_the_ops(monkeypatch):
    monkeypatch.setenv("RGD_BACKEND", "torch")
    hidden, weight = torch.randn(2, 8), torch.randn(30, 8)
    lp, ids, lse = dispatch.lmhead_topk(hidden, weight, 3)
    ref = reference.lmhead_topk_ref(hidden, weight, 3)
    assert torch.equal(ids, ref[1]) and torch.equal(lp, ref[0]) and torch.equal(lse, ref[2])


def test_cpp_binding_rejects_bad_inputs_clearly():
    if cpp._C is None:
        pytest.skip(f"rgd_engine._C not built: {cpp._IMPORT_ERROR}")
    h, w = torch.randn(2, 8), torch.randn(30, 8)
    outs = (torch.empty(2, 3), torch.empty(2, 3, dtype=torch.int64), torch.empty(2))
    with pytest.raises(RuntimeError, match="hidden dim 8 != weight dim 7"):
        cpp._C.lmhead_topk_out(h, torch.randn(30, 7), 3, *outs)
    with pytest.raises(RuntimeError, match="weight must be contiguous"):
        cpp._C.lmhead_topk_out(h, torch.randn(8, 30).t(), 3, *outs)
    with pytest.raises(RuntimeError, match="weight must be float32 or bfloat16"):
        cpp._C.lmhead_topk_out(h, w.double(), 3, *outs)
    with pytest.raises(RuntimeError, match=r"ids must have shape \[2, 3\]"):
        cpp._C.lmhead_topk_out(h, w, 3, outs[0], torch.empty(2, 4, dtype=torch.int64), outs[2])
    with pytest.raises(RuntimeError, match=r"k=31 must be in \[1, V=30\]"):
        cpp._C.lmhead_topk_out(h, w, 31, *outs)


def _gather_args(B=2, V=30, d=8, k=3):
    # query, emb, cand_ids, offset, logprob, weight
    return [torch.randn(B, d), torch.randn(V, d), torch.randint(0, V, (B, k)), torch.randn(B), -torch.rand(B, k),
            torch.rand(B)]


@pytest.mark.parametrize("index,bad,match", [
    (2, torch.tensor([[0, 1, 30], [2, 3, 4]]), r"cand_ids must be in \[0, 29\], got \[0, 30\]"),
    (2, torch.tensor([[0, -1, 2], [2, 3, 4]]), r"cand_ids must be in \[0, 29\], got \[-1, 4\]"),
    (2, torch.tensor([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]]), "cand_ids must be an integer tensor"),
    (2, torch.randint(0, 30, (3, 3)), r"cand_ids must be \[2, k\], got \(3, 3\)"),
    (0, torch.randn(2, 8, 1), r"query must be \[B, d\], got \(2, 8, 1\)"),
    (1, torch.randn(30, 7), r"emb must be \[V, 8\], got \(30, 7\)"),
    (3, torch.randn(3), r"offset must be \[2\], got \(3,\)"),
    (4, torch.randn(2, 4), r"logprob must be \[2, 3\], got \(2, 4\)"),
    (5, torch.randn(2, 1), r"weight must be \[2\], got \(2, 1\)"),
])
def test_gather_score_select_rejects_bad_inputs_by_name(index, bad, match):
    args = _gather_args()
    args[index] = bad
    with pytest.raises(ValueError, match=match):
        dispatch.gather_score_select(*args, backend="torch")


def test_gather_score_select_rejects_bad_mode_and_sampling_args():
    args = _gather_args()
    with pytest.raises(ValueError, match="mode must be 'greedy' or 'sample', got 'top_p'"):
        dispatch.gather_score_select(*args, mode="top_p", backend="torch")
    with pytest.raises(ValueError, match=r"sample mode needs rand of shape \[2\]"):
        dispatch.gather_score_select(*args, mode=reference.SAMPLE, rand=torch.rand(3), backend="torch")
    with pytest.raises(ValueError, match="tau must be > 0, got 0"):
        dispatch.gather_score_select(*args, mode=reference.SAMPLE, tau=0.0, rand=torch.rand(2), backend="torch")


def test_cpp_gather_binding_rejects_out_of_range_ids():
    if cpp._C is None:
        pytest.skip(f"rgd_engine._C not built: {cpp._IMPORT_ERROR}")
    q, emb, ids, offset, logprob, weight = _gather_args()
    ids[1, 2] = 30
    outs = (torch.empty(2, dtype=torch.int64), torch.empty(2, 3), torch.empty(2, 3))
    with pytest.raises(RuntimeError, match=r"cand_ids must be in \[0, 29\], got \[\d+, 30\]"):
        cpp._C.gather_score_select_out(q, emb, ids, offset, logprob, weight, 0.0, False, 1.0, torch.empty(0), *outs)
    with pytest.raises(RuntimeError, match="emb must be float32 or bfloat16"):
        cpp._C.gather_score_select_out(q, emb.double(), ids.clamp(max=29), offset, logprob, weight, 0.0, False, 1.0,
                                       torch.empty(0), *outs)
