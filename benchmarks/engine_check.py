"""The engine's parity checks on one device and dtype set: the engine part of benchmarks/gpu_check.sh.

    python -m benchmarks.engine_check --device cuda --dtypes float32 float16 bfloat16 --json OUT.json [--model-dir D]

On the tests' tiny random models (Llama: the fast forward; GPT-2: the HF forward), built here (nothing is
downloaded), and on --model-dir when given (an HF model directory carried with the working tree):
- greedy = HF: greedy decoding with no reward against HF `generate(do_sample=False)` in the same dtype, both
  stopping at EOS. float32: token-identical. float16 / bfloat16: identical rows are reported; required is that each
  row's first token is HF's argmax up to the dtype's rounding of the logits (LOGIT_TOL; after one flipped near-tie
  a row diverges).
- tree rewards = recomputation: ARGS with per-step scores; every candidate's reward from the depth-1 tree-mask
  forward against r_u recomputed by a whole-sequence forward of prompt + generated + candidate, same dtype,
  within the dtype's tolerance (TOL).
- backends agree: the same ARGS decode (greedy, and sampled with a seed) with every kernel backend available on
  the device gives identical tokens (float32).
- graph = eager (fast-forward models): `cuda_graph=True` decodes what the same static step decodes without a graph,
  and in float32 what the default step decodes (`graph_equals_eager`). On CPU there is no graph: both sides run the
  static step, so the dry run checks the harness only.
Prints one line per check, writes every figure to --json, exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["The quick brown", "Reward guided decoding steers", "Breaking news: the city council",
           "Scientists discover a new species"]
TOL = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}  # |err| / (1 + |r|), rewards of order 1-10
# A half-precision HF forward rounds its logits to the dtype (8 bits of mantissa in bfloat16), the engine's
# fused LM head does not: their argmax may differ where the top logits are within the dtype's rounding.
LOGIT_TOL = {torch.float16: 4 * 2.0 ** -10, torch.bfloat16: 4 * 2.0 ** -7}  # relative to max(1, |top logit|)


def tiny_model_dirs(root: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import make_tokenizer, save_tiny

    tok = make_tokenizer()
    return {"tiny-llama": save_tiny(root / "llama", "llama", seed=1, tokenizer=tok),
            "tiny-gpt2": save_tiny(root / "gpt2", "gpt2", seed=2, tokenizer=tok)}


def _bank(engine, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    bank = engine.new_bank(capacity=2)
    d = engine.hidden_size
    bank.add("a", torch.randn(d, generator=g) * scale / d ** 0.5, float(torch.randn(1, generator=g)))
    return bank


@torch.inference_mode()
def greedy_equals_hf(engine, new_tokens: int) -> dict:
    tok, hf, dev = engine.tokenizer, engine.policy.hf_model, engine.policy.device
    # Both sides stop at EOS: HF's min_new_tokens would mask EOS out where the engine's ignore_eos keeps it
    # (a random model's rows do reach EOS).
    got = [g.token_ids for g in engine.generate(PROMPTS, max_new_tokens=new_tokens)]
    want, first_ok = [], 0
    for p, row in zip(PROMPTS, got):  # one row at a time: no padding question on the HF side
        ids = torch.tensor([engine.encode(p)], device=dev)
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                          pad_token_id=tok.pad_token_id)
        want.append(out[0, ids.shape[1]:].tolist())
        logits = hf(input_ids=ids).logits[0, -1].float()  # [V] in the model's dtype, widened
        top = float(logits.max())
        slack = LOGIT_TOL.get(engine.policy.dtype, 0.0) * max(1.0, abs(top))
        first_ok += float(logits[row[0]]) >= top - slack
    same = sum(g == w for g, w in zip(got, want))
    exact = engine.policy.dtype == torch.float32
    return {"rows": len(PROMPTS), "same_rows": same, "first_token_within_rounding": first_ok,
            "required": "every row identical" if exact else "every first token within the dtype's rounding",
            "ok": same == len(PROMPTS) if exact else first_ok == len(PROMPTS)}


@torch.inference_mode()
def tree_rewards_equal_recompute(engine, new_tokens: int) -> dict:
    bank = _bank(engine)
    outs = engine.generate(PROMPTS, users=["a", None, "a", "a"], heads=bank, k=4, weight=0.5,
                           max_new_tokens=new_tokens, ignore_eos=True, return_scores=True)
    w_u, b_u = bank.head("a")
    lm, worst, n = engine.backbone, 0.0, 0
    for prompt, user, o in zip(PROMPTS, ["a", None, "a", "a"], outs):
        seq = engine.encode(prompt)
        for tok, step in zip(o.token_ids, o.steps):
            if user is not None:
                cands = torch.tensor([seq + [v] for v in step["candidates"]], device=lm.device)  # [k, T + 1]
                h = lm.base(input_ids=cands, use_cache=False).last_hidden_state[:, -1].float()  # [k, d]
                want = h @ w_u.to(h.device) + b_u
                got = torch.tensor(step["reward"], device=h.device)
                err = ((got - want).abs() / (1 + want.abs())).max().item()
                worst, n = max(worst, err), n + len(step["candidates"])
            seq = seq + [tok]
    return {"candidates_checked": n, "max_rel_err": worst}


def backends_agree(engine, new_tokens: int) -> dict:
    from rgd_engine.kernels import available_backends

    bank = _bank(engine, seed=1)
    names = available_backends(engine.policy.device.type)
    if engine.policy.dtype != torch.float32 and engine.policy.device.type == "cpu":
        names = [b for b in names if b != "triton"]  # the interpreter is float32 only
    runs = {}
    for name in names:
        engine.decoder.backend = name
        kw = dict(users=["a"] * len(PROMPTS), heads=bank, k=4, weight=1.0, max_new_tokens=new_tokens, ignore_eos=True)
        runs[name] = ([g.token_ids for g in engine.generate(PROMPTS, **kw)],
                      [g.token_ids for g in engine.generate(PROMPTS, sample=True, seed=3, temperature=1.3, **kw)])
    engine.decoder.backend = None
    first = next(iter(runs.values()))
    return {"backends": names, "identical": all(r == first for r in runs.values())}


def graph_equals_eager(engine, new_tokens: int) -> dict:
    """cuda_graph=True (plain greedy and args) against the same static step run without a graph (identical tokens
    required in every dtype: the replay repeats the recorded kernels) and against the default step (identical in
    float32; reported in half precision, where attending over the whole cache rounds differently). Stop strings end
    rows at different steps, so the shrunk batch's new graph runs too."""
    from unittest import mock

    from rgd_engine import graph_step

    bank = _bank(engine, seed=2)
    cases = {"greedy": {}, "args": dict(users=["a", None, "a", "a"], heads=bank, k=4, weight=1.0)}
    out = {}
    for case, kw in cases.items():
        for finish, extra in (("full", dict(ignore_eos=True)), ("stop", dict(stop=tuple("aeiost")))):
            def tokens(**more):
                # the warm-up, the recording, replays; long enough for stop strings to end rows at different steps
                gens = engine.generate(PROMPTS, max_new_tokens=max(new_tokens, 12), **kw, **extra, **more)
                return [g.token_ids for g in gens]

            graphed = tokens(cuda_graph=True)
            with mock.patch.object(graph_step._Replay, "__call__", lambda self: self.fn()):
                static = tokens(cuda_graph=True)
            default = tokens()
            out[f"{case}/{finish}"] = {"rows": len(PROMPTS), "same_as_static": sum(map(list.__eq__, graphed, static)),
                                       "same_as_default": sum(map(list.__eq__, graphed, default)),
                                       "lengths": [len(t) for t in graphed]}
    exact = engine.policy.dtype == torch.float32
    ok = all(r["same_as_static"] == r["rows"] and (not exact or r["same_as_default"] == r["rows"])
             for r in out.values())
    return {"cases": out, "required": "graph = static step" + (" = default step" if exact else ""), "ok": ok}


