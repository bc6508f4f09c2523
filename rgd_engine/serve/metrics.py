"""Server counters and gauges, rendered in the Prometheus text exposition format (version 0.0.4)."""
from __future__ import annotations

import threading
import time
from collections import deque

TOKENS_PER_SECOND_WINDOW = 10.0  # seconds of decode steps the tokens/s gauge averages over


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests = {}  # outcome -> count (ok, cancelled, error, rejected)
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.head_swaps = {}  # op -> count (put, delete)
        self.steps = 0
        self._recent = deque()  # (time, tokens) of recent decode steps

    def request_done(self, outcome: str) -> None:
        with self._lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def admitted(self, prompt_tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens

    def step(self, tokens: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.steps += 1
            self.generated_tokens += tokens
            self._recent.append((now, tokens))
            while self._recent and self._recent[0][0] < now - TOKENS_PER_SECOND_WINDOW:
                self._recent.popleft()

    def head_swap(self, op: str) -> None:
        with self._lock:
            self.head_swaps[op] = self.head_swaps.get(op, 0) + 1

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [n for t, n in self._recent if t >= now - TOKENS_PER_SECOND_WINDOW]
        return sum(recent) / TOKENS_PER_SECOND_WINDOW

    def render(self, rows: int, max_rows: int, queue: int, max_queue: int, lanes: int, bank_versions: dict) -> str:
        with self._lock:
            requests, swaps = dict(self.requests), dict(self.head_swaps)
            prompt, generated, steps = self.prompt_tokens, self.generated_tokens, self.steps
        out = []

        def metric(name, kind, help_, samples):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                label = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
                out.append(f"{name}{label} {value}")

        metric("rgd_requests_total", "counter", "Finished requests by outcome.",
               [({"outcome": o}, requests.get(o, 0)) for o in ("ok", "cancelled", "error", "rejected")])
        metric("rgd_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", [({}, prompt)])
        metric("rgd_generated_tokens_total", "counter", "Generated tokens.", [({}, generated)])
        metric("rgd_decode_steps_total", "counter", "Batched decode steps.", [({}, steps)])
        metric("rgd_tokens_per_second", "gauge", f"Generated tokens per second over the last "
               f"{TOKENS_PER_SECOND_WINDOW:g} s.", [({}, round(self.tokens_per_second(), 3))])
        metric("rgd_batch_rows", "gauge", "Rows decoding now (all lanes).", [({}, rows)])
        metric("rgd_batch_max_rows", "gauge", "Most rows decoding at once.", [({}, max_rows)])
        metric("rgd_batch_occupancy", "gauge", "rgd_batch_rows / rgd_batch_max_rows.",
               [({}, round(rows / max_rows, 4))])
        metric("rgd_lanes", "gauge", "Batches (one per step kind) decoding now.", [({}, lanes)])
        metric("rgd_queue_depth", "gauge", "Accepted requests waiting for a row.", [({}, queue)])
        metric("rgd_queue_max_depth", "gauge", "Waiting requests beyond which requests get 429.", [({}, max_queue)])
        metric("rgd_head_swaps_total", "counter", "Head updates (put = add or replace, delete).",
               [({"op": o}, swaps.get(o, 0)) for o in ("put", "delete")])
        metric("rgd_head_bank_version", "gauge", "Changes made to each head bank since start.",
               [({"kind": k}, v) for k, v in bank_versions.items()])
        return "\n".join(out) + "\n"
