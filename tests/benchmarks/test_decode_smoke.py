"""Smoke test of the decode benchmark on tiny random models, and the ARGS baselines against the engine.

The baselines and the engine's reward-guided modes run the same algorithm (greedy ARGS), so with the same head
they must emit the same tokens; the head is strong enough that the reward really changes the output.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the benchmarks package, and tiny_models

from tiny_models import make_tokenizer, save_tiny  # noqa: E402

from benchmarks import decode, decode_harness  # noqa: E402
from benchmarks.baselines import args_kcopy, args_nocache  # noqa: E402

RESULT_FIELDS = ("tokens_per_s", "ms_per_token_median", "ms_per_token_p10", "ms_per_token_p90", "peak_mem_mb",
                 "kv_cache_mb", "tokens")
# Every mode but rgd-mixed splits off the prefill. decode_tokens_per_s is None when noise makes the 1-token call
# slower than the full one, so only its presence is checked.
PREFILL_SPLIT = ("first_token_ms_median",)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    tok = make_tokenizer()
    return {"root": root, "policy": save_tiny(root / "policy", "llama", seed=1, tokenizer=tok),
            "rm": save_tiny(root / "rm", "llama", seed=3, hidden=48, tokenizer=tok)}


@pytest.fixture(scope="module")
def report(tiny):
    out = tiny["root"] / "out" / "decode.json"
    decode.main(["--model", str(tiny["policy"]), "--reward-model", str(tiny["rm"]), "--prompt-len", "20",
                 "--new-tokens", "4", "--nocache-new-tokens", "4", "-k", "4", "-w", "2.0", "--repeats", "1",
                 "--mixed-batch", "3", "--swap-users", "1000", "--swap-repeats", "20", "--scaling",
                 "--scaling-k", "1", "4", "--scaling-batch", "1", "2", "--context-len", "10", "--token-rank", "3",
                 "--bon-samples", "3", "--bon-block-size", "3", "--json", str(out)])
    return json.loads(out.read_text()), out


def test_json_schema_and_side_files(report):
    rep, out = report
    cfg = rep["config"]
    for key in ("params", "machine", "torch", "transformers", "backend", "git_hash", "date", "command"):
        assert key in cfg, key
    assert {"cpu", "cores", "load_average_start", "load_average_end"} <= set(cfg["machine"])
    assert cfg["params"]["new_tokens"] == 4 and cfg["params"]["k"] == 4
    assert cfg["backend"] in ("torch", "cpp")
    assert set(rep["results"]) == set(decode.MODES)
    assert set(rep["rule_ratios"]) == {f"{m}_vs_{b}" for m in decode.RULE_MODES for b in decode.RULE_BASES}
    r = rep["results"]
    # KV: token adds no cache; logratio one more cache of context + prompt; bon-block N rows per row
    assert r["rgd-token"]["kv_cache_mb"] == r["engine-greedy"]["kv_cache_mb"]
    assert r["rgd-logratio"]["kv_cache_mb"] > 2 * r["engine-greedy"]["kv_cache_mb"]
    assert r["rgd-bon-block"]["kv_cache_mb"] == pytest.approx(3 * r["engine-greedy"]["kv_cache_mb"])
    for mode, r in rep["results"].items():
        if mode == "head-swap":
            continue
        for field in RESULT_FIELDS + (PREFILL_SPLIT if mode != "rgd-mixed" else ()):
            assert r[field] is not None, (mode, field)
        assert "decode_tokens_per_s" in r
        assert r["tokens_per_s"] > 0 and r["kv_cache_mb"] > 0 and r["peak_mem_mb"] > 0
        assert r["ms_per_token_p10"] <= r["ms_per_token_median"] <= r["ms_per_token_p90"]
        assert all(len(row) == r["new_tokens"] for row in r["tokens"])
    assert rep["results"]["rgd-mixed"]["single_user_tokens_per_s"] > 0
    has_rate = rep["results"]["engine-greedy"]["decode_tokens_per_s"]
    floor = {"engine_greedy_floor_fraction_float32"} if has_rate else set()
    assert set(rep["ratios"]) == {t[0] for t in decode.TARGETS} | floor
    for e in rep["ratios"].values():
        assert {"value", "target", "op", "pass"} <= set(e)
    assert [(r["k"], r["batch"]) for r in rep["scaling"]] == [(1, 1), (4, 1), (4, 2)]
    csv_lines = out.with_suffix(".csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(decode.MODES) + len(rep["scaling"])
    assert out.with_suffix(".png").stat().st_size > 0


def test_cross_mode_checks(report):
    rep, _ = report
    assert rep["checks"] == {"engine-greedy == hf-greedy": True, "args-kcopy == rgd-separate": True,
                             "args-nocache == rgd-separate (prefix)": True, "kv formula == measured": True,
                             "rgd-mixed row 0 == single-user row 0": True}
    assert rep["results"]["head-swap"]["next_step_uses_new_head"] is True
    res = rep["results"]
    # The reward steered both guided modes, so agreeing with the baselines is not agreeing with greedy.
    assert res["rgd-shared"]["tokens"] != res["engine-greedy"]["tokens"]
    assert res["rgd-separate"]["tokens"] != res["engine-greedy"]["tokens"]


@pytest.mark.parametrize("separate", [False, True], ids=["shared", "separate"])
@pytest.mark.parametrize("baseline", [args_kcopy, args_nocache], ids=["kcopy", "nocache"])
def test_baselines_equal_engine(tiny, separate, baseline):
    """Batch of 2, 8 steps: the baseline with the engine's head emits the engine's tokens."""
    from rgd_engine import Engine, GenerationConfig
    from rgd_engine.models import load_causal_lm

    policy = load_causal_lm(str(tiny["policy"]))
    engine = Engine(policy, reward=load_causal_lm(str(tiny["rm"])) if separate else None)
    engine.decoder.eos_ids = set()  # the baselines have no EOS: both run the full budget
    bank = decode_harness.random_bank(engine, 1, seed=5)
    prompts = decode_harness.build_prompts(engine.tokenizer, 2, 16)
    gens = engine.decoder.generate(prompts, GenerationConfig(max_new_tokens=8, k=5), bank=bank,
                                   slots=bank.slots(["u0", "u0"]), weights=torch.tensor([2.0, 2.0]))
    w, b = bank.head("u0")
    out = baseline(policy.hf_model, engine.backbone.base, w, b, torch.tensor(prompts), 8, 5, 2.0)
    assert out.tokens.tolist() == [g.token_ids for g in gens]
    plain = engine.decoder.generate(prompts, GenerationConfig(max_new_tokens=8))
    assert [g.token_ids for g in gens] != [g.token_ids for g in plain]


def _hf_param_bytes(path, exclude) -> int:
    """Bytes of a checkpoint's tensors whose names contain none of `exclude` (read from the saved files)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if not any(x in name for x in exclude):
                t = f.get_tensor(name)
                total += t.numel() * t.element_size()
    return total


