"""Per-row stop conditions: EOS ids, stop strings and a token budget."""
from __future__ import annotations


class RowStopper:
    """Tracks one row's generated ids and decides when it is finished."""

    def __init__(self, tokenizer, eos_ids: set[int], stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.stop = stop
        self.ids: list[int] = []
        self.finish_reason: str | None = None

    def push(self, token: int) -> bool:
        """Record a generated token; True once the row is finished."""
        self.ids.append(token)
        if token in self.eos_ids:
            self.finish_reason = "eos"
        elif self.stop and any(s in self._text() for s in self.stop):
            self.finish_reason = "stop"
        return self.finish_reason is not None

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def text(self) -> str:
        """The continuation, cut before the first stop string (which is not part of the answer)."""
        text = self._text()
        cut = min((text.find(s) for s in self.stop if s in text), default=len(text))
        return text[:cut]


def eos_token_ids(hf_model, tokenizer) -> set[int]:
    """EOS ids as HF generate uses them: the model's generation config first, else the tokenizer's."""
    eos = getattr(getattr(hf_model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}
