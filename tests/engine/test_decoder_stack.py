"""The C++ DecoderStack (csrc/cpu/decoder_stack.cpp), which runs the fast forward's few-row steps, against the fast
forward's torch loop on the same model and cache (`few_row_kernels = False`); against HF: test_fast_forward.py,
whose decode steps and candidate trees are few-row steps."""
import pytest
import torch
from seeding import fresh_seed  # noqa: F401
from test_fast_forward import CONFIGS, model_dirs  # noqa: F401  (the fixture: tiny models of odd shapes)

from rgd_engine.kernels import cpp
from rgd_engine.models import fast_llama, load_causal_lm

DTYPES = [pytest.param(d, marks=pytest.mark.skipif(not cpp.small_linear_native(d),
                                                   reason=f"this CPU cannot run small_linear in {d}"))
          for d in (torch.float32, torch.bfloat16)]
# (B, q): one-token steps of 1 and 3 rows, candidate trees, and SMALL_M rows as 1 x 16 and 4 x 4
STEPS = [(1, 1), (3, 1), (2, 5), (1, fast_llama.SMALL_M), (4, 4)]
# bf16: each op rounds to 8 bits, the projections sum in another order than torch's matmul, and torch's attention
# rounds its probabilities to bf16 (the stack's keep fp32); over 250 seeded cases the largest difference was 0.086
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=0.125, rtol=0.125)}


def _load(path, dtype, monkeypatch):
    monkeypatch.setenv("RGD_FORWARD", "fast")
    lm = load_causal_lm(str(path), dtype=dtype)
    assert lm.fast.few_row_kernels and lm.fast.stack is not None
    with torch.no_grad():  # HF initializes biases to zero, which would hide a bias left out
        for w in lm.fast.layers:
            for b in (w.b_qkv, w.b_o):
                if b is not None:
                    b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(b.numel())) * 0.5)
    return lm


def _prefilled(lm, B, P, gen):
    """A cache of B rows (row 0 left-padded by 2) after a P-token prefill, which runs the torch loop (B P > SMALL_M)."""
    ids = torch.randint(2, lm.vocab_size, (B, P), generator=gen)
    pad = torch.ones(B, P, dtype=torch.bool)
    pad[0, :2] = False
    cache = lm.new_cache(B, P + fast_llama.SMALL_M + 1)
    cache.kv.fill_(float("nan"))  # poisoned: slots past the written ones must stay untouched
    lm.forward(ids, (pad.long().cumsum(-1) - 1).clamp(min=0), cache.prefill_mask(pad), cache)
    cache.advance(P, pad)
    return cache


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONFIGS))
@torch.inference_mode()
def test_decoder_stack_matches_the_torch_loop_and_writes_only_its_slots(model_dirs, name, dtype, monkeypatch,  # noqa: F811
                                                                        fresh_seed):
    lm = _load(model_dirs[name], dtype, monkeypatch)
    gen = torch.Generator().manual_seed(fresh_seed)
    P = 2 * fast_llama.SMALL_M + 1
    for B, nq in STEPS:
        cache = _prefilled(lm, B, P, gen)
        ids = torch.randint(2, lm.vocab_size, (B, nq), generator=gen)
        pos = torch.full((B, nq), P - 1) + torch.arange(nq)
        mask = cache.tree_mask(nq)
        before = cache.kv.clone()
        kv_loop = cache.kv.clone()
        got = lm.fast.forward(ids, pos, mask, cache.kv, P)  # the stack
        lm.fast.few_row_kernels = False
        want = lm.fast.forward(ids, pos, mask, kv_loop, P)
        lm.fast.few_row_kernels = True
        msg = f"{name} {dtype} B={B} q={nq} seed {fresh_seed}"
        torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{msg}: {m}")
        new = slice(P, P + nq)
        torch.testing.assert_close(cache.kv[..., new, :], kv_loop[..., new, :], **TOL[dtype],
                                   msg=lambda m: f"{msg}, the new K/V: {m}")
        # slots before the step keep their bits; slots after it stay NaN
        assert torch.equal(cache.kv[..., :P, :], before[..., :P, :]), msg
        assert cache.kv[..., P + nq:, :].isnan().all(), msg


