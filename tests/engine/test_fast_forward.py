"""The fast Llama-family forward (models/fast_llama.py) against the HF forward it replaces.

Each tiny random model is saved with save_pretrained and loaded twice through the engine's real loader, once
per forward (RGD_FORWARD), so the HF-path model keeps its weights exactly as loaded.
"""
import pytest
import torch

from rgd_engine import Engine, GenerationConfig, HeadBank
from rgd_engine.errors import ModelLoadError
from rgd_engine.models import load_causal_lm

PROMPTS = ["The quick brown", "Reward guided decoding steers a language model with", "News:"]

# odd shapes: GQA groups of 5 and 2 and none (MHA), head_dim != hidden / heads, tied and untied embeddings,
# attention biases (Llama: q, k, v and o; Qwen2: q, k, v only), scaled RoPE
CONFIGS = {
    "llama-gqa5-tied": ("llama", dict(hidden_size=40, intermediate_size=52, num_hidden_layers=3, num_attention_heads=5,
                                      num_key_value_heads=1, tie_word_embeddings=True)),
    "llama-gqa2-headdim-bias-rope": ("llama", dict(hidden_size=36, intermediate_size=50, num_hidden_layers=2,
                                                   num_attention_heads=6, num_key_value_heads=3, head_dim=10,
                                                   attention_bias=True, tie_word_embeddings=False,
                                                   rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                    "rope_theta": 500.0})),
    "llama-mha-untied": ("llama", dict(hidden_size=48, intermediate_size=70, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=4, tie_word_embeddings=False)),
    "qwen2-bias": ("qwen2", dict(hidden_size=32, intermediate_size=44, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, tie_word_embeddings=False)),
    "mistral": ("mistral", dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, sliding_window=None, tie_word_embeddings=True)),
}


def _build(kind: str, vocab: int, seed: int, **kw):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    cfg_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                          "mistral": (MistralConfig, MistralForCausalLM)}[kind]
    torch.manual_seed(seed)
    cfg = cfg_cls(vocab_size=vocab, max_position_embeddings=512, initializer_range=0.2, rms_norm_eps=1e-5,
                  eos_token_id=0, pad_token_id=1, bos_token_id=None, **kw)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # HF initializes biases to zero, which would hide a bias the fast forward left out
        for pname, p in model.named_parameters():
            if pname.endswith(".bias"):
                p.normal_(0.0, 0.5)
    model.generation_config.eos_token_id = 0
    model.generation_config.pad_token_id = 1
    return model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("fast")
    dirs = {}
    for i, (name, (kind, kw)) in enumerate(CONFIGS.items()):
        path = root / name
        _build(kind, len(tiny_tokenizer), seed=10 + i, **kw).save_pretrained(str(path))
        tiny_tokenizer.save_pretrained(str(path))
        dirs[name] = path
    return dirs


def _load(path, forward, monkeypatch):
    monkeypatch.setenv("RGD_FORWARD", forward)
    return load_causal_lm(str(path))


@pytest.fixture(scope="module")
def pairs(model_dirs):
    """name -> (hf-path model, fast-path model), each loaded on its own."""
    with pytest.MonkeyPatch.context() as mp:
        return {name: (_load(p, "hf", mp), _load(p, "fast", mp)) for name, p in model_dirs.items()}