def test_weight_bytes_per_step_and_achieved_bandwidth(report, tiny):
    rep, _ = report
    bw = rep["config"]["machine"]["read_bandwidth_gb_s"]
    assert 0.1 < bw < 10_000
    policy = _hf_param_bytes(tiny["policy"], ("embed_tokens",))  # untied: every weight but the embedding
    rm_trunk = _hf_param_bytes(tiny["rm"], ("embed_tokens", "lm_head"))
    r = rep["results"]
    assert r["engine-greedy"]["weight_bytes_per_step"] == r["hf-greedy"]["weight_bytes_per_step"] == policy
    assert r["rgd-shared"]["weight_bytes_per_step"] == policy
    assert r["rgd-logratio"]["weight_bytes_per_step"] == 2 * policy
    assert r["rgd-separate"]["weight_bytes_per_step"] == policy + rm_trunk
    for mode, e in r.items():
        if mode == "head-swap":
            assert "weight_bytes_per_step" not in e
            continue
        assert e["floor_ms_per_step"] == pytest.approx(1000 * e["weight_bytes_per_step"] / (bw * 1e9))
        if e["decode_tokens_per_s"]:
            step_s = e["batch"] / e["decode_tokens_per_s"]
            assert e["weight_gb_s"] == pytest.approx(e["weight_bytes_per_step"] / step_s / 1e9)
            assert e["floor_fraction"] == pytest.approx(e["weight_gb_s"] / bw)


def test_baseline_comparison(report, tiny):
    rep, out = report
    new = out.with_name("again.json")
    again = decode.main(["--model", str(tiny["policy"]), "--modes", "engine-greedy", "--prompt-len", "20",
                         "--new-tokens", "4", "--repeats", "1", "--baseline", str(out), "--json", str(new)])
    vs = again["vs_baseline"]
    base = rep["results"]
    got = again["results"]["engine-greedy"]["tokens_per_s"]
    assert vs["engine_greedy_vs_baseline_engine_greedy"]["value"] == pytest.approx(
        got / base["engine-greedy"]["tokens_per_s"])
    assert vs["engine_greedy_vs_baseline_hf_greedy"]["value"] == pytest.approx(got / base["hf-greedy"]["tokens_per_s"])
    assert all("target" not in e for e in vs.values())  # fp32 vs fp32: the bf16 targets do not apply
