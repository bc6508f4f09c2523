"""The HTTP layer: OpenAI-compatible completions and chat (SSE streaming or not), models, health, metrics and the
head-bank admin endpoints. Decoding happens in the scheduler's worker thread; handlers only parse, snapshot the
user's head, submit and relay events."""
from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import HeadBankError, UnknownUserError
from .batch import LaneKey, RowSpec
from .head_store import KINDS, HeadStore
from .protocol import ApiError, ParsedRequest, parse_request
from .scheduler import DecodeRequest, Delta, Failed, Finished, QueueFull, Scheduler

DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks whether its client is still there
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # engine -> OpenAI


class ServerState:
    def __init__(self, engine, store: HeadStore, scheduler: Scheduler, model_id: str,
                 admin_token: str | None = None, api_key: str | None = None):
        self.engine, self.store, self.scheduler, self.model_id = engine, store, scheduler, model_id
        self.admin_token, self.api_key = admin_token, api_key
        self.created = int(time.time())


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        state.scheduler.start()
        try:
            yield
        finally:
            state.scheduler.stop()
            state.store.save(only_dirty=True)  # atomic; unchanged banks are not rewritten

    app = FastAPI(title="rgd-serve", lifespan=lifespan)
    app.state.rgd = state

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return JSONResponse(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").body(),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return JSONResponse(ApiError(400, f"invalid request: {exc.errors()}").body(), status_code=400)

    @app.get("/health")
    async def health():
        s = state.scheduler
        return {"status": "ok", "model": state.model_id, "rows": s.rows, "max_rows": s.max_rows,
                "queue": s.queue_depth, "lanes": len(s.lanes)}

    @app.get("/metrics")
    async def metrics():
        s = state.scheduler
        text = s.metrics.render(s.rows, s.max_rows, s.queue_depth, s.max_queue, len(s.lanes), state.store.versions)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        _check_api_key(state, request)
        return {"object": "list", "data": [{"id": state.model_id, "object": "model", "created": state.created,
                                            "owned_by": "rgd-engine"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        _check_api_key(state, request)
        parsed = parse_request(await _json(request), state.engine, state.model_id, "completion")
        return await _serve(state, request, parsed, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        _check_api_key(state, request)
        parsed = parse_request(await _json(request), state.engine, state.model_id, "chat")
        return await _serve(state, request, parsed, "chat")

    @app.get("/v1/heads")
    async def list_heads(request: Request):
        _check_admin(state, request)
        return {"banks": state.store.describe()}

    @app.put("/v1/heads/{user}")
    async def put_head(user: str, request: Request, kind: str | None = None):
        _check_admin(state, request)
        kind = _bank_kind(state, kind)
        parts = await _head_parts(request, state.store.bank(kind), user)
        try:
            slot, created, version = state.store.put(kind, user, parts)
        except HeadBankError as e:
            raise ApiError(400, str(e), param="head") from None
        state.scheduler.metrics.head_swap("put")
        return JSONResponse({"user": user, "kind": kind, "slot": slot, "created": created, "version": version},
                            status_code=201 if created else 200)

    @app.delete("/v1/heads/{user}")
    async def delete_head(user: str, request: Request, kind: str | None = None):
        _check_admin(state, request)
        kind = _bank_kind(state, kind)
        try:
            version = state.store.delete(kind, user)
        except UnknownUserError as e:
            raise ApiError(404, str(e), param="user", code="user_not_found") from None
        state.scheduler.metrics.head_swap("delete")
        return {"user": user, "kind": kind, "deleted": True, "version": version}

    @app.post("/v1/heads/save")
    async def save_heads(request: Request):
        _check_admin(state, request)
        try:
            return {"saved": state.store.save()}
        except (HeadBankError, OSError) as e:
            raise ApiError(500, f"saving the head banks failed: {e}") from None

    return app


async def _json(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def _check_api_key(state: ServerState, request: Request) -> None:
    if state.api_key and not hmac.compare_digest(_bearer(request).encode(), state.api_key.encode()):
        raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                       code="invalid_api_key")


def _check_admin(state: ServerState, request: Request) -> None:
    if not state.admin_token:
        raise ApiError(403, "head admin endpoints are disabled: start rgd-serve with --admin-token (or set "
                            "RGD_ADMIN_TOKEN)")
    given = request.headers.get("x-admin-token") or _bearer(request)
    if not hmac.compare_digest(given.encode(), state.admin_token.encode()):
        raise ApiError(401, "invalid or missing admin token (send 'Authorization: Bearer <admin token>' or "
                            "'X-Admin-Token')", code="invalid_admin_token")


def _bank_kind(state: ServerState, kind: str | None) -> str:
    loaded = sorted(state.store.banks)
    if kind is None:
        if len(loaded) != 1:
            raise ApiError(400, f"say which bank with ?kind= (loaded: {', '.join(loaded) or 'none'})", param="kind")
        return loaded[0]
    if kind not in state.store.banks:
        raise ApiError(400, f"no {kind!r} head bank is loaded (loaded: {', '.join(loaded) or 'none'})", param="kind")
    return kind


async def _head_parts(request: Request, bank, user: str) -> tuple:
    """The new head from a JSON body ({weight, bias} or {P, Q}) or a safetensors upload (tensors W, b or P, Q)."""
    shapes = bank.head_shapes()
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/octet-stream":
        from safetensors.torch import load as load_safetensors

        try:
            tensors = load_safetensors(await request.body())
        except Exception as e:  # safetensors raises several types for a corrupt buffer
            raise ApiError(400, f"the upload is not a readable safetensors buffer: {e}", param="head") from None
        if set(tensors) - set(shapes) or not set(tensors) >= set(shapes) - {"b"}:
            raise ApiError(400, f"a safetensors head needs tensors {sorted(shapes)} (b optional), got "
                                f"{sorted(tensors)}", param="head")
        return tuple(tensors.get(name, 0.0) for name in shapes)
    body = await _json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "a head is a JSON object", param="head")
    names = {"W": "weight", "b": "bias", "P": "P", "Q": "Q"}
    fields = [names[n] for n in shapes]
    unknown = sorted(set(body) - set(fields))
    missing = [f for f in fields if f not in body and f != "bias"]
    if unknown or missing:
        raise ApiError(400, f"a {bank.KIND} head of user {user!r} needs fields {fields}"
                            + (" (bias optional)" if "bias" in fields else "") + "; "
                            + (f"unknown {unknown}" if unknown else f"missing {missing}"), param="head")
    return tuple(body.get(f, 0.0) for f in fields)


def _plan(state: ServerState, parsed: ParsedRequest) -> tuple[LaneKey, RowSpec, dict]:
    """The lane and row of a request, with its head snapshot (the consistency rule: see head_store.py)."""
    cfg = parsed.config
    spec = RowSpec(parsed.prompt_ids, cfg.max_new_tokens, cfg.stop, cfg.ignore_eos)
    info = {"rule": parsed.guided_rule, "user": parsed.user, "head_version": None}
    if parsed.guided_rule is None or parsed.user is None:
        return LaneKey("plain"), spec, info
    info.update(k=cfg.k, w=cfg.weight)
    kind = KINDS[parsed.guided_rule]
    if state.store.bank(kind) is None:
        raise ApiError(400, f"rgd.rule {parsed.guided_rule!r} needs a {kind} head bank: start rgd-serve with "
                            f"{'--heads' if kind == 'sequence' else '--token-heads'}", param="rgd.rule")
    try:
        head, version = state.store.snapshot(kind, parsed.user)
    except UnknownUserError as e:
        raise ApiError(404, str(e), param="user", code="user_not_found") from None
    info["head_version"] = version
    if cfg.weight == 0:  # as Engine.generate: w = 0 decodes plainly
        return LaneKey("plain"), spec, info
    spec.weight, spec.head = cfg.weight, head
    return LaneKey(parsed.guided_rule, min(cfg.k, state.engine.policy.vocab_size)), spec, info


async def _serve(state: ServerState, request: Request, parsed: ParsedRequest, kind: str):
    key, spec, info = _plan(state, parsed)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    req = DecodeRequest(key, spec, emit=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
    try:
        state.scheduler.submit(req)
    except QueueFull as e:
        raise ApiError(429, str(e), code="rate_limit_exceeded", headers={"Retry-After": str(e.retry_after)}) from None
    except RuntimeError as e:
        raise ApiError(503, str(e)) from None
    ids = {"id": ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex,
           "created": int(time.time()), "model": state.model_id}
    usage_prompt = len(spec.prompt_ids)
    if parsed.stream:
        return StreamingResponse(_sse(state, req, events, ids, kind, info, usage_prompt, parsed.include_usage),
                                 media_type="text/event-stream")
    while True:
        try:
            ev = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                state.scheduler.cancel(req)
                return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
            continue
        if isinstance(ev, Failed):
            raise ApiError(ev.status, ev.message)
        if isinstance(ev, Finished):
            break
    reason = FINISH_REASONS[ev.finish_reason]
    if kind == "completion":
        choice = {"index": 0, "text": ev.full_text, "logprobs": None, "finish_reason": reason}
        obj = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": ev.full_text}, "finish_reason": reason}
        obj = "chat.completion"
    return {**ids, "object": obj, "choices": [choice], "usage": _usage(usage_prompt, len(ev.all_token_ids)),
            "rgd": {**info, "token_ids": ev.all_token_ids, "finish_reason": ev.finish_reason}}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _sse(state, req, events, ids, kind, info, usage_prompt, include_usage):
    obj = "text_completion" if kind == "completion" else "chat.completion.chunk"

    def chunk(text, token_ids, reason, role=False, extra=None):
        if kind == "completion":
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "delta": ({"role": "assistant"} if role else {}) | ({"content": text} if text or
                                                                                      role else {}),
                      "finish_reason": reason}
        body = {**ids, "object": obj, "choices": [choice], "rgd": {"token_ids": token_ids, **(extra or {})}}
        return f"data: {json.dumps(body)}\n\n"

    finished = False
    try:
        if kind == "chat":
            yield chunk("", [], None, role=True)
        while True:
            ev = await events.get()
            if isinstance(ev, Delta):
                yield chunk(ev.text, ev.token_ids, None)
            elif isinstance(ev, Finished):
                finished = True
                yield chunk(ev.text, ev.token_ids, FINISH_REASONS[ev.finish_reason],
                            extra={**info, "finish_reason": ev.finish_reason})
                if include_usage:
                    usage = _usage(usage_prompt, len(ev.all_token_ids))
                    yield f"data: {json.dumps({**ids, 'object': obj, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
                return
            elif isinstance(ev, Failed):
                finished = True
                yield f"data: {json.dumps(ApiError(ev.status, ev.message).body())}\n\n"
                yield "data: [DONE]\n\n"
                return
    finally:
        if not finished:  # the client went away mid-stream: free its row
            state.scheduler.cancel(req)
