"""Configuration dataclasses; both round-trip through JSON."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


RULES = ("args", "token", "logratio", "bon-block")


class _JSONMixin:
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        obj = cls(**d)
        for f in dataclasses.fields(cls):  # JSON has no tuples
            if isinstance(getattr(obj, f.name), list) and isinstance(f.default_factory, type) and f.default_factory is tuple:
                setattr(obj, f.name, tuple(getattr(obj, f.name)))
        return obj

    @classmethod
    def from_json(cls, s: str):
        return cls.from_dict(json.loads(s))


@dataclass
class EngineConfig(_JSONMixin):
    """What to load. reward_model None = shared trunk (heads read the policy's own hidden states)."""
    model: str = "demo"
    reward_model: str | None = None
    heads: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    attn_implementation: str = "sdpa"


@dataclass
class GenerationConfig(_JSONMixin):
    """How to decode. k and weight only matter when a reward applies; rule picks the scoring rule
    (args | token | logratio | bon-block, see decoder.py); n_samples (N) and block_size (M) are bon-block's."""
    max_new_tokens: int = 64
    stop: tuple = field(default_factory=tuple)
    k: int = 10
    weight: float = 1.0
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    return_scores: bool = False
    ignore_eos: bool = False  # run every row to max_new_tokens (benchmarks)
    rule: str = "args"
    n_samples: int = 4
    block_size: int = 8

    def validate(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; choose one of {', '.join(RULES)}")
        if self.n_samples < 1 or self.block_size < 1:
            raise ValueError(f"bon-block needs n_samples >= 1 and block_size >= 1, got {self.n_samples}, "
                             f"{self.block_size}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
