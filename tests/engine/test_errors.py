"""Bad input to the engine and to rgd-generate: one clear error, exit code 2, no traceback, nothing changed.

References are independent of the code under test: the accepted ranges are written out here, the position limit
is established by running the HF model itself past its position table, and JSON output is parsed strictly.
"""
import hashlib
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rgd_engine import (ConfigError, Engine, GenerationConfig, GenerationInputError, HeadBank, ModelLoadError,
                        PromptTooLongError, RGDError)
from rgd_engine.cli import main
from rgd_engine.decoder import Decoder
from rgd_engine.errors import run_cli

PROMPT = "The quick brown"
VOCAB = 320  # tests/tiny_models.make_tokenizer
POSITIONS = 512  # tiny_models: max_position_embeddings / n_positions
PROMPT_TOKENS = 11  # PROMPT in the tiny tokenizer (asserted where it matters)


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (the json module accepts them by default)."""
    def refuse(name):
        raise AssertionError(f"non-JSON constant {name} in output {text!r}")
    return json.loads(text, parse_constant=refuse)


def cli(argv, capsys):
    """Run rgd-generate in-process -> (exit code, stdout, stderr); a traceback on stderr is always a failure."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects a value it cannot parse (exit 2, usage + one error line)
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def error_lines(err: str) -> list[str]:
    """stderr without transformers' weight-loading progress bar (tqdm; not ours to silence)."""
    return [line for line in err.strip().splitlines() if line.strip() and "Loading weights" not in line]


