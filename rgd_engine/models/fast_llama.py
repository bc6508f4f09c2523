"""A gpt-fast-style forward for Llama-family decoders that writes K/V straight into the engine's `KVCache`.

Per layer, for new tokens x [B, q, d] at positions p, written at cache slots [start, start + q), with an
additive mask M [B, 1, q, T] over slots [0, T), T = start + q:
    n1 = RMSNorm_1(x),  RMSNorm(x) = w * x / sqrt(mean(x^2) + eps)   (in fp32, as HF)
    [Q | K | V] = n1 @ W_qkv^T (+ b_qkv)                             one matmul for the three projections
    Q, K = RoPE(Q, p), RoPE(K, p);  cache[start:T] <- K, V
    A = softmax(Q K^T / sqrt(D) + M) V over cache slots [0, T)       query head h reads kv head h // (H / Hkv)
    h = x + A @ W_o^T (+ b_o)
    y = h + (silu(n2 @ W_gate^T) * (n2 @ W_up^T)) @ W_down^T,  n2 = RMSNorm_2(h)   gate|up in one matmul
and the base model's final RMSNorm on the last layer's output. This is the maths of HF's LlamaModel (and of
Mistral / Qwen2 without sliding windows); RoPE's cos/sin come from the model's own `rotary_emb` module, so
every rope type and scaling HF supports is honoured.

Why: HF's forward spends most of a one-token decode step in Python (mask and cache bookkeeping, per-module
dispatch, three projection matmuls instead of one); attention here reads only the used cache slots [0, T)
instead of the whole preallocated capacity. Steps of at most SMALL_M rows (B * q: the one-token steps of small
batches and the candidate trees of rgd-shared) go, on a CPU with AVX-512, to `DecoderStack`
(csrc/cpu/decoder_stack.cpp): all layers in one C++ call, whose projections stream each weight matrix once
(`small_linear`, at up to twice the bandwidth of torch's matmul on so few rows) and which skips the ~40 small
torch ops per layer this loop dispatches and the setup of torch's attention on so few rows (`decode_attention`).
It computes this loop's ops with each op's rounding to the model dtype, torch's own silu, the kernels' fp32 sums for
the projections and norms (a different summation order from torch's) and fp32 attention probabilities (torch's bf16
attention rounds them to bf16), so its states equal this loop's to rounding (tests/engine/test_decoder_stack.py).
Larger inputs (prefills, the study's candidate trees, bigger batches) run the loop below on torch's ops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import cpp

# Rows (B * q) up to which a step goes to the C++ DecoderStack. Its projections (cpp.small_linear) against torch's
# matmul over the demo model's 30 layers (benchmarks/few_row_ops.py, 2-core EPYC): fp32 1.2 - 3.9x faster at
# 1 - 16 rows, bf16 1.1 - 2.1x; past that the kernel is compute bound and torch's blocked GEMM wins.
SMALL_M = 16

# model_type -> decoder layer class whose structure the fast forward reproduces
_LAYERS = {"llama": "LlamaDecoderLayer", "mistral": "MistralDecoderLayer", "qwen2": "Qwen2DecoderLayer"}


def unsupported_reason(base: nn.Module, config) -> str | None:
    """None if `base` (an HF base model) can run the fast forward, else a sentence saying why not."""
    kind = getattr(config, "model_type", None)
    if kind not in _LAYERS:
        return f"model_type {kind!r} is not one of {sorted(_LAYERS)}"
    layers = getattr(base, "layers", None)
    if layers is None or len(layers) != config.num_hidden_layers:
        return "the base model has no `layers` list of num_hidden_layers decoder layers"
    if any(type(layer).__name__ != _LAYERS[kind] for layer in layers):
        return f"decoder layers are not all {_LAYERS[kind]}"
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(config, 'hidden_act', None)!r} is not 'silu'"
    if getattr(config, "sliding_window", None) is not None and (
            kind == "mistral" or "sliding_attention" in (getattr(config, "layer_types", None) or ())):
        return "sliding-window attention is not implemented in the fast forward"
    for name in ("embed_tokens", "norm", "rotary_emb"):
        if not hasattr(base, name):
            return f"the base model has no {name!r}"
    if any(layer.mlp.gate_proj.bias is not None or layer.mlp.up_proj.bias is not None
           or layer.mlp.down_proj.bias is not None for layer in layers):
        return "MLP biases are not implemented in the fast forward"
    return None


@dataclass
class _Layer:
    # weights are contiguous [N, K] (see _fuse)
    w_qkv: torch.Tensor  # [(H + 2 Hkv) D, d]
    b_qkv: torch.Tensor | None  # [(H + 2 Hkv) D]
    w_o: torch.Tensor  # [d, H D]
    b_o: torch.Tensor | None  # [d]
    w_gate_up: torch.Tensor  # [2 I, d]
    w_down: torch.Tensor  # [d, I]
    norm1: torch.Tensor  # [d]
    norm2: torch.Tensor  # [d]


def _fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One contiguous [N_1 + ... + N_n, K] weight (and bias) for linears of weights [N_i, K].

    Row-major [N, K]: `small_linear` streams each output's weight row contiguously (torch's matmul gives the
    same bits on this layout as on a transposed one). Each linear's parameters are rebound to their slice of
    the fused tensors, so the HF modules and the fast forward share one copy of the weights.
    """
    weights = [m.weight for m in linears]
    biases = [m.bias for m in linears]
    fused = torch.cat([w.detach() for w in weights], dim=0).contiguous()  # [N, K]
    has_bias = [b is not None for b in biases]
    if any(has_bias) and not all(has_bias):
        raise ValueError("some but not all fused projections have a bias")
    fused_b = torch.cat([b.detach() for b in biases]) if all(has_bias) else None  # [N]
    start = 0
    for m, w, b in zip(linears, weights, biases):
        n = w.shape[0]
        m.weight = nn.Parameter(fused[start:start + n], requires_grad=w.requires_grad)
        if fused_b is not None:
            m.bias = nn.Parameter(fused_b[start:start + n], requires_grad=b.requires_grad)
        start += n
    return fused, fused_b


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., d] -> [..., d]; normalized in fp32 and the weight applied in the input dtype, as HF does."""
    return weight * F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, q, h, D], cos/sin [B, q, 1, D] -> x cos + rotate_half(x) sin (HF's half-split convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [B, H, q, D], k/v [B, Hkv, T, D], mask [B, 1, q, T] additive -> [B, q, H D].

    GQA without repeating K/V: the g = H / Hkv query heads sharing a kv head are stacked as g * q query rows
    of that kv head (query head h = kv * g + j reads kv head h // g, as HF's repeat_kv), one matmul per kv head.
    """
    B, H, nq, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    qg = q.reshape(B, Hkv, g * nq, D)
    if g > 1:
        mask = mask[:, :, None].expand(B, 1, g, nq, mask.shape[-1]).reshape(B, 1, g * nq, mask.shape[-1])
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask)  # [B, Hkv, g q, D]; scale 1/sqrt(D)
    return out.reshape(B, H, nq, D).transpose(1, 2).reshape(B, nq, H * D)