@pytest.mark.parametrize("dtype", DTYPES)
@torch.inference_mode()
def test_fast_forward_sends_steps_of_at_most_small_m_rows_to_the_stack(model_dirs, dtype, monkeypatch):  # noqa: F811
    lm = _load(model_dirs["llama-gqa5-tied"], dtype, monkeypatch)
    calls = []

    class Counting:
        def __init__(self, stack):
            self.stack = stack

        def forward(self, x, *args):
            calls.append(x.shape[0] * x.shape[1])
            return self.stack.forward(x, *args)

    lm.fast.stack = Counting(lm.fast.stack)
    cache = _prefilled(lm, 2, fast_llama.SMALL_M, torch.Generator().manual_seed(0))  # 2 SMALL_M rows: the loop
    assert calls == []
    S = fast_llama.SMALL_M
    for B, nq in ((2, S // 2), (2, S // 2 + 1)):  # SMALL_M rows: the stack; one more per row: the loop
        lm.forward(torch.full((B, nq), 5), torch.full((B, nq), S), cache.tree_mask(nq), cache)
    assert calls == [S]


def _stack_args(lm, B=1, nq=1, start=4):
    x = lm.fast.base.embed_tokens(torch.full((B, nq), 5))
    cos, sin = lm.fast.base.rotary_emb(x, torch.full((B, nq), start))
    cache = lm.new_cache(B, start + nq)
    return dict(x=x, cos=cos.contiguous(), sin=sin.contiguous(), mask=torch.zeros(B, 1, nq, start + nq, dtype=x.dtype),
                kv=cache.kv, start=start)


@torch.inference_mode()
def test_decoder_stack_rejects_bad_inputs_with_a_message_that_names_them(model_dirs, monkeypatch):  # noqa: F811
    if not cpp.small_linear_native(torch.float32):
        pytest.skip("this CPU cannot run small_linear")
    lm = _load(model_dirs["qwen2-bias"], torch.float32, monkeypatch)
    stack = lm.fast.stack
    assert stack.forward(**_stack_args(lm)).shape == (1, 1, lm.hidden_size)
    bad = {
        "x must be float32": dict(x=_stack_args(lm)["x"].bfloat16()),
        "cos must have shape": dict(cos=torch.zeros(1, 1, 3)),
        "do not fit the cache": dict(start=5, mask=torch.zeros(1, 1, 1, 6)),
        "mask must have shape": dict(mask=torch.zeros(1, 1, 1, 4)),
        "mask must be a CPU float32 tensor, got float64": dict(mask=torch.zeros(1, 1, 1, 5, dtype=torch.float64)),
        "kv must be": dict(kv=torch.zeros(2, 5)),
    }
    for message, change in bad.items():
        with pytest.raises(RuntimeError, match=message):
            stack.forward(**{**_stack_args(lm), **change})
    w = lm.fast.layers[0]
    layer = [w.w_qkv, w.b_qkv, w.w_o, w.b_o, w.w_gate_up, w.w_down, w.norm1, w.norm2]
    norm, heads = lm.fast.base.norm.weight, (lm.fast.n_heads, lm.fast.n_kv, lm.fast.head_dim, lm.fast.eps)
    with pytest.raises(RuntimeError, match="layer 0 w_o must have shape"):
        cpp.decoder_stack([layer[:2] + [w.w_o[:, :-1].contiguous()] + layer[3:]], norm, *heads)
    with pytest.raises(RuntimeError, match="layer 1 has 7 tensors"):
        cpp.decoder_stack([layer, layer[:7]], norm, *heads)
    with pytest.raises(RuntimeError, match="layer 0 w_qkv must be float32"):
        cpp.decoder_stack([[w.w_qkv.bfloat16()] + layer[1:]], norm, *heads)
    with pytest.raises(RuntimeError, match="multiple of n_kv"):
        cpp.decoder_stack([layer], norm, 3, 2, lm.fast.head_dim, lm.fast.eps)