def assert_one_line_error(code, err, *needles):
    assert code == 2, (code, err)
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("rgd-generate: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def bank_file(tiny_dirs, tmp_path_factory):
    bank = HeadBank(64, backbone_id=str(tiny_dirs["llama"]))
    bank.add("alice", torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3, 0.5)
    path = tmp_path_factory.mktemp("bank") / "bank.safetensors"
    bank.save(path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_decoding(monkeypatch):
    """Any call into the decoder fails the test: the error must come before any model work."""
    def boom(*a, **k):
        raise AssertionError("the decoder ran although the input was invalid")
    monkeypatch.setattr(Decoder, "generate", boom)


# -- the cases of the issue, through the CLI -------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e39", "-2e6"])
def test_weight_not_finite_or_huge(tiny_dirs, bank_file, capsys, value):
    before = digest(bank_file)
    code, out, err = cli(["--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "--heads", str(bank_file),
                          "--user", "alice", f"-w={value}", "--json"], capsys)
    assert_one_line_error(code, err, "weight", str(float(value)))
    assert out == "" and digest(bank_file) == before


def test_empty_stop_string(tiny_dirs, capsys):
    code, out, err = cli(["--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "--stop", "\\n", ""], capsys)
    assert_one_line_error(code, err, "stop string 1", "non-empty")


def test_k_above_the_bound_and_above_the_vocabulary(tiny_dirs, capsys, no_decoding):
    code, _, err = cli(["--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "-k", "100000"], capsys)
    assert_one_line_error(code, err, "k must be in [1, 1024]", "100000")
    code, _, err = cli(["--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "-k", "500"], capsys)
    assert_one_line_error(code, err, "k=500", f"{VOCAB} tokens")


def test_non_utf8_prompt_in_process(tiny_dirs, capsys):
    # Python hands undecodable argv bytes over as lone surrogates ('surrogateescape'): b"\xff" -> "\udcff".
    code, _, err = cli(["--model", str(tiny_dirs["llama"]), "--prompt", "ab\udcffc"], capsys)
    assert_one_line_error(code, err, "--prompt is not valid UTF-8", "byte 0xff at character 2")
    code, _, err = cli(["--model", str(tiny_dirs["llama"]), "--prompt", "x", "--stop", "\udce9"], capsys)
    assert_one_line_error(code, err, "stop string 0 is not valid UTF-8", "byte 0xe9")


def test_non_utf8_prompt_bytes_through_the_console_script(tiny_dirs):
    beside = Path(sys.executable).parent / "rgd-generate"
    exe = str(beside) if beside.is_file() else shutil.which("rgd-generate")
    if not exe:
        pytest.skip("rgd-generate is not on PATH (package not pip-installed in this environment)")
    out = subprocess.run([exe, "--model", str(tiny_dirs["llama"]), "--prompt", b"News \xff\xfe:"],
                         capture_output=True, timeout=300)
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 2 and out.stdout == b"", err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "byte 0xff at character 5" in err, err


def test_cuda_device_without_cuda(tiny_dirs, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli(["--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "--device", "cuda"], capsys)
    assert_one_line_error(code, err, "device 'cuda'", "CUDA", "--device cpu")


def test_unknown_device_is_a_model_load_error(tiny_dirs):
    from rgd_engine.models import load_causal_lm

    with pytest.raises(ModelLoadError, match="unknown device 'gpu0'"):
        load_causal_lm(str(tiny_dirs["llama"]), device="gpu0")


def test_heads_directory_is_named(tiny_dirs, tmp_path, capsys):
    code, _, err = cli(["--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "--heads", str(tmp_path),
                        "--user", "alice"], capsys)
    assert_one_line_error(code, err, str(tmp_path), "is a directory")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_with_the_same_exit_code(tiny_dirs, capsys, monkeypatch, how):
    argv = ["--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "-w", "nan"]
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv("RGD_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "GenerationInputError" in err
    assert err.strip().splitlines()[-1].startswith("rgd-generate: error: weight must be a finite number")


def test_too_long_prompt_fails_before_any_work(tiny_dirs, tmp_path, capsys, tiny_tokenizer, no_decoding):
    short = tmp_path / "short"
    shutil.copytree(tiny_dirs["llama"], short)
    cfg = json.loads((short / "config.json").read_text())
    cfg["max_position_embeddings"] = 32
    (short / "config.json").write_text(json.dumps(cfg))
    prompt = "The quick brown fox jumps."
    n = len(tiny_tokenizer(prompt)["input_ids"])
    assert 10 < n < 32
    code, _, err = cli(["--model", str(short), "--prompt", prompt, "--max-new-tokens", str(33 - n)], capsys)
    assert_one_line_error(code, err, "prompt 0", f"has {n} tokens", f"max_new_tokens {33 - n}", "has 32")


def test_json_output_is_strict_json(tiny_dirs, bank_file, capsys):
    code, out, _ = cli(["--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "--heads", str(bank_file),
                        "--user", "alice", "-w", "1e-30", "--max-new-tokens", "2", "--json"], capsys)
    assert code == 0 and strict_json(out)["w"] == 1e-30


# -- the engine API --------------------------------------------------------------------------------------------
def test_position_limit_matches_the_hf_model(tiny_dirs, load, monkeypatch):
    """The rule "prompt + max_new_tokens <= max positions" is exact: the HF GPT-2 itself runs 512 positions and
    fails at 513; the engine decodes at exactly 512 (plain and guided) and refuses 513 up front."""
    lm = load(tiny_dirs["gpt2"])
    hf = lm.hf_model
    with torch.no_grad():
        hf(torch.ones(1, POSITIONS, dtype=torch.int64))
        with pytest.raises(IndexError):
            hf(torch.ones(1, POSITIONS + 1, dtype=torch.int64))
    engine = Engine(lm)
    bank = engine.new_bank()
    bank.add("u", torch.randn(64, generator=torch.Generator().manual_seed(2)))
    ids = engine.encode("The quick brown fox jumps over the lazy dog. " * 60)[:POSITIONS - 5]
    prompt = engine.tokenizer.decode(ids)
    assert engine.encode(prompt) == ids  # the text round-trips, so the engine sees exactly these 507 tokens
    for users in ([None], ["u"]):
        out = engine.generate([prompt], users=users, heads=bank, max_new_tokens=5, ignore_eos=True, k=3)[0]
        assert len(out.token_ids) == 5
    monkeypatch.setattr(Decoder, "generate", lambda *a, **k: pytest.fail("decoder ran"))
    with pytest.raises(PromptTooLongError, match=rf"prompt 0 has {POSITIONS - 5} tokens \+ max_new_tokens 6 = "
                                                 rf"{POSITIONS + 1} positions.*has {POSITIONS}"):
        engine.generate([prompt], max_new_tokens=6)


def test_check_lengths_is_public_and_precise(tiny_dirs, load):
    engine = Engine(load(tiny_dirs["llama"]))
    assert engine.max_positions == POSITIONS
    engine.check_lengths([[5] * 500, [5] * 12], 12)  # 512: fits
    with pytest.raises(PromptTooLongError, match=r"prompt 1 has 501 tokens.* \(2 of 3 prompts are too long\)"):
        engine.check_lengths([[5] * 3, [5] * 501, [5] * 600], 12)
    with pytest.raises(GenerationInputError, match="prompt 1 is empty"):
        engine.check_lengths([[5], []], 4)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(GenerationInputError, match="max_new_tokens"):
            engine.check_lengths([[5]], bad)
    with pytest.raises(PromptTooLongError, match="prompt 0 has 2 tokens"):  # a huge budget is refused, not allocated
        engine.check_lengths([[5, 6]], 10**12)
    assert issubclass(PromptTooLongError, RGDError) and issubclass(PromptTooLongError, ValueError)


def test_logratio_cond_prompt_too_long(tiny_dirs, load, no_decoding):
    engine = Engine(load(tiny_dirs["llama"]))
    profile = "Headline: Stocks rally as inflation cools.\n" * 60
    with pytest.raises(PromptTooLongError, match="cond_prompt 0 has"):
        engine.generate([PROMPT], rule="logratio", cond_prompts=[profile + PROMPT], max_new_tokens=8)


@pytest.mark.parametrize("weights,match", [
    ([1.0, math.nan], r"weights\[1\] must be a finite number"),
    ([math.inf, 1.0], r"weights\[0\] must be a finite number"),
    (torch.tensor([1.0, 3e38]), r"weights\[1\]"),
    ([1.0], "2 prompts but 1 weights"),
    (torch.ones(2, 1), r"shape \(2, 1\)"),
    (["1", 2.0], r"weights\[0\] must be a number, got '1'"),
])
def test_per_row_weights(tiny_dirs, load, bank_file, weights, match, no_decoding):
    from rgd_engine import load_bank

    engine = Engine(load(tiny_dirs["llama"]), heads=load_bank(bank_file))
    with pytest.raises(GenerationInputError, match=match):
        engine.generate([PROMPT, PROMPT], users=["alice", "alice"], weights=weights, max_new_tokens=2)


def test_generation_config_rejects_each_bad_field():
    cases = {"weight": [math.nan, math.inf, 2e6, "1"], "temperature": [math.nan, 0.0, -1.0, 1e-9, math.inf],
             "top_p": [math.nan, 0.0, 1.5], "k": [0, 1025, 2.0], "max_new_tokens": [0, -1, 3.5],
             "top_k": [-1], "seed": [-1, 2**64], "n_samples": [0, 10**6], "block_size": [0],
             "stop": [("",), ("ok", 3), "\n"], "sample": ["yes"], "rule": ["nope"], "cuda_graph": [1]}
    for field, values in cases.items():
        for v in values:
            with pytest.raises(GenerationInputError, match=field if field != "stop" else "stop"):
                GenerationConfig(**{field: v}).validate()
    GenerationConfig(weight=-1e6, temperature=1e-4, top_p=1e-9, k=1024, seed=2**64 - 1).validate()


def test_config_json_is_strict():
    with pytest.raises(ValueError):
        GenerationConfig(weight=math.nan).to_json()
    with pytest.raises(ConfigError, match="not valid JSON"):
        GenerationConfig.from_json("{'k': 3}")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        GenerationConfig.from_json("[1, 2]")


def test_prompt_text_must_be_utf8_str(tiny_dirs, load, no_decoding):
    engine = Engine(load(tiny_dirs["llama"]))
    with pytest.raises(GenerationInputError, match="prompt 1 is not valid UTF-8 text: byte 0x80 at character 1"):
        engine.generate(["fine", "a\udc80"])
    with pytest.raises(GenerationInputError, match="prompt 0 must be a string, got bytes"):
        engine.generate([b"bytes"])


# -- run_cli, the shared CLI wrapper ---------------------------------------------------------------------------
def _raise(err):
    def body():
        raise err
    return body


@pytest.mark.parametrize("err,code,line", [
    (GenerationInputError("bad k"), 2, "tool: error: bad k"),
    (ValueError("first\n  second"), 2, "tool: error: first second"),
    (RGDError(), 2, "tool: error: RGDError"),
    (PermissionError(13, "Permission denied", "/x/y"), 1, "tool: error: [Errno 13] Permission denied: '/x/y'"),
    (KeyboardInterrupt(), 130, "tool: interrupted"),
])
def test_run_cli_codes_and_one_line(capsys, monkeypatch, err, code, line):
    monkeypatch.delenv("RGD_DEBUG", raising=False)
    assert run_cli("tool", _raise(err)) == code
    assert capsys.readouterr().err == line + "\n"


def test_run_cli_passes_bugs_and_results_through(capsys):
    assert run_cli("tool", lambda: None) == 0 and run_cli("tool", lambda: 3) == 3
    with pytest.raises(ZeroDivisionError):  # not user input: a bug keeps its traceback
        run_cli("tool", lambda: 1 / 0)


# -- fuzz of the numeric arguments -----------------------------------------------------------------------------
VALUES = ["nan", "inf", "-inf", "-1", "0", "1e39", "100000", "2.5", "1", "3", "0.5", "1e-9", "-0.0"]


def _expected_failures(args: dict) -> set:
    """Which arguments the documented ranges reject (written out here, independent of config.py)."""
    bad = set()

    def num(s):
        return float(s)

    def is_int(s):
        try:
            int(s)
            return True
        except ValueError:
            return False
    if not is_int(args["-k"]) or not 1 <= int(args["-k"]) <= min(1024, VOCAB):
        bad.add("k")
    if not is_int(args["--max-new-tokens"]) or int(args["--max-new-tokens"]) < 1 \
            or int(args["--max-new-tokens"]) + PROMPT_TOKENS > POSITIONS:
        bad.add("max_new_tokens")
    w = num(args["-w"])
    if not (math.isfinite(w) and abs(w) <= 1e6):
        bad.add("weight")
    t = num(args["--temperature"])
    if not (math.isfinite(t) and t >= 1e-4):
        bad.add("temperature")
    p = num(args["--top-p"])
    if not (0 < p <= 1):
        bad.add("top_p")
    return bad


def test_fuzz_numeric_arguments(tiny_dirs, bank_file, capsys, tiny_tokenizer):
    assert len(tiny_tokenizer(PROMPT)["input_ids"]) == PROMPT_TOKENS
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    before = digest(bank_file)
    outcomes = {0: 0, 2: 0}
    for case in range(24):
        args = {flag: rng.choice(VALUES) for flag in ("-k", "-w", "--temperature", "--top-p", "--max-new-tokens")}
        if rng.random() < 0.5:  # half the cases draw only valid values, so decoding really runs
            args.update({"-k": rng.choice(["1", "3"]), "-w": rng.choice(["0.5", "-1", "2.5", "0"]),
                         "--temperature": rng.choice(["0.5", "1", "2.5"]), "--top-p": rng.choice(["0.5", "1"]),
                         "--max-new-tokens": rng.choice(["1", "3"])})
            if rng.random() < 0.5:
                flag = rng.choice(list(args))
                args[flag] = rng.choice(VALUES)
        sample = rng.random() < 0.5
        argv = ["--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "--heads", str(bank_file), "--user", "alice",
                "--json", "--seed", "1"] + (["--sample"] if sample else [])
        for flag, v in args.items():
            argv.append(f"{flag}={v}")  # "=" so that "-1" is a value, not an option
        bad = _expected_failures(args)
        code, out, err = cli(argv, capsys)
        msg = f"seed {seed} case {case}: {args} sample={sample} expected bad={bad}: exit {code}, stderr {err!r}"
        outcomes[code] = outcomes.get(code, 0) + 1
        if not bad:
            assert code == 0, msg
            got = strict_json(out)
            assert 1 <= len(got["token_ids"]) <= int(args["--max-new-tokens"]) and got["k"] == int(args["-k"]), msg
        else:
            assert code == 2 and out == "", msg
            last = error_lines(err)[-1]
            assert last.startswith("rgd-generate: error:"), msg
            names = {"k": ("k", "-k"), "max_new_tokens": ("max_new_tokens", "--max-new-tokens"),
                     "weight": ("weight", "-w/--weight"), "temperature": ("temperature",), "top_p": ("top_p", "top-p")}
            assert any(n in last for b in bad for n in names[b]), msg
    assert digest(bank_file) == before, f"seed {seed}: the bank file changed"
    assert outcomes[0] and outcomes[2], f"seed {seed}: outcomes {outcomes} (both must occur)"
