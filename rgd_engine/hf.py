"""HF-native entry point: the engine's decoding inside `model.generate`, as a `custom_generate` callable.

    import rgd_engine.hf
    out = model.generate(input_ids, attention_mask=mask, custom_generate=rgd_engine.hf.generate,
                         heads=bank, users=["alice", None], rule="args", k=10, w=1.0, max_new_tokens=32)
    # out: [B, P + T] prompt + generated ids (rows padded with pad_token_id after they finish), as HF's generate

transformers (5.x) prepares the generation config and the inputs (attention mask, eos / pad ids, max_new_tokens,
do_sample, temperature, top_k, top_p) and then calls a callable `custom_generate` as
`custom_generate(model, input_ids, logits_processor=..., stopping_criteria=..., generation_config=...,
<the keyword arguments of the callable that `_sample` does not take>, **model_kwargs)`: the keyword arguments
below (heads, users, rule, k, w, ...) reach this function, everything else HF knows is in `generation_config`.
The tokens are those of `Engine.generate` with the same settings (tested for every rule).

What HF features mean here: greedy (do_sample=False) or sampling (do_sample=True with temperature / top_k / top_p)
as the engine's `sample`; EOS ids and pad id from the generation config. Logits processors and stopping criteria
other than these (repetition penalty, custom processors, stop strings: HF hands a callable no tokenizer) are
rejected with an error naming them, never silently ignored. `return_dict_in_generate=True` returns a
`GenerateDecoderOnlyOutput` with `sequences` only (per-step scores: use `Engine.generate(return_scores=True)`).

The model is wrapped once (weakly cached per model object) in the engine's `CausalLM`; for Llama-family models the
fast forward (RGD_FORWARD) rebinds the projection weights to fused copies of the same values, as `Engine` does.
"""
from __future__ import annotations

import weakref

import torch

from .config import GenerationConfig
from .decoder import Decoder
from .models import CausalLM

# HF logits processors / stopping criteria whose effect the engine's own settings reproduce
_HANDLED_PROCESSORS = {"TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"}
_HANDLED_CRITERIA = {"MaxLengthCriteria", "EosTokenCriteria"}
_WRAPPED: "weakref.WeakKeyDictionary[torch.nn.Module, CausalLM]" = weakref.WeakKeyDictionary()


def _policy(model) -> CausalLM:
    if model not in _WRAPPED:
        _WRAPPED[model] = CausalLM(model, None, getattr(model, "name_or_path", None) or type(model).__name__)
    return _WRAPPED[model]


def _check_unhandled(logits_processor, stopping_criteria, generation_config) -> None:
    extra = [type(p).__name__ for p in (logits_processor or []) if type(p).__name__ not in _HANDLED_PROCESSORS]
    extra += [type(c).__name__ for c in (stopping_criteria or []) if type(c).__name__ not in _HANDLED_CRITERIA]
    if extra:
        raise ValueError(f"rgd_engine.hf.generate does not apply {', '.join(sorted(set(extra)))}; the engine decodes "
                         "with its own rules (greedy / temperature / top_k / top_p, EOS, max_new_tokens)")
    for flag in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
        if getattr(generation_config, flag, False):
            raise ValueError(f"rgd_engine.hf.generate does not return {flag.removeprefix('output_')}; use "
                             "Engine.generate(return_scores=True) for per-step candidates, rewards and scores")
    if (getattr(generation_config, "num_beams", None) or 1) > 1 or (generation_config.num_return_sequences or 1) > 1:
        raise ValueError("rgd_engine.hf.generate decodes one sequence per row (num_beams = num_return_sequences = 1)")


def _eos_ids(generation_config) -> set[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        return set()
    if isinstance(eos, torch.Tensor):
        eos = eos.tolist()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


def generate(model, input_ids: torch.Tensor, logits_processor=None, stopping_criteria=None, generation_config=None,
             heads=None, users: list | None = None, rule: str = "args", k: int = 10, w: float | list = 1.0,
             cond_input_ids: list[list[int]] | None = None, n_samples: int = 4, block_size: int = 8,
             seed: int | None = None, reward_model: CausalLM | None = None, backend: str | None = None,
             **model_kwargs):
    """input_ids [B, P] (left-padded; attention_mask in model_kwargs, None = no padding) -> sequences [B, P + T].

    heads: a HeadBank (args, bon-block) or TokenHeadBank (token); users: one user id or None per row; rule: args |
    token | logratio | bon-block; k: candidates; w: the reward weight (one number, or one per row);
    cond_input_ids: per row, the token ids of the profile-conditioned prompt (logratio); n_samples, block_size:
    bon-block's N and M; seed: the sampling generator's seed; reward_model: a separate reward backbone (CausalLM).
    """
    _check_unhandled(logits_processor, stopping_criteria, generation_config)
    given = model_kwargs.get("cache")  # HF hands over the empty cache it prepared; ours is built from the prompt
    if given is not None and int(given.get_seq_length()) > 0:
        raise ValueError("rgd_engine.hf.generate builds its own KV cache from input_ids; it cannot continue a "
                         "filled cache (past_key_values)")
    B, P = input_ids.shape
    mask = model_kwargs.get("attention_mask")
    mask = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
    if bool((mask[:, -1] == 0).any()):
        raise ValueError("input_ids must be left-padded (attention_mask ends with 0 in some row)")
    rows = input_ids.tolist()
    prompts = [[t for t, m in zip(row, keep) if m] for row, keep in zip(rows, mask.tolist())]
    max_new = generation_config.max_new_tokens or generation_config.max_length - P
    cfg = GenerationConfig(
        max_new_tokens=int(max_new), k=int(k), rule=rule, n_samples=int(n_samples), block_size=int(block_size),
        sample=bool(generation_config.do_sample), temperature=float(generation_config.temperature or 1.0),
        top_k=int(generation_config.top_k or 0), top_p=float(generation_config.top_p or 1.0), seed=seed,
        weight=float(w) if not isinstance(w, (list, tuple, torch.Tensor)) else 1.0)
    cfg.validate()
    weights = torch.as_tensor(w if isinstance(w, (list, tuple, torch.Tensor)) else [float(w)] * B,
                              dtype=torch.float32)
    if weights.shape != (B,):
        raise ValueError(f"w must be one number or one per row ({B}), got shape {tuple(weights.shape)}")
    users = list(users) if users is not None else [None] * B
    if len(users) != B:
        raise ValueError(f"{B} rows but {len(users)} users")
    if heads is None and any(u is not None for u in users):
        raise ValueError("users were given but no head bank (heads=)")
    pad = generation_config.pad_token_id
    pad = int(pad.item() if isinstance(pad, torch.Tensor) else pad) if pad is not None else None
    if pad is None:
        raise ValueError("the generation config has no pad_token_id (set pad_token_id=...)")
    decoder = Decoder(_policy(model), reward_model, backend=backend, eos_ids=_eos_ids(generation_config),
                      pad_token_id=pad)
    slots = heads.slots(users) if heads is not None and rule != "logratio" else None
    gens = decoder.generate(prompts, cfg, bank=heads if rule != "logratio" else None, slots=slots, weights=weights,
                            users=users, cond_prompts=cond_input_ids)
    T = max(len(g.token_ids) for g in gens)
    new = torch.full((B, T), pad, dtype=input_ids.dtype)
    for b, g in enumerate(gens):
        new[b, :len(g.token_ids)] = torch.tensor(g.token_ids, dtype=input_ids.dtype)
    sequences = torch.cat([input_ids, new.to(input_ids.device)], dim=1)
    if generation_config.return_dict_in_generate:
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences
