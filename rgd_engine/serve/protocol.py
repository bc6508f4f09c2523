"""OpenAI request bodies -> what the scheduler decodes, with OpenAI-style errors that name the problem.

Decoding is greedy (temperature absent or 0): sampling parameters other than their greedy defaults are refused
with 400 rather than ignored. RGD parameters ride in the body's `rgd` object: {rule: args | token, k, w};
absent = plain greedy decoding. `ignore_eos` (top level, as in vLLM) runs a request to max_tokens.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from ..config import GenerationConfig, check_text
from ..errors import GenerationInputError, PromptTooLongError

SERVED_RULES = ("args", "token")
DEFAULT_MAX_TOKENS = {"completion": 16, "chat": 64}  # OpenAI's completions default; chat's own (documented)
# Parameters accepted only at the value that means greedy, one completion, no extras.
GREEDY_ONLY = {"temperature": (None, 0), "top_p": (None, 1), "n": (None, 1), "best_of": (None, 1),
               "logprobs": (None, 0, False), "top_logprobs": (None, 0), "echo": (None, False),
               "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
               "suffix": (None, ""), "tools": (None, []), "functions": (None, []),
               "response_format": (None, {"type": "text"})}
RGD_FIELDS = ("rule", "k", "w")


class ApiError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict:
        kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}.get(self.status, "invalid_request_error" if self.status < 500 else
                                             "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ParsedRequest:
    prompt_ids: list[int]
    config: GenerationConfig  # max_new_tokens, stop, k, weight, rule, ignore_eos
    guided_rule: str | None  # None = plain decoding (no rgd object)
    user: str | None
    stream: bool
    include_usage: bool


def parse_request(body, engine, model_id: str, kind: str) -> ParsedRequest:
    """kind: "completion" or "chat". Raises ApiError (400 / 404) naming the offending field."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "missing or non-string 'model'", param="model")
    if model != model_id:
        raise ApiError(404, f"model {model!r} does not exist; this server serves {model_id!r}", param="model",
                       code="model_not_found")
    for name, allowed in GREEDY_ONLY.items():
        value = body.get(name)
        if not any(_same(value, a) for a in allowed):
            raise ApiError(400, f"{name}={value!r} is not supported: rgd-serve decodes greedily, one completion per "
                                f"request (accepted: {', '.join(repr(a) for a in allowed)})", param=name,
                           code="unsupported_parameter")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or not user):
        raise ApiError(400, f"'user' must be a non-empty string, got {user!r}", param="user")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, f"'stream_options' must be an object, got {options!r}", param="stream_options")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = DEFAULT_MAX_TOKENS[kind] if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, f"'max_tokens' must be an integer >= 1, got {max_tokens!r}", param="max_tokens")
    stop = body.get("stop")
    stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)):
        raise ApiError(400, f"'stop' must be a string or a list of strings, got {stop!r}", param="stop")
    ignore_eos = body.get("ignore_eos", False)
    rule, k, w = _parse_rgd(body.get("rgd"))
    try:
        cfg = GenerationConfig(max_new_tokens=max_tokens, stop=tuple(stop), k=k, weight=w, rule=rule or "args",
                               ignore_eos=ignore_eos)
        cfg.validate()
        engine.check_k(cfg)
    except GenerationInputError as e:
        raise ApiError(400, str(e), param=_param_of(str(e))) from None
    ids = _prompt_ids(body, engine, kind)
    try:
        engine.check_lengths([ids], max_tokens)
    except PromptTooLongError as e:
        raise ApiError(400, str(e).replace("prompt 0", "the prompt", 1), param="messages" if kind == "chat" else
                       "prompt", code="context_length_exceeded") from None
    except GenerationInputError as e:
        raise ApiError(400, str(e).replace("prompt 0", "the prompt", 1), param="prompt") from None
    return ParsedRequest(ids, cfg, rule, user, stream, bool(options.get("include_usage", False)))


def _same(value, accepted) -> bool:
    """value == accepted, where a bool is not a number (n=True is not n=1)."""
    if accepted is None or isinstance(accepted, bool):
        return value is accepted
    return not isinstance(value, bool) and value == accepted


def _parse_rgd(rgd) -> tuple[str | None, int, float]:
    defaults = GenerationConfig()
    if rgd is None:
        return None, defaults.k, 0.0
    if not isinstance(rgd, dict):
        raise ApiError(400, f"'rgd' must be an object {{rule, k, w}}, got {rgd!r}", param="rgd")
    unknown = sorted(set(rgd) - set(RGD_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown rgd field(s) {unknown}; accepted: {', '.join(RGD_FIELDS)}", param="rgd")
    rule = rgd.get("rule", "args")
    if rule not in SERVED_RULES:
        raise ApiError(400, f"rgd.rule {rule!r} is not served; rgd-serve serves {', '.join(SERVED_RULES)} "
                            "(logratio and bon-block run through Engine.generate / rgd-generate)", param="rgd.rule")
    k, w = rgd.get("k", defaults.k), rgd.get("w", defaults.weight)
    if isinstance(w, numbers.Integral) and not isinstance(w, bool):
        w = float(w)
    return rule, k, w


def _param_of(message: str) -> str | None:
    for field_name, param in (("k", "rgd.k"), ("weight", "rgd.w"), ("max_new_tokens", "max_tokens"),
                              ("stop", "stop"), ("ignore_eos", "ignore_eos")):
        if message.startswith(field_name) or message.startswith(f"{field_name}="):
            return param
    return None


def _prompt_ids(body: dict, engine, kind: str) -> list[int]:
    try:
        if kind == "completion":
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise ApiError(400, "'prompt' must be a string (or a list of one string), got "
                                    f"{type(prompt).__name__}", param="prompt")
            if not prompt:
                raise ApiError(400, "'prompt' is empty", param="prompt")
            return engine.encode(prompt)
        messages = _messages(body.get("messages"))
        tok = engine.tokenizer
        if not tok.chat_template:
            raise ApiError(400, f"model {engine.policy.name!r} has no chat template; use /v1/completions",
                           param="messages")
        # As Engine.encode(chat=True) does for one user message.
        return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    except GenerationInputError as e:
        raise ApiError(400, str(e), param="prompt" if kind == "completion" else "messages") from None


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] must be an object with role system, user or assistant, got {m!r}",
                           param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text is served
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string, got {type(content).__name__}",
                           param=f"messages[{i}].content")
        try:
            check_text(content, f"messages[{i}].content")
        except GenerationInputError as e:
            raise ApiError(400, str(e), param=f"messages[{i}].content") from None
        out.append({"role": m["role"], "content": content})
    return out
