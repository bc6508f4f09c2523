"""The README's tables from one `benchmarks/gpu_check.sh` JSON (run here, after the device call, at no device time).

    python -m benchmarks.gpu_report OUT/gpu_check.json [--md OUT.md]

Four tables: the steps (status, seconds), the engine's parity checks per model and dtype, and per decode benchmark
(the tests' tiny model; the real model's shape) every mode's speed against the weight-read floor, with the
CUDA-graph run of the same modes beside it where one ran.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _mark(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def _steps(report: dict) -> list[str]:
    lines = ["| step | status | seconds |", "|---|---|---|"]
    for s in report["steps"]:
        lines.append(f"| {s['name']} | {'ok' if s['ok'] else 'FAILED rc=%d' % s['rc']} | {s['seconds']} |")
    if "kernel_tests" in report:
        k = report["kernel_tests"]
        lines.append("")
        lines.append(f"kernel tests: {k['tests']} run, {k['failures']} failed, {k['errors']} errors, "
                     f"{k['skipped']} skipped")
    return lines


def _checks(report: dict) -> list[str]:
    lines = ["| checked model | dtype | forward | greedy = HF (same rows / first token ok) | tree rewards max rel err "
             "(tolerance) | backends agree | graph = eager |", "|---|---|---|---|---|---|---|"]
    for e in report.get("engine_check", {}).get("results", []):
        g, t = e["greedy_equals_hf"], e["tree_rewards"]
        b, c = e.get("backends_agree"), e.get("graph_equals_eager")
        lines.append(
            f"| {e['model']} | {e['dtype']} | {e['forward']} | {_mark(g['ok'])} {g['same_rows']}/{g['rows']}, "
            f"{g['first_token_within_rounding']}/{g['rows']} | {_mark(t['ok'])} {t['max_rel_err']:.1e} "
            f"({t['tolerance']:g}) | {'-' if b is None else _mark(b['ok']) + ' ' + ', '.join(b['backends'])} | "
            f"{'-' if c is None else _mark(c['ok'])} |")
    return lines


def _decode(report: dict, name: str) -> list[str]:
    plain, graph = report.get(name), report.get(f"{name}_graph")
    if plain is None:
        return []
    cfg = plain["config"]
    p, machine = cfg["params"], cfg["machine"]
    where = machine.get("gpu") or machine.get("cpu")
    lines = [f"`{name}`: {Path(p['model']).name}, {p['dtype']}, {where}, prompt {p['prompt_len']}, "
             f"{p['new_tokens']} new tokens, B = {p['batch']}, k = {p['k']}; read bandwidth "
             f"{machine['read_bandwidth_gb_s']:.0f} GB/s", "",
             "| mode | tok/s | decode tok/s | ms/token | weight MB/step | floor ms | GB/s | of floor | "
             "graph ms/token | graph speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, r in plain["results"].items():
        g = (graph or {}).get("results", {}).get(mode)
        g_ms = g["ms_per_token_median"] if g else None
        frac = r.get("floor_fraction")
        wb = r.get("weight_bytes_per_step")
        lines.append(
            f"| {mode} | {_num(r['tokens_per_s'], '.1f')} | {_num(r.get('decode_tokens_per_s'), '.1f')} | "
            f"{_num(r['ms_per_token_median'], '.2f')} | {_num(wb and wb / 1e6, '.0f')} | "
            f"{_num(r.get('floor_ms_per_step'), '.3f')} | {_num(r.get('weight_gb_s'), '.0f')} | "
            f"{'-' if frac is None else f'{100 * frac:.0f}%'} | {_num(g_ms, '.2f')} | "
            f"{_num(g_ms and r['ms_per_token_median'] / g_ms, '.2f')} |")
    return lines


def render(report: dict) -> str:
    head = (f"GPU check on {report['device']}{' (dry run)' if report['dry_run'] else ''}: "
            f"{'all steps passed' if report['ok'] else 'some steps FAILED'}; model "
            f"{report.get('model_dir') or 'none'}"
            f"{' (random weights of its shape)' if report.get('model_random_weights') else ''}")
    parts = [[head], _steps(report), _checks(report), _decode(report, "decode_tiny"), _decode(report, "decode_model")]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="gpu_check.json")
    ap.add_argument("--md", type=Path, default=None, help="also write the tables here")
    args = ap.parse_args(argv)
    text = render(json.loads(args.report.read_text()))
    if args.md is not None:
        args.md.write_text(text)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
