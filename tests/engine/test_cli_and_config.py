import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rgd_engine import EngineConfig, GenerationConfig, HeadBank
from rgd_engine.cli import main


def test_configs_round_trip_json():
    e = EngineConfig(model="m", reward_model="r", heads="h.safetensors", device="cpu", dtype="bfloat16")
    assert EngineConfig.from_json(e.to_json()) == e
    g = GenerationConfig(max_new_tokens=5, stop=("\n", "."), k=3, weight=0.25, sample=True, seed=4)
    assert GenerationConfig.from_json(g.to_json()) == g


def test_cli_json_plain_and_guided(tiny_dirs, capsys, tmp_path):
    bank = HeadBank(64, backbone_id=str(tiny_dirs["llama"]))
    bank.add("alice", torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3)
    bank_path = tmp_path / "bank.safetensors"
    bank.save(bank_path)
    base = ["--model", str(tiny_dirs["llama"]), "--prompt", "The quick brown", "--max-new-tokens", "6"]
    assert main(base + ["--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(base + ["--json", "--heads", str(bank_path), "--user", "alice", "-k", "5", "-w", "2"]) == 0
    guided = json.loads(capsys.readouterr().out)
    assert guided["user"] == "alice" and guided["k"] == 5 and guided["w"] == 2.0
    assert len(plain["token_ids"]) == 6 and plain["token_ids"] != guided["token_ids"]
    assert main(base) == 0
    assert capsys.readouterr().out == plain["text"] + "\n"
    for extra in ([], ["--heads", str(bank_path), "--user", "alice", "-k", "5", "-w", "2"]):
        assert main(base + ["--json", "--cuda-graph"] + extra) == 0  # the static step, on CPU without a graph
        assert json.loads(capsys.readouterr().out)["token_ids"] == (guided if extra else plain)["token_ids"]
    assert main(base + ["--cuda-graph", "--sample", "--seed", "0"]) == 2
    assert "cuda_graph: only greedy steps" in capsys.readouterr().err


def test_cli_errors_name_the_problem(tiny_dirs, capsys, tmp_path):
    assert main(["--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "missing" in capsys.readouterr().err
    bank = HeadBank(64)
    bank.add("alice", torch.zeros(64))
    bank.save(tmp_path / "b.safetensors")
    assert main(["--model", str(tiny_dirs["llama"]), "--prompt", "x", "--heads", str(tmp_path / "b.safetensors"),
                 "--user", "bob"]) == 2
    assert "unknown user 'bob'" in capsys.readouterr().err
    assert main(["--model", str(tiny_dirs["llama"]), "--prompt", "x", "--user", "bob"]) == 2


def test_console_script_is_installed(tiny_dirs):
    beside = Path(sys.executable).parent / "rgd-generate"  # the venv's scripts folder, even when not on PATH
    exe = str(beside) if beside.is_file() else shutil.which("rgd-generate")
    if not exe:
        pytest.skip("rgd-generate is not on PATH (package not pip-installed in this environment)")
    out = subprocess.run([exe, "--model", str(tiny_dirs["gpt2"]), "--prompt", "News:", "--max-new-tokens", "3",
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["token_ids"]) == 3


def test_cli_stop_accepts_backslash_escapes():
    from rgd_engine.cli import build_parser

    args = build_parser().parse_args(["--prompt", "x", "--stop", "\\n", ".", "a\\tb", "é\\n"])
    assert args.stop == ["\n", ".", "a\tb", "é\n"]


def test_cli_rules_token_logratio_bon_block(tiny_dirs, capsys, tmp_path):
    from rgd_engine import Engine, TokenHeadBank
    from rgd_engine.models import load_causal_lm

    g = torch.Generator().manual_seed(1)
    tb = TokenHeadBank(64, rank=2, backbone_id=str(tiny_dirs["llama"]))
    tb.add("alice", torch.randn(2, 64, generator=g) * 2, torch.randn(2, 64, generator=g) * 2)
    tb.save(tmp_path / "tok.safetensors")
    sb = HeadBank(64)
    sb.add("alice", torch.randn(64, generator=g) * 3)
    sb.save(tmp_path / "seq.safetensors")
    base = ["--model", str(tiny_dirs["llama"]), "--prompt", "The quick brown", "--max-new-tokens", "6", "--json"]
    engine = Engine(load_causal_lm(str(tiny_dirs["llama"])))
    runs = {
        "token": (["--rule", "token", "--heads", str(tmp_path / "tok.safetensors"), "--user", "alice", "-w", "2"],
                  dict(rule="token", users=["alice"], heads=tb, weight=2.0)),
        "logratio": (["--rule", "logratio", "--context", "Foxes:\\n", "-w", "0.5"],
                     dict(rule="logratio", cond_prompts=["Foxes:\nThe quick brown"], weight=0.5)),
        "bon-block": (["--rule", "bon-block", "--heads", str(tmp_path / "seq.safetensors"), "--user", "alice",
                       "--samples", "3", "--block-size", "2", "--seed", "5"],
                      dict(rule="bon-block", users=["alice"], heads=sb, n_samples=3, block_size=2, seed=5)),
    }
    for rule, (argv, api) in runs.items():
        assert main(base + argv) == 0, rule
        out = json.loads(capsys.readouterr().out)
        want = engine.generate(["The quick brown"], max_new_tokens=6, **api)[0]
        assert out["rule"] == rule and out["token_ids"] == want.token_ids, rule
    assert main(base + ["--rule", "logratio"]) == 2
    assert "--context" in capsys.readouterr().err
