"""Helpers of the rgd-serve tests (a module of its own: `conftest` is an ambiguous name across test folders)."""
import time
from contextlib import contextmanager
from pathlib import Path

import torch

# A minimal chat template so the tiny tokenizer can serve /v1/chat/completions.
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
USERS = [f"u{i:02d}" for i in range(6)]
TOKEN_RANK = 3


def make_engine(model_dir, reward_dir=None):
    from rgd_engine import Engine, EngineConfig

    return Engine.from_config(EngineConfig(model=str(model_dir), reward_model=str(reward_dir) if reward_dir else None))


def write_banks(engine, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A sequence bank and a token bank with heads for USERS, strong enough to change the greedy tokens."""
    g = torch.Generator().manual_seed(seed)
    d = engine.hidden_size
    seq = engine.new_bank(capacity=8)
    tok = engine.new_token_bank(rank=TOKEN_RANK, capacity=8)
    for u in USERS:
        seq.add(u, torch.randn(d, generator=g) * 2.0, float(torch.randn((), generator=g)))
        tok.add(u, torch.randn(TOKEN_RANK, d, generator=g) * 0.5, torch.randn(TOKEN_RANK, d, generator=g) * 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    seq_path, tok_path = folder / "heads.safetensors", folder / "token-heads.safetensors"
    seq.save(seq_path)
    tok.save(tok_path)
    return seq_path, tok_path


ADMIN = "admin-secret"


@contextmanager
def running_server(*cli_args: str):
    """rgd-serve built from its command-line arguments (cli.build_state) on a free 127.0.0.1 port, in a thread;
    stopped (lifespan shutdown included) on exit. -> (base url, ServerState)."""
    from rgd_engine.serve.background import serve_in_background
    from rgd_engine.serve.cli import build_parser, build_state

    state = build_state(build_parser().parse_args(list(cli_args)))
    with serve_in_background(state) as url:
        yield url, state


class Reference:
    """Engine.generate of one request alone, on its own engine and banks: what the server must reproduce."""

    def __init__(self, engine, seq_path, tok_path):
        from rgd_engine.heads import load_bank

        self.engine = engine
        self.banks = {"args": load_bank(seq_path), "token": load_bank(tok_path)}

    def __call__(self, prompt: str, max_tokens: int, user=None, rgd=None, stop=(), chat=False, ignore_eos=False):
        from rgd_engine import GenerationConfig

        rgd = rgd or {}
        rule = rgd.get("rule", "args")
        cfg = GenerationConfig(max_new_tokens=max_tokens, stop=tuple(stop), k=rgd.get("k", 10),
                               weight=float(rgd.get("w", 1.0)), rule=rule, ignore_eos=ignore_eos)
        heads = self.banks[rule] if rgd else None
        return self.engine.generate([prompt], users=[user if rgd else None], heads=heads, config=cfg, chat=chat)[0]


def http_json(method: str, url: str, body=None, headers: dict | None = None, raw: bytes | None = None,
              content_type: str = "application/json") -> tuple[int, dict, dict]:
    """One HTTP request with the standard library -> (status, JSON body, response headers); errors included."""
    import json
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), dict(e.headers)


def slow_lane_steps(monkeypatch, seconds: float) -> None:
    """Make every lane step sleep `seconds` first, so a long request is surely still running while a test acts."""
    from rgd_engine.serve.batch import Lane

    step = Lane.step

    def slow_step(self):
        time.sleep(seconds)
        return step(self)

    monkeypatch.setattr(Lane, "step", slow_step)