def _decode_states(lm, ids, pad_mask, cand):
    """Prefill a left-padded batch, one decode step, then a depth-1 tree of candidates.

    -> prefill hidden [B, P, d], step hidden [B, 1, d], tree hidden [B, k, d]."""
    B, P = ids.shape
    cache = lm.new_cache(B, P + 1 + cand.shape[1])
    pos = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)
    pre = lm.forward(ids, pos, cache.prefill_mask(pad_mask), cache)
    cache.advance(P, pad_mask)
    nxt = pad_mask.long().sum(-1, keepdim=True)  # [B, 1]
    step = lm.forward(cand[:, :1], nxt, cache.tree_mask(1), cache)
    cache.advance(1)
    tree = lm.forward(cand, (nxt + 1).expand(-1, cand.shape[1]), cache.tree_mask(cand.shape[1]), cache)
    return pre, step, tree


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.inference_mode()
def test_fast_and_hf_forward_give_the_same_hidden_states(pairs, name):
    hf, fast = pairs[name]
    assert (hf.forward_kind, fast.forward_kind) == ("hf", "fast")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, hf.vocab_size, (3, 11), generator=g)
    pad_mask = torch.ones(3, 11, dtype=torch.bool)
    pad_mask[0, :4] = False  # left padding of different lengths
    pad_mask[2, :9] = False
    cand = torch.randint(2, hf.vocab_size, (3, 4), generator=g)
    got, want = _decode_states(fast, ids, pad_mask, cand), _decode_states(hf, ids, pad_mask, cand)
    torch.testing.assert_close(got[0][pad_mask], want[0][pad_mask], atol=1e-5, rtol=1e-5)  # real tokens only
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # and against an independent whole-sequence HF forward without any cache, for the decode step of row 1
    seq = torch.cat([ids[1], cand[1, :1]])[None]
    ref = hf.base(input_ids=seq, use_cache=False).last_hidden_state[0, -1]
    torch.testing.assert_close(got[1][1, 0], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_and_hf_forward_give_the_same_greedy_tokens(pairs, name):
    hf, fast = pairs[name]
    cfg = GenerationConfig(max_new_tokens=16)
    a = Engine(fast).generate(PROMPTS, config=cfg)
    b = Engine(hf).generate(PROMPTS, config=cfg)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    tok = fast.tokenizer
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    out = hf.hf_model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    for o, r in zip(a, out[:, enc["input_ids"].shape[1]:].tolist()):
        assert o.token_ids == r[:len(o.token_ids)]


@pytest.mark.parametrize("name", ["llama-gqa5-tied", "qwen2-bias"])
def test_fast_and_hf_forward_give_the_same_reward_guided_decode(pairs, name):
    hf, fast = pairs[name]
    g = torch.Generator().manual_seed(1)
    bank = HeadBank(hf.hidden_size, capacity=2)
    bank.add("a", torch.randn(hf.hidden_size, generator=g) * 3, 0.5)
    kw = dict(users=["a", "a", None], heads=bank, k=5, weight=1.5, max_new_tokens=10, return_scores=True)
    a = Engine(fast).generate(PROMPTS, **kw)
    b = Engine(hf).generate(PROMPTS, **kw)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    for x, y in zip(a, b):
        for sx, sy in zip(x.steps, y.steps):
            assert sx["reward"] == pytest.approx(sy["reward"], abs=1e-4, rel=1e-4)


def test_fast_weights_share_storage_with_the_hf_modules(pairs):
    hf, fast = pairs["llama-gqa2-headdim-bias-rope"]
    layer, w = fast.base.layers[0], fast.fast.layers[0]
    attn = layer.self_attn
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert proj.weight.untyped_storage().data_ptr() == w.w_qkv.untyped_storage().data_ptr()
        assert proj.bias.untyped_storage().data_ptr() == w.b_qkv.untyped_storage().data_ptr()
    ref = hf.base.layers[0].self_attn
    for mine, theirs in ((attn.q_proj, ref.q_proj), (attn.v_proj, ref.v_proj), (attn.o_proj, ref.o_proj),
                         (layer.mlp.up_proj, hf.base.layers[0].mlp.up_proj)):
        assert torch.equal(mine.weight, theirs.weight)  # same values, only the layout changed


def test_auto_picks_fast_only_where_supported_and_fast_on_unsupported_raises(tiny_dirs, model_dirs, monkeypatch):
    assert _load(model_dirs["llama-mha-untied"], "auto", monkeypatch).forward_kind == "fast"
    assert _load(tiny_dirs["gpt2"], "auto", monkeypatch).forward_kind == "hf"
    with pytest.raises(ModelLoadError, match="fast forward was requested"):
        _load(tiny_dirs["gpt2"], "fast", monkeypatch)
    with pytest.raises(ValueError, match="RGD_FORWARD"):
        _load(tiny_dirs["llama"], "fastest", monkeypatch)


def test_unsupported_llama_variants_use_the_hf_forward(tmp_path, tiny_tokenizer, monkeypatch):
    for name, kw in {"mlp-bias": dict(mlp_bias=True), "gelu": dict(hidden_act="gelu")}.items():
        path = tmp_path / name
        _build("llama", len(tiny_tokenizer), seed=0, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
               num_attention_heads=4, num_key_value_heads=2, **kw).save_pretrained(str(path))
        tiny_tokenizer.save_pretrained(str(path))
        assert _load(path, "auto", monkeypatch).forward_kind == "hf"
    path = tmp_path / "mistral-sliding"
    _build("mistral", len(tiny_tokenizer), seed=0, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
           num_attention_heads=4, num_key_value_heads=2, sliding_window=8).save_pretrained(str(path))
    tiny_tokenizer.save_pretrained(str(path))
    assert _load(path, "auto", monkeypatch).forward_kind == "hf"


@pytest.mark.parametrize("name", ["llama-gqa5-tied"])
@torch.inference_mode()
def test_tensor_cache_commit_keeps_only_the_chosen_candidate(pairs, name):
    """After commit, the kept slot holds the chosen candidate's K/V in every layer and the next write follows it."""
    _, fast = pairs[name]
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, fast.vocab_size, (2, 5), generator=g)
    pad = torch.ones(2, 5, dtype=torch.bool)
    cache = fast.new_cache(2, 5 + 4)
    fast.forward(ids, torch.arange(5).expand(2, -1), cache.prefill_mask(pad), cache)
    cache.advance(5, pad)
    cand = torch.randint(2, fast.vocab_size, (2, 3), generator=g)
    fast.forward(cand, torch.full((2, 3), 5), cache.tree_mask(3), cache)
    chosen = torch.tensor([2, 0])
    want = cache.kv[:, :, torch.arange(2), :, 5 + chosen].clone()  # [B, L, 2, Hkv, D]
    cache.commit(chosen, 3)
    assert cache.length == 6
    torch.testing.assert_close(cache.kv[:, :, :, :, 5].permute(2, 0, 1, 3, 4), want, rtol=0, atol=0)
    assert cache.tree_mask(1).shape == (2, 1, 1, 7)
    assert (cache.tree_mask(1)[:, 0, 0, :6] == 0).all()
