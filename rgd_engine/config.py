"""Configuration dataclasses; both round-trip through JSON. `GenerationConfig.validate` checks every field's
type and range (bounds below) and raises `GenerationInputError` naming the field, its value and the range."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field

from .errors import ConfigError, GenerationInputError

RULES = ("args", "token", "logratio", "bon-block")
# Sane bounds, checked before any work. k: the candidate tree forward holds O(k * (prefix + k)) attention scores
# per row and layer, so k = V (tens of thousands) needs tens of GB; the rules are used with k of 5..50.
MAX_K = 1024
MAX_SAMPLES = 1024  # bon-block fans every row out into n_samples rows, each with its own KV cache
# |w| above this makes w * r overflow float32 for ordinary rewards; the studies use |w| <= 10.
MAX_ABS_WEIGHT = 1e6
# Below this, s / temperature overflows float32 for ordinary scores and sampling gets NaN probabilities;
# temperature -> 0 is greedy decoding (no --sample).
MIN_TEMPERATURE = 1e-4


class _JSONMixin:
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)  # NaN / Infinity are not JSON

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        obj = cls(**d)
        for f in dataclasses.fields(cls):  # JSON has no tuples
            if isinstance(getattr(obj, f.name), list) and isinstance(f.default_factory, type) and f.default_factory is tuple:
                setattr(obj, f.name, tuple(getattr(obj, f.name)))
        return obj

    @classmethod
    def from_json(cls, s: str):
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({e})") from e
        return cls.from_dict(d)


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
    # Decoded tokens reach the host (stop checks, early exit) every sync_every steps: None = every step on CPU
    # (a host read is free there and an early exit saves forwards), every 8 on GPU (each read stalls the stream).
    # Outputs do not depend on it; a larger value may run up to sync_every - 1 steps past the last finished row.
    sync_every: int | None = None
    # Replay each greedy step (plain, or args on the shared trunk) from a CUDA graph: static shapes, one launch per
    # step (rgd_engine/graph_step.py). On CPU the same static step runs without a graph (slower; for tests).
    cuda_graph: bool = False

    def validate(self) -> None:
        """Raise GenerationInputError naming the first field outside its accepted range (bounds: MAX_K etc. above).
        k <= the vocabulary size and prompt + max_new_tokens <= the model's positions need the model: Engine checks
        them."""
        _integer("max_new_tokens", self.max_new_tokens, 1)
        _integer("k", self.k, 1, MAX_K)
        check_number("weight", self.weight, -MAX_ABS_WEIGHT, MAX_ABS_WEIGHT)
        check_number("temperature", self.temperature, MIN_TEMPERATURE, math.inf)
        _integer("top_k", self.top_k, 0)
        check_number("top_p", self.top_p, 0.0, 1.0)
        if self.top_p == 0:
            raise GenerationInputError("top_p must be in (0, 1], got 0")
        if self.seed is not None:
            _integer("seed", self.seed, 0, 2**64 - 1)
        if not isinstance(self.rule, str) or self.rule not in RULES:
            raise GenerationInputError(f"unknown rule {self.rule!r}; choose one of {', '.join(RULES)}")
        _integer("n_samples", self.n_samples, 1, MAX_SAMPLES)
        _integer("block_size", self.block_size, 1)
        if self.sync_every is not None:
            _integer("sync_every", self.sync_every, 1)
        for name in ("sample", "return_scores", "ignore_eos", "cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise GenerationInputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.cuda_graph and (self.sample or self.rule != "args"):
            got = "sample=True" if self.sample else f"rule {self.rule!r}"
            raise GenerationInputError(f"cuda_graph: only greedy steps of plain decoding and of the args rule have a "
                                       f"graph (rgd_engine/graph_step.py); got {got}")
        if isinstance(self.stop, (str, bytes)) or not isinstance(self.stop, (tuple, list)):
            raise GenerationInputError(f"stop must be a tuple of strings, got {self.stop!r}")
        for i, s in enumerate(self.stop):
            if not isinstance(s, str) or not s:
                # "" is in every text: it would end a row after its first token with empty text.
                raise GenerationInputError(f"stop string {i} must be a non-empty string, got {s!r}")
            check_text(s, f"stop string {i}")


def _integer(name: str, value, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise GenerationInputError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        accepted = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise GenerationInputError(f"{name} must be {accepted}, got {value}")


def check_number(name: str, value, lo: float, hi: float) -> None:
    """`value` must be a finite real number in [lo, hi] (NaN fails every comparison, so it is named explicitly)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GenerationInputError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise GenerationInputError(f"{name} must be a finite number in [{lo:g}, {hi:g}], got {value!r}")


def check_text(text, what: str) -> None:
    """`text` must be a str that encodes as UTF-8. Undecodable command-line bytes reach Python as lone
    surrogates (U+DC80..U+DCFF, 'surrogateescape'); name the original byte and where it is."""
    if not isinstance(text, str):
        raise GenerationInputError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        ch = ord(text[e.start])
        byte = f"byte 0x{ch - 0xDC00:02x}" if 0xDC80 <= ch <= 0xDCFF else f"lone surrogate U+{ch:04X}"
        raise GenerationInputError(f"{what} is not valid UTF-8 text: {byte} at character {e.start}") from None
