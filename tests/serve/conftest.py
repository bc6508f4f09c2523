import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tiny_models
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/serve/ for serve_helpers

from serve_helpers import ADMIN, CHAT_TEMPLATE, Reference, make_engine, running_server, write_banks  # noqa: E402
from tiny_models import make_tokenizer, save_tiny_trio  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tiny_tokenizer):
    """HF directories of tiny random models: llama (fast forward), gpt2 (HF forward), a second llama (separate RM)."""
    return save_tiny_trio(tmp_path_factory.mktemp("tiny-serve"), tiny_tokenizer)


@pytest.fixture(scope="session")
def llama_engine(tiny_dirs):
    return make_engine(tiny_dirs["llama"])


@pytest.fixture(scope="session")
def bank_files(llama_engine, tmp_path_factory):
    """The banks the reference runs read (never modified) and the server's copy (which it may save over)."""
    ref_seq, ref_tok = write_banks(llama_engine, tmp_path_factory.mktemp("banks-ref"))
    srv = tmp_path_factory.mktemp("banks-srv")
    shutil.copy(ref_seq, srv / ref_seq.name)
    shutil.copy(ref_tok, srv / ref_tok.name)
    return {"ref": (ref_seq, ref_tok), "server": (srv / ref_seq.name, srv / ref_tok.name)}


@pytest.fixture(scope="session")
def server(tiny_dirs, bank_files):
    seq, tok = bank_files["server"]
    with running_server("--model", str(tiny_dirs["llama"]), "--served-model-name", "tiny", "--heads", str(seq),
                        "--token-heads", str(tok), "--admin-token", ADMIN, "--max-batch", "16",
                        "--max-queue", "32") as (url, state):
        yield url, state


@pytest.fixture(scope="session")
def reference(tiny_dirs, bank_files):
    return Reference(make_engine(tiny_dirs["llama"]), *bank_files["ref"])