class FastLlama:
    """The fast forward over an HF Llama-family base model (whose projection weights it fuses in place)."""

    def __init__(self, base: nn.Module, config):
        self.base = base
        self.n_heads = int(config.num_attention_heads)
        self.n_kv = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.n_heads)
        self.eps = float(base.norm.variance_epsilon)  # HF builds every RMSNorm of the model with this eps
        self.layers = []
        with torch.no_grad():
            for layer in base.layers:
                attn, mlp = layer.self_attn, layer.mlp
                w_qkv, b_qkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
                w_o, b_o = _fuse([attn.o_proj])
                w_gate_up, _ = _fuse([mlp.gate_proj, mlp.up_proj])
                w_down, _ = _fuse([mlp.down_proj])
                self.layers.append(_Layer(w_qkv=w_qkv, b_qkv=b_qkv, w_o=w_o, b_o=b_o, w_gate_up=w_gate_up,
                                          w_down=w_down, norm1=layer.input_layernorm.weight,
                                          norm2=layer.post_attention_layernorm.weight))
        self.intermediate = self.layers[0].w_gate_up.shape[0] // 2
        weight = self.layers[0].w_qkv
        # Decided once per model; tests and benchmarks set it False to run torch's ops instead.
        self.few_row_kernels = weight.device.type == "cpu" and cpp.small_linear_native(weight.dtype)
        self.stack = cpp.decoder_stack(
            [[w.w_qkv, w.b_qkv, w.w_o, w.b_o, w.w_gate_up, w.w_down, w.norm1, w.norm2] for w in self.layers],
            base.norm.weight, self.n_heads, self.n_kv, self.head_dim, self.eps) if self.few_row_kernels else None

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor,
                start: int) -> torch.Tensor:
        """ids [B, q] int64, positions [B, q] int64, mask [B, 1, q, start + q] additive over the used slots,
        kv [L, 2, B, Hkv, S, D] the cache, new K/V written at slots [start, start + q) -> hidden [B, q, d]."""
        B, nq = ids.shape
        x = self.base.embed_tokens(ids)  # [B, q, d]
        cos, sin = self.base.rotary_emb(x, positions)  # [B, q, D] each
        if self.few_row_kernels and B * nq <= SMALL_M:
            return self.stack.forward(x, cos.contiguous(), sin.contiguous(), mask, kv, start)
        return self._layers(x, cos, sin, mask, kv, slice(start, start + nq), start + nq)

    def forward_static(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor,
                       slots: torch.Tensor) -> torch.Tensor:
        """The same maths at shapes that stay the same from step to step, for a CUDA graph (rgd_engine/graph_step.py):
        ids [B, q], positions [B, q], mask [B, 1, q, S] additive over the cache's whole capacity S, new K/V written at
        the cache slots `slots` [q] int64 (a device tensor: no host read) -> hidden [B, q, d].
        Always torch's ops: the C++ stack takes its slots from the host."""
        x = self.base.embed_tokens(ids)  # [B, q, d]
        cos, sin = self.base.rotary_emb(x, positions)  # [B, q, D] each
        return self._layers(x, cos, sin, mask, kv, slots, kv.shape[4])

    def _layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor,
                slots: slice | torch.Tensor, width: int) -> torch.Tensor:
        """x [B, q, d], cos/sin [B, q, D], mask [B, 1, q, width]; new K/V written at `slots` (a slice, or a [q] device
        tensor), attention over cache slots [0, width) -> final-norm hidden [B, q, d]."""
        B, nq = x.shape[:2]
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        cos, sin = cos[:, :, None], sin[:, :, None]  # [B, q, 1, D]: broadcast over heads
        for i, w in enumerate(self.layers):
            qkv = F.linear(rms_norm(x, w.norm1, self.eps), w.w_qkv, w.b_qkv).view(B, nq, H + 2 * Hkv, D)
            qk = rope(qkv[:, :, :H + Hkv], cos, sin)  # [B, q, H + Hkv, D]: Q and K rotated together
            k_cache, v_cache = kv[i, 0], kv[i, 1]  # [B, Hkv, S, D]
            _write(k_cache, slots, qk[:, :, H:].transpose(1, 2))
            _write(v_cache, slots, qkv[:, :, H + Hkv:].transpose(1, 2))
            a = attend(qk[:, :, :H].transpose(1, 2), k_cache[:, :, :width], v_cache[:, :, :width], mask)
            x = x + F.linear(a, w.w_o, w.b_o)
            gate, up = F.linear(rms_norm(x, w.norm2, self.eps), w.w_gate_up).split(self.intermediate, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w.w_down)
        return rms_norm(x, self.base.norm.weight, self.eps)


def _write(cache: torch.Tensor, slots: slice | torch.Tensor, new: torch.Tensor) -> None:
    """cache [B, Hkv, S, D] <- new [B, Hkv, q, D] at `slots`: a slice (the step's host-known slots) or a [q] device
    tensor (the static step's, whose slot is the device's cache length)."""
    if isinstance(slots, slice):
        cache[:, :, slots] = new
    else:
        cache.index_copy_(2, slots, new)
