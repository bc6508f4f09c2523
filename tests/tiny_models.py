"""Tiny random causal LMs (Llama, GPT-2, Qwen2, Gemma 3) with a small trained BPE tokenizer, saved as HF directories so tests
load them through the engine's real loader. Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Reward guided decoding steers a language model with a reward model.",
    "Personalized alignment trains one reward head per user.",
    "Breaking news: the city council approves a new budget for parks and schools.",
    "Scientists discover a new species of frog in the rain forest.",
    "How to cook pasta: boil water, add salt, and stir.\nServe warm.",
    "Headline: Stocks rally as inflation cools.\nHeadline: Storm hits the coast.",
] * 4


def make_tokenizer(vocab_size: int = 320, extra_corpus: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS + list(extra_corpus or []), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def make_model(arch: str, vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.2,
                          eos_token_id=0, pad_token_id=1, bos_token_id=None)
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512,
                         initializer_range=0.2, eos_token_id=0, pad_token_id=1, bos_token_id=0)
        model = GPT2LMHeadModel(cfg)
    elif arch == "qwen2":
        model = make_qwen2(vocab_size, hidden, layers)
    elif arch == "gemma3":
        model = make_gemma3(vocab_size, hidden, layers + 1)
    else:
        raise ValueError(arch)
    model.generation_config.eos_token_id = 0
    model.generation_config.pad_token_id = 1
    return model.eval()


def make_qwen2(vocab_size: int, hidden: int, layers: int):
    """Qwen2 as the real 0.5B/1.5B: q/k/v biases, no o bias, GQA, tied embeddings, rope theta 1e6."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True,
                      initializer_range=0.2, eos_token_id=0, pad_token_id=1, bos_token_id=None)
    return Qwen2ForCausalLM(cfg)


GEMMA3_WINDOW = 4  # tokens: far shorter than the test prompts + continuations, so the window really cuts


def make_gemma3(vocab_size: int, hidden: int, layers: int):
    """Gemma 3 as the real 270M, shrunk: sliding-window layers (window GEMMA3_WINDOW, local rope theta) around a
    full-attention one, head_dim != hidden / heads, query_pre_attn_scalar != head_dim, scaled embeddings,
    4 norms per layer plus q/k norms, tied embeddings. Norm weights are randomised (HF initialises them to 0,
    i.e. scale 1, which would hide a missing (1 + w))."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    types = ["sliding_attention" if i % 3 != 1 else "full_attention" for i in range(layers)]
    cfg = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=3 * hidden,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=1, head_dim=24,
                           query_pre_attn_scalar=16, sliding_window=GEMMA3_WINDOW, layer_types=types,
                           max_position_embeddings=512, rms_norm_eps=1e-6, initializer_range=0.2,
                           rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
                           tie_word_embeddings=True, eos_token_id=0, pad_token_id=1, bos_token_id=None)
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    return model


def save_tiny(path: Path, arch: str, seed: int = 0, hidden: int = 64, tokenizer=None) -> Path:
    tok = tokenizer or make_tokenizer()
    model = make_model(arch, len(tok), seed=seed, hidden=hidden)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def save_tiny_trio(root: Path, tokenizer) -> dict[str, Path]:
    """The tests' standard tiny models under root: llama (fast forward), gpt2 (HF forward) and a second, narrower
    llama (a separate reward backbone), all on one tokenizer."""
    return {
        "llama": save_tiny(root / "llama", "llama", seed=1, tokenizer=tokenizer),
        "gpt2": save_tiny(root / "gpt2", "gpt2", seed=2, tokenizer=tokenizer),
        "rm": save_tiny(root / "rm", "llama", seed=3, hidden=48, tokenizer=tokenizer),
    }