def run(device: str, dtypes: list[str], model_dirs: dict[str, Path], new_tokens: int) -> dict:
    from rgd_engine import Engine
    from rgd_engine.models import load_causal_lm, parse_dtype

    results, failures = [], []
    for name, path in model_dirs.items():
        for dtype_name in dtypes:
            dtype = parse_dtype(dtype_name)
            t0 = time.perf_counter()
            engine = Engine(load_causal_lm(str(path), dtype_name, device))
            entry = {"model": name, "dtype": dtype_name, "device": device, "forward": engine.policy.forward_kind}
            entry["greedy_equals_hf"] = greedy_equals_hf(engine, new_tokens)
            r = tree_rewards_equal_recompute(engine, new_tokens)
            entry["tree_rewards"] = {**r, "tolerance": TOL[dtype], "ok": r["max_rel_err"] <= TOL[dtype]}
            if dtype == torch.float32:
                b = backends_agree(engine, new_tokens)
                entry["backends_agree"] = {**b, "ok": b["identical"]}
            if engine.policy.forward_kind == "fast":
                entry["graph_equals_eager"] = graph_equals_eager(engine, new_tokens)
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            for check in ("greedy_equals_hf", "tree_rewards", "backends_agree", "graph_equals_eager"):
                if check in entry:
                    ok = entry[check]["ok"]
                    print(f"{'ok  ' if ok else 'FAIL'} {name:16s} {dtype_name:9s} {check:17s} "
                          f"{json.dumps({k: v for k, v in entry[check].items() if k != 'ok'})}", flush=True)
                    if not ok:
                        failures.append(f"{name}/{dtype_name}/{check}")
            results.append(entry)
            del engine
    return {"results": results, "failures": failures, "ok": not failures}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    p.add_argument("--model-dir", type=Path, default=None, help="an HF model directory to check besides the tiny ones")
    p.add_argument("--models", nargs="+", choices=("tiny-llama", "tiny-gpt2"), default=("tiny-llama", "tiny-gpt2"),
                   help="which tiny models to check")
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {k: v for k, v in tiny_model_dirs(Path(tmp)).items() if k in args.models}
        if args.model_dir is not None:
            dirs[args.model_dir.name] = args.model_dir
        report = run(args.device, args.dtypes, dirs, args.new_tokens)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
