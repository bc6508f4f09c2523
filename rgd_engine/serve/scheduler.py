"""The decode loop of the server: one worker thread owns every lane and steps them round-robin.

Requests wait in a bounded queue (`submit` raises `QueueFull` beyond `max_queue`); at each step boundary the
worker admits waiting requests while fewer than `max_rows` rows are decoding (prefilled alone, then placed into the
lane of their step kind, see batch.py), then runs one step of every lane. A finished row leaves its lane at once,
so a long request never holds back short ones. A cancelled request (client gone) leaves at the next boundary.

Events go to each request's `emit` callback (called from the worker thread): `Delta` with the text and token ids
that are final, `Finished` with the rest, or `Failed`. Delta text holds back what may still change: a trailing
incomplete UTF-8 character and the last (longest stop string - 1) characters, which a stop string could still cut.
The concatenated deltas equal the final text.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from .batch import Lane, LaneKey, LaneRow, RowEvent, RowSpec
from .metrics import Metrics

log = logging.getLogger("rgd_engine.serve")


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"too many requests: {waiting} are already waiting for a batch row; retry in "
                         f"{retry_after} s")
        self.retry_after = retry_after


@dataclass
class Delta:
    text: str
    token_ids: list


@dataclass
class Finished:
    text: str  # the rest of the text (after the deltas already sent)
    token_ids: list  # the rest of the token ids
    finish_reason: str  # eos | stop | length (as Generation.finish_reason)
    full_text: str
    all_token_ids: list


@dataclass
class Failed:
    status: int
    message: str


@dataclass
class DecodeRequest:
    key: LaneKey
    spec: RowSpec
    emit: Callable[[object], None]
    cancelled: bool = False
    accepted_at: float = field(default_factory=time.monotonic)
    text_sent: str = ""
    ids_sent: int = 0
    row: LaneRow | None = None


class Scheduler:
    def __init__(self, decoder, max_rows: int = 32, max_queue: int = 64, metrics: Metrics | None = None):
        if max_rows < 1 or max_queue < 0:
            raise ValueError(f"max_rows must be >= 1 and max_queue >= 0, got {max_rows}, {max_queue}")
        self.decoder = decoder
        self.max_rows = max_rows
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self.lanes: dict[LaneKey, Lane] = {}
        self._waiting: deque[DecodeRequest] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.rows = 0  # rows decoding now (read by /health and /metrics)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    def submit(self, req: DecodeRequest) -> None:
        with self._cv:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            # Requests that the next boundary admits (free rows) do not count against the queue bound.
            if len(self._waiting) >= self.max_queue + max(self.max_rows - self.rows, 0):
                self.metrics.request_done("rejected")
                raise QueueFull(len(self._waiting), retry_after=1)
            self._waiting.append(req)
            self._cv.notify()

    def cancel(self, req: DecodeRequest) -> None:
        """Called when the client is gone: its row is freed at the next step boundary."""
        req.cancelled = True
        if req.row is not None:
            req.row.cancelled = True
        with self._cv:
            self._cv.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rgd-serve-decoder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self.lanes:
                    self._cv.wait()
                if self._stopping:
                    break
                admit = []
                while self._waiting and self.rows + len(admit) < self.max_rows:
                    req = self._waiting.popleft()
                    if req.cancelled:
                        self.metrics.request_done("cancelled")
                    else:
                        admit.append(req)
            self._admit(admit)
            for key in list(self.lanes):
                self._step(key)
        self._fail_all(503, "the server is shutting down")

    def _admit(self, requests: list[DecodeRequest]) -> None:
        by_key: dict[LaneKey, list[DecodeRequest]] = {}
        for req in requests:
            by_key.setdefault(req.key, []).append(req)
        for key, reqs in by_key.items():
            lane = self.lanes.get(key) or Lane(self.decoder, key)
            try:
                rows = lane.admit([(req, req.spec) for req in reqs])
            except Exception as e:  # a bug or an out-of-memory: fail these requests, keep serving
                log.exception("admitting %d request(s) into lane %s failed", len(reqs), key)
                for req in reqs:
                    self._finish_failed(req, 500, f"internal error while admitting the request: {e}")
                continue
            self.lanes[key] = lane
            for req, row in zip(reqs, rows):
                req.row = row
                row.cancelled = req.cancelled
                self.metrics.admitted(len(req.spec.prompt_ids))
            self._count_rows()

    def _step(self, key: LaneKey) -> None:
        lane = self.lanes[key]
        for row in lane.drop_cancelled():
            self.metrics.request_done("cancelled")
        if len(lane):
            try:
                events = lane.step()
            except Exception as e:
                log.exception("decode step of lane %s failed", key)
                for row in lane.rows:
                    self._finish_failed(row.tag, 500, f"internal error in a decode step: {e}")
                lane.rows = []
                events = []
            self.metrics.step(len(events))
            for ev in events:
                self._deliver(ev)
        if not len(lane):
            del self.lanes[key]
        self._count_rows()

    def _count_rows(self) -> None:
        self.rows = sum(len(lane) for lane in self.lanes.values())

    def _deliver(self, ev: RowEvent) -> None:
        req: DecodeRequest = ev.row.tag
        stopper = ev.row.stopper
        if ev.row.cancelled:  # the client is gone; the row left the lane in this step
            self.metrics.request_done("cancelled")
            return
        text = stopper.text()
        if ev.done:
            if not text.startswith(req.text_sent):  # a tokenizer whose decoding of a prefix is not a prefix
                log.warning("request's streamed text %r is not a prefix of its final text %r", req.text_sent, text)
            rest = text[len(req.text_sent):] if text.startswith(req.text_sent) else ""
            self._emit(req, Finished(rest, stopper.ids[req.ids_sent:], stopper.finish_reason or "length", text,
                                     list(stopper.ids)))
            self.metrics.request_done("ok")
            return
        safe = _settled(text, ev.row.spec.stop)
        if len(safe) > len(req.text_sent) and safe.startswith(req.text_sent):
            delta = Delta(safe[len(req.text_sent):], stopper.ids[req.ids_sent:])
            req.text_sent, req.ids_sent = safe, len(stopper.ids)
            self._emit(req, delta)

    def _emit(self, req: DecodeRequest, event) -> None:
        try:
            req.emit(event)
        except Exception:  # the request's event loop is gone (server shutting down): nothing to tell
            log.debug("dropping an event of a request whose client is gone", exc_info=True)

    def _finish_failed(self, req: DecodeRequest, status: int, message: str) -> None:
        self.metrics.request_done("error")
        self._emit(req, Failed(status, message))

    def _fail_all(self, status: int, message: str) -> None:
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting + [row.tag for lane in self.lanes.values() for row in lane.rows]:
            self._finish_failed(req, status, message)
        self.lanes.clear()
        self.rows = 0


def _settled(text: str, stop: tuple) -> str:
    """The part of a running row's text that no later token can change (see the module docstring)."""
    text = text.rstrip("\ufffd")
    hold = max((len(s) for s in stop), default=1) - 1
    return text[:len(text) - hold] if hold else text
