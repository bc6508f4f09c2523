"""Per-row stop conditions: EOS ids, stop strings and a token budget.

Stop strings are checked on the new text only: each pushed token is decoded together with a short anchor of the
tokens decoded before it (the standard incremental detokenization of streaming servers), so a row of T tokens costs
O(T) decoding, not a whole-row decode per token (O(T^2)). The anchor makes tokenizers that strip a leading space
or merge bytes across tokens decode the new tokens as they appear in the whole row; a hit is confirmed on the whole
row's text (once per row), which is the rule: a row stops at the first token after which its decoded text contains
a stop string.
"""
from __future__ import annotations

_INCOMPLETE = "\ufffd"  # what a decode of an unfinished multi-byte UTF-8 character ends with


class RowStopper:
    """Tracks one row's generated ids and decides when it is finished."""

    def __init__(self, tokenizer, eos_ids: set[int], stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.stop = stop
        self.ids: list[int] = []
        self.finish_reason: str | None = None
        self._longest = max((len(s) for s in stop), default=0)
        self._text = ""  # decoded text of ids[:_read]
        self._anchor = 0  # ids[_anchor:_read]: the tokens decoded last, decoded again before the new ones
        self._read = 0

    def push(self, token: int) -> bool:
        """Record a generated token; True once the row is finished."""
        self.ids.append(token)
        if token in self.eos_ids:
            self.finish_reason = "eos"
        elif self.stop and self._new_text_has_stop():
            self.finish_reason = "stop"
        return self.finish_reason is not None

    def _new_text_has_stop(self) -> bool:
        new = self._decode_new()
        if not new:
            return False
        tail = self._text[-(len(new) + self._longest - 1):]  # every match that ends in the new text
        if not any(s in tail for s in self.stop):
            return False
        whole = self._decode_all()
        self._text = whole  # resynchronize (tokenizer clean-ups can differ from the incremental text)
        return any(s in whole for s in self.stop)

    def _decode_new(self) -> str:
        """Text of the tokens pushed since the last decode ("" while a multi-byte character is unfinished)."""
        anchor_text = self._decode(self.ids[self._anchor:self._read])
        text = self._decode(self.ids[self._anchor:])
        if text.endswith(_INCOMPLETE):
            return ""
        self._anchor, self._read = self._read, len(self.ids)
        if text.startswith(anchor_text):
            new = text[len(anchor_text):]
            self._text += new
            return new
        # the new tokens changed how the anchor decodes (a rare tokenizer merge): take the whole row, once
        whole, old = self._decode_all(), self._text
        self._text = whole
        return whole[len(old):] if whole.startswith(old) else whole

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def _decode_all(self) -> str:
        return self._decode(self.ids)

    def text(self) -> str:
        """The continuation, cut before the first stop string (which is not part of the answer)."""
        text = self._decode_all()
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
