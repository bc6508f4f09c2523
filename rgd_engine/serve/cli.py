"""`rgd-serve`: load the policy (and a separate reward backbone), the head banks, and serve them over HTTP."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..errors import HeadBankError, run_cli

ADMIN_TOKEN_ENV = "RGD_ADMIN_TOKEN"
API_KEY_ENV = "RGD_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rgd-serve", description="OpenAI-compatible server with per-user reward heads "
                                "(continuous batching, live head updates).")
    p.add_argument("--model", required=True, help="policy: 'demo', an HF directory or a .gguf file")
    p.add_argument("--reward-model", help="separate reward backbone (same tokenizer); default: the policy's trunk")
    p.add_argument("--heads", help="sequence-level head bank (.safetensors) for rule args; saved back to this file")
    p.add_argument("--token-heads", help="token-level head bank for rule token; saved back to this file")
    p.add_argument("--default-user", help="head used for users not in a bank (default: unknown users get 404)")
    p.add_argument("--served-model-name", help="the model id clients send (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--admin-token", default=os.environ.get(ADMIN_TOKEN_ENV),
                   help=f"token of the /v1/heads endpoints (or ${ADMIN_TOKEN_ENV}); without one they are disabled")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"key the completion endpoints require (or ${API_KEY_ENV}); default: none")
    p.add_argument("--max-batch", type=int, default=32, help="most rows decoding at once (all lanes)")
    p.add_argument("--max-queue", type=int, default=64, help="most requests waiting for a row before 429")
    p.add_argument("--backend", help="kernel backend (RGD_BACKEND)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--log-level", default="info")
    p.add_argument("--debug", action="store_true", help="print tracebacks of startup errors")
    return p


def build_state(args):
    """Engine, head store and scheduler from parsed arguments (no network)."""
    from .. import Engine, EngineConfig
    from ..heads import HeadBank, TokenHeadBank, load_bank
    from .app import ServerState
    from .head_store import HeadStore
    from .scheduler import Scheduler

    banks = {}  # checked before the models load: a wrong file fails in a second, not after a minute of loading
    for path, cls, kind, flag in ((args.heads, HeadBank, "sequence", "--heads"),
                                  (args.token_heads, TokenHeadBank, "token", "--token-heads")):
        if path is None:
            continue
        bank = load_bank(path, device=args.device)
        if not isinstance(bank, cls):
            raise HeadBankError(f"{flag} {path!r} holds {bank.KIND!r} heads, not {kind!r} heads")
        if args.default_user is not None:
            if args.default_user not in bank:
                raise HeadBankError(f"--default-user {args.default_user!r} has no head in {flag} {path!r}")
            bank.default_user = args.default_user
        banks[kind] = (bank, Path(path))
    engine = Engine.from_config(EngineConfig(model=args.model, reward_model=args.reward_model, device=args.device,
                                             dtype=args.dtype), backend=args.backend)
    for bank, _ in banks.values():
        engine.check_bank(bank)
    scheduler = Scheduler(engine.decoder, max_rows=args.max_batch, max_queue=args.max_queue)
    return ServerState(engine, HeadStore(banks), scheduler, args.served_model_name or args.model,
                       admin_token=args.admin_token, api_key=args.api_key)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        import uvicorn

        from .app import create_app

        if args.max_batch < 1 or args.max_queue < 0:
            raise ValueError(f"--max-batch must be >= 1 and --max-queue >= 0, got {args.max_batch}, {args.max_queue}")
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        app = create_app(build_state(args))
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)

    return run_cli("rgd-serve", body, debug=args.debug)
