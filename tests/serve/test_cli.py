"""rgd-serve's startup errors: one line naming the problem, exit 2, before anything listens."""
import pytest

from rgd_engine.serve.cli import main


@pytest.mark.parametrize("extra,words", [
    (["--heads", "missing.safetensors"], ["missing.safetensors", "does not exist"]),
    (["--heads", "{token}"], ["holds 'token' heads, not 'sequence' heads"]),
    (["--token-heads", "{seq}"], ["holds 'sequence' heads, not 'token' heads"]),
    (["--heads", "{seq}", "--default-user", "zed"], ["--default-user 'zed' has no head"]),
    (["--max-batch", "0"], ["--max-batch must be >= 1"]),
])
def test_startup_errors(tiny_dirs, bank_files, capsys, extra, words):
    seq, tok = bank_files["ref"]
    args = ["--model", str(tiny_dirs["llama"])] + [a.format(seq=seq, token=tok) for a in extra]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rgd-serve:")]
    assert len(err) == 1 and err[0].startswith("rgd-serve: error: ")
    for w in words:
        assert w in err[0]
