"""`rgd-generate`: decode one prompt, plain or reward-guided, and print only the continuation (or JSON)."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys

from .config import RULES, EngineConfig, GenerationConfig, check_text
from .errors import GenerationInputError, run_cli

PROG = "rgd-generate"


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def unescape(text: str) -> str:
    """The escapes \\n \\t \\r \\\\ typed on a command line -> the characters (other text is kept as is)."""
    return re.sub(r"\\[ntr\\]", lambda m: _ESCAPES[m.group()], text)


class _ListModels(argparse.Action):
    """--list-models: print the model presets and exit (like --version, so --prompt is not needed)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from .models.presets import format_presets

        print(format_presets())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--model", default="demo",
                   help="a preset (see --list-models; 'demo' = smollm2-135m), an HF model directory or a .gguf file")
    p.add_argument("--list-models", action=_ListModels, help="list the model presets (size, licence, provenance) and exit")
    p.add_argument("--prompt", required=True, help="prompt text (used raw unless --chat)")
    p.add_argument("--reward-model", default=None, help="separate reward backbone (same tokenizer); default: shared trunk")
    p.add_argument("--heads", default=None, help="head bank (.safetensors) with per-user reward heads")
    p.add_argument("--user", default=None, help="user id whose head guides decoding (needs --heads)")
    p.add_argument("--rule", default="args", choices=list(RULES),
                   help="scoring rule: args (sequence heads on each candidate), token (token-level heads, a token "
                        "bank), logratio (reward = log pi(.|context + prompt) - log pi(.|prompt), needs --context), "
                        "bon-block (best of --samples blocks of --block-size tokens)")
    p.add_argument("--context", default=None, type=unescape,
                   help="logratio: the user's profile text, put before the prompt for the conditioned policy")
    p.add_argument("-k", type=int, default=10, help="candidates per step (top-k of the policy)")
    p.add_argument("-w", "--weight", type=float, default=1.0, help="reward weight w")
    p.add_argument("--samples", type=int, default=4, help="bon-block: samples N per block")
    p.add_argument("--block-size", type=int, default=8, help="bon-block: tokens M per block")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--stop", nargs="*", default=[], type=unescape,
                   help="stop strings (the continuation is cut before them); backslash escapes such as \\n work")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="plain sampling: keep the top-k tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backend", default=None, help="kernel backend (default: $RGD_BACKEND or auto)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay each greedy step (plain, or args on the shared trunk) from a CUDA graph")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the bare continuation")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of an error (also with the environment variable RGD_DEBUG=1)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (one line on stderr; --debug or RGD_DEBUG=1 adds the traceback),
    1 a file-system error, 130 interrupted (see errors.run_cli)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    return run_cli(PROG, lambda: _generate(args), debug=args.debug)


def _generate(args: argparse.Namespace) -> int:
    if args.user is not None and args.heads is None and args.rule != "logratio":
        raise GenerationInputError("--user needs --heads BANK.safetensors")
    if (args.rule == "logratio") != (args.context is not None):
        raise GenerationInputError("--context goes with --rule logratio (and logratio needs it)")
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, stop=tuple(args.stop), k=args.k, weight=args.weight,
                           sample=args.sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           seed=args.seed, rule=args.rule, n_samples=args.samples, block_size=args.block_size,
                           cuda_graph=args.cuda_graph)
    gen.validate()  # before loading any model
    check_text(args.prompt, "--prompt")
    if args.context is not None:
        check_text(args.context, "--context")
    from .engine import Engine

    engine = Engine.from_config(EngineConfig(model=args.model, reward_model=args.reward_model, heads=args.heads,
                                             device=args.device, dtype=args.dtype), backend=args.backend)
    cond = [args.context + args.prompt] if args.rule == "logratio" else None
    users = [None] if args.rule == "logratio" else [args.user]
    out = engine.generate([args.prompt], users=users, config=gen, chat=args.chat, cond_prompts=cond)[0]
    if args.json:
        print(json.dumps({"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
                          "user": args.user, "rule": args.rule, "k": args.k, "w": args.weight, "model": args.model,
                          "reward_model": args.reward_model, "sample": args.sample, "seed": args.seed},
                         allow_nan=False))  # NaN / Infinity are not JSON: fail rather than print them
    else:
        print(out.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
