"""A continuous batch ("lane"): rows join at step boundaries with their own prefill and leave when they finish.

Each row is prefilled alone, exactly as `Decoder.generate` prefills a one-prompt batch (same capacity, so the same
masks), then its KV slots are placed right-aligned into the lane's shared cache (`KVCache.from_rows`): its real
positions stay 0..n-1 (positions are explicit), the slots left of it are masked like left padding. The lane then
runs the engine's own step classes (`_Plain`, `_Args`, `_Token` from decoder.py) over all rows, so a row sees the
same tokens, positions, masks and heads as a solo `Engine.generate`; only the float rounding of batched matmuls and
of attention over extra masked slots differs (the engine's mixed-batch tests rely on the same property).

A lane holds one step kind (`LaneKey`): plain greedy, or a rule with one k. Rows of a lane may differ in user
(head), reward weight w, prompt, max_new_tokens, stop strings and ignore_eos. Membership changes rebuild the
shared caches once per boundary (one copy of each kept row's slots), which also drops the leading slots no
remaining row uses, so a lane's cache never grows past what its current rows need.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import GenerationConfig
from ..decoder import Decoder, _Args, _Plain, _Token
from ..stream import Stream, left_pad
from ..heads import HeadBank, TokenHeadBank
from ..kv_cache import KVCache
from ..stopping import RowStopper

STEP_RULES = ("plain", "args", "token")


@dataclass(frozen=True)
class LaneKey:
    """What rows must share to be stepped together: the step kind and the candidate count k (1 for plain)."""
    rule: str
    k: int = 1


@dataclass
class RowSpec:
    """One request as a lane sees it. head: a snapshot of the user's head taken when the request was accepted
    (sequence: {"W": [d], "b": []}; token: {"P": [r, d], "Q": [r, d]}); None for plain rows."""
    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple = ()
    ignore_eos: bool = False
    weight: float = 0.0
    head: dict | None = None


@dataclass
class LaneRow:
    tag: object  # the caller's handle (the scheduler's request)
    spec: RowSpec
    stopper: RowStopper
    cancelled: bool = False


@dataclass
class RowEvent:
    """What one step produced for one row. done: the row left the lane after this token."""
    row: LaneRow
    token: int
    done: bool


@dataclass
class _Prefilled:
    row: LaneRow
    streams: dict = field(default_factory=dict)  # name -> Stream of one row


class Lane:
    def __init__(self, decoder: Decoder, key: LaneKey):
        if key.rule not in STEP_RULES:
            raise ValueError(f"unknown lane rule {key.rule!r}; choose one of {STEP_RULES}")
        self.decoder = decoder
        self.key = key
        self.rows: list[LaneRow] = []
        self.streams: dict[str, Stream] = {}
        self.step_obj = None
        # The candidate tree needs k scratch slots past the committed ones, a plain step 1 (as in Decoder.generate).
        self.scratch = key.k if key.rule == "args" else 1
        self.cfg = GenerationConfig(k=key.k, rule="args" if key.rule == "plain" else key.rule)

    def __len__(self) -> int:
        return len(self.rows)

    def _stream_models(self) -> dict:
        models = {"policy": self.decoder.policy}
        if self.key.rule != "plain" and self.decoder.reward is not None:
            models["rm"] = self.decoder.reward
        return models

    def admit(self, entries: list[tuple[object, RowSpec]]) -> list[LaneRow]:
        """Prefill each new row alone and add it to the batch (call between steps). -> the new rows."""
        prefilled = []
        dev = self.decoder.policy.device
        for tag, spec in entries:
            if (spec.head is None) != (self.key.rule == "plain"):
                raise ValueError(f"a {self.key.rule!r} lane needs rows {'without' if self.key.rule == 'plain' else 'with'}"
                                 " a head")
            eos = set() if spec.ignore_eos else self.decoder.eos_ids
            row = LaneRow(tag, spec, RowStopper(self.decoder.policy.tokenizer, eos, tuple(spec.stop)))
            ids, pad_mask = left_pad([spec.prompt_ids], self.decoder.policy.tokenizer.pad_token_id, dev)
            capacity = ids.shape[1] + spec.max_new_tokens + self.scratch
            with torch.inference_mode():
                streams = {name: Stream(m, ids, pad_mask, capacity) for name, m in self._stream_models().items()}
            prefilled.append(_Prefilled(row, streams))
        kept = [_Prefilled(row, {name: (s, i) for name, s in self.streams.items()})
                for i, row in enumerate(self.rows)]
        self._rebuild(kept + [_Prefilled(p.row, {n: (s, 0) for n, s in p.streams.items()}) for p in prefilled])
        return [p.row for p in prefilled]

    def _rebuild(self, entries: list[_Prefilled]) -> None:
        """New shared caches, stream states and step object from entries whose streams map name -> (stream, row)."""
        self.rows = [e.row for e in entries]
        if not entries:
            self.streams, self.step_obj = {}, None
            return
        streams = {}
        for name, model in self._stream_models().items():
            picks = [e.streams[name] for e in entries]
            counts = [int(s.next_pos[i]) for s, i in picks]  # committed slots of each row (right-aligned)
            length = max(counts)
            # Room for every row's remaining tokens (its solo capacity minus what it has committed) + scratch.
            capacity = length + max(len(e.row.spec.prompt_ids) + e.row.spec.max_new_tokens - n
                                    for e, n in zip(entries, counts)) + self.scratch
            cache = KVCache.from_rows([(s.cache, i, n) for (s, i), n in zip(picks, counts)], capacity)
            next_pos = torch.stack([s.next_pos[i] for s, i in picks])  # [B]
            last_hidden = torch.stack([s.last_hidden[i] for s, i in picks])  # [B, d]
            streams[name] = Stream.from_state(model, cache, next_pos, last_hidden)
        self.streams = streams
        self.step_obj = self._make_step()

    def _make_step(self):
        dec, policy, rm = self.decoder, self.streams["policy"], self.streams.get("rm")
        if self.key.rule == "plain":
            return _Plain(dec, policy, self.cfg, None)
        dev = dec.policy.device
        B = len(self.rows)
        heads = _row_heads(self.key.rule, [r.spec.head for r in self.rows], dec, dev)
        slots = torch.arange(B, dtype=torch.int64, device=dev)  # row b reads its own head snapshot
        weights = torch.tensor([r.spec.weight for r in self.rows], dtype=torch.float32, device=dev)
        step_class = _Args if self.key.rule == "args" else _Token
        return step_class(dec, policy, rm, heads, slots, weights, self.key.k, self.cfg, None)

    @torch.inference_mode()
    def step(self) -> list[RowEvent]:
        """One decode step of every row; finished and cancelled rows leave the batch before the next one."""
        tokens, _ = self.step_obj.select()  # [B]
        events, keep = [], []
        for i, (row, token) in enumerate(zip(self.rows, tokens.tolist())):
            done = row.stopper.push(token) or len(row.stopper.ids) >= row.spec.max_new_tokens
            events.append(RowEvent(row, token, done))
            if not done and not row.cancelled:
                keep.append(i)
        if len(keep) < len(self.rows):
            self._rebuild([_Prefilled(self.rows[i], {n: (s, i) for n, s in self.streams.items()}) for i in keep])
        if keep:
            self.step_obj.advance(tokens[keep])
        return events

    def drop_cancelled(self) -> list[LaneRow]:
        """Remove cancelled rows now (between steps). -> the removed rows."""
        gone = [r for r in self.rows if r.cancelled]
        if gone:
            self._rebuild([_Prefilled(r, {n: (s, i) for n, s in self.streams.items()})
                           for i, r in enumerate(self.rows) if not r.cancelled])
        return gone


def _row_heads(rule: str, heads: list[dict], dec: Decoder, device):
    """A bank of the rule's kind whose slot b is row b's head snapshot (what the step classes gather from)."""
    d = dec.reward.hidden_size if dec.reward is not None else dec.policy.hidden_size
    if rule == "args":
        bank = HeadBank(d, capacity=1, device=device)
        bank.tensors = {"W": torch.stack([h["W"] for h in heads]).to(device),  # [B, d]
                        "b": torch.stack([h["b"] for h in heads]).to(device)}  # [B]
    else:
        bank = TokenHeadBank(d, rank=heads[0]["P"].shape[0], capacity=1, device=device)
        bank.tensors = {"P": torch.stack([h["P"] for h in heads]).to(device),  # [B, r, d]
                        "Q": torch.stack([h["Q"] for h in heads]).to(device)}
    return bank
