"""benchmarks/dtype_ratio.py: every round times every arm, and each ratio is taken within its round (recomputed here
from the rounds' timings); the summary's median, range and verdict follow from those ratios."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import dtype_ratio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tiny_models
from tiny_models import make_tokenizer, save_tiny  # noqa: E402


def test_ratios_are_taken_within_each_round(tmp_path):
    model = save_tiny(tmp_path / "llama", "llama", seed=1, tokenizer=make_tokenizer())
    out = tmp_path / "ratio.json"
    report = dtype_ratio.main(["--model", str(model), "--rounds", "3", "--prompt-len", "12", "--new-tokens", "4",
                               "--repeats", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    md = out.with_suffix(".md").read_text().splitlines()
    assert [line.split(" |")[0] for line in md if line[:3] in ("| 1", "| 2", "| 3")] == ["| 1", "| 2", "| 3"]
    rounds = report["rounds"]
    assert len(rounds) == 3 and all(set(r) == set(dtype_ratio.ARMS) for r in rounds)
    for r in rounds:
        for arm in r.values():
            assert arm["tokens_per_s"] == pytest.approx(4 / arm["seconds_full"])
            assert arm["decode_tokens_per_s"] == pytest.approx(3 / (arm["seconds_full"] - arm["seconds_first"]))
    want = [r["engine-greedy bfloat16"]["seconds_full"] ** -1 / r["engine-greedy float32"]["seconds_full"] ** -1
            for r in rounds]
    s = report["summary"]["bf16_vs_fp32"]
    assert s["ratios"] == pytest.approx(want)
    assert s["median"] == pytest.approx(float(np.median(want))) and s["min"] == pytest.approx(min(want))
    assert s["passes"] == (s["median"] >= 2.0)
    hf = report["summary"]["bf16_vs_hf_fp32_decode_only"]
    assert hf["ratios"] == pytest.approx([r["engine-greedy bfloat16"]["decode_tokens_per_s"]
                                          / r["hf-greedy float32"]["decode_tokens_per_s"] for r in rounds])
