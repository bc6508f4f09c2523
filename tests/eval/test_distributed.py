"""`rgd-eval run` on several processes (torchrun, gloo) and in shards (--shard i/n), against the same study run as
one process, on the tests' tiny model.

Every run uses one thread per process (OMP_NUM_THREADS=1 for the torchrun workers, torch.set_num_threads(1) for
the runs inside this process), so equal inputs give bit-equal outputs and results.json must be equal up to the
timing and process-count fields. "Each chunk written once" is checked from the cache files themselves: their
names (chunk keys) equal the one-process run's, the chunks computed over all ranks add up to the files, and a file
written by an earlier process keeps its inode and mtime (an atomic rewrite would replace both).
"""
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tiny_models

from tiny_models import make_tokenizer, save_tiny  # noqa: E402

from rgd_eval.distributed import Workers, chunk_offset, owned_chunks  # noqa: E402
from rgd_eval.stages import Stage, StageCache, key_hash, read_record  # noqa: E402

# Every rule, one method each, small batches (many chunks to share out), few tokens.
ARGS = ["--dtype", "float32", "--users", "2", "--max-profile-pairs", "3", "--min-profile-pairs", "2", "--weights", "0,1", "--gen-weights",
        "1", "-k", "3", "--max-new-tokens", "4", "--n-boot", "20", "--n-perm", "20", "--batch-size", "2",
        "--methods", "per-user", "--token-methods", "token-global", "--bon-methods", "per-user", "--bon-samples",
        "2", "--bon-block-size", "2"]
VOLATILE = ("elapsed_s", "output_dir", "stage_seconds", "cache", "processes")
TORCHRUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from rgd_eval.lamp import DATA_DIR

    news = [json.loads(line) for line in (DATA_DIR / "news_category_v3_lamp4_subset.jsonl").read_text().splitlines()]
    tok = make_tokenizer(vocab_size=3000, extra_corpus=[r["headline"] + " " + r["short_description"] for r in news])
    return save_tiny(tmp_path_factory.mktemp("m") / "llama", "llama", seed=5, tokenizer=tok)


@contextmanager
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def run_here(model, out, *extra) -> int:
    from rgd_eval.cli import main

    with one_thread():
        return main(["run", "--model", str(model), "--output-dir", str(out), *ARGS, *extra])


def _worker_env(tmp_path) -> dict:
    """Environment of the torchrun workers: this process's rgd_eval and rgd_engine (conftest.py may have loaded
    rgd_eval from the eval/ folder, which `-m rgd_eval` cannot import by that name: link it)."""
    import rgd_engine
    import rgd_eval

    pkg = Path(rgd_eval.__file__).parent
    if pkg.name != "rgd_eval":
        link = tmp_path / "pkgs" / "rgd_eval"
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(pkg.resolve(), target_is_directory=True)
        pkg = link
    paths = [str(pkg.parent), str(Path(rgd_engine.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1"}


def torchrun(model, out, tmp_path, entry=("-m", "rgd_eval")) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *entry,
           "run", "--model", str(model), "--output-dir", str(out), *ARGS]
    return subprocess.run(cmd, env=_worker_env(tmp_path), capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)


def comparable(out: Path) -> dict:
    r = json.loads((out / "results.json").read_text())
    for key in VOLATILE:
        r["config"].pop(key)
    return r


def chunk_files(out: Path) -> dict[str, tuple[int, int]]:
    """cache/<stage>/<key> -> (inode, mtime_ns) of every chunk file (not atomic writes' leftover temp files)."""
    root = out / "cache"
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def assert_untouched(before: dict, after: dict):
    assert {k: after.get(k) for k in before} == before  # no earlier chunk file was rewritten


@pytest.fixture(scope="module")
def solo(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("solo")
    assert run_here(tiny_model, out) == 0
    return out


# ---- the ownership rule -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("n_chunks", [0, 1, 2, 5, 16, 131])
def test_every_chunk_has_exactly_one_owner_and_shares_differ_by_at_most_one(n_chunks, world):
    for offset in (0, 1, 5, chunk_offset("ffffffff00"), chunk_offset(key_hash({"any": "key"}))):
        shares = [owned_chunks(n_chunks, r, world, offset) for r in range(world)]
        owners = sorted(j for share in shares for j in share)
        assert owners == list(range(n_chunks))  # each chunk once, none left out
        sizes = [len(s) for s in shares]
        assert max(sizes) - min(sizes) <= 1


def test_small_calls_are_spread_over_workers():
    # one-chunk calls (a generation system of one batch): the owner follows the chunk's key, not always rank 0
    assert {r for i in range(40) for r in range(4)
            if owned_chunks(1, r, 4, chunk_offset(key_hash({"system": i})))} == {0, 1, 2, 3}


def test_device_of_a_rank():
    assert Workers(mode="torchrun", rank=5, world=8, local_rank=1, complete=False).device("cuda") == "cuda:1"
    assert Workers(mode="torchrun", rank=5, world=8, local_rank=1, complete=False).device("cpu") == "cpu"
    assert Workers().device("cuda") == "cuda"


def _cache(tmp_path, workers):
    import types

    return StageCache(tmp_path, types.SimpleNamespace(model="m"), workers)


@pytest.mark.parametrize("terminal", [False, True])
def test_shards_compute_disjoint_chunks_and_a_plain_run_merges(tmp_path, terminal):
    from rgd_eval.distributed import ShardPending

    stage = Stage("demo", ("model",), "a test stage", terminal=terminal)
    items = list(range(23))
    calls = []

    def compute(chunk):
        calls.append(tuple(chunk))
        return [x * x for x in chunk]

    every = [tuple(items[j:j + 2]) for j in range(0, len(items), 2)]

    def shard(i):
        return _cache(tmp_path, Workers(mode="shard", rank=i, world=3, complete=False))

    owned = []
    for i in range(3):
        before = len(calls)
        try:
            got = shard(i).map_chunks(stage, items, 2, lambda c: {"items": c}, compute)
        except ShardPending as e:
            assert not terminal and i < 2 and f"shard {i}/3" in str(e)
        else:
            # terminal: its own chunks only; otherwise the last shard finds every chunk and returns them all
            assert got == [[x * x for x in c] for c in (calls[before:] if terminal else every)]
        owned.append(calls[before:])
    assert sorted(c for o in owned for c in o) == every  # disjoint shares that cover every chunk
    assert all(owned)  # every shard had a share
    calls.clear()
    assert _cache(tmp_path, None).map_chunks(stage, items, 2, lambda c: {"items": c}, compute) == \
        [[x * x for x in c] for c in every]
    assert calls == []  # the plain run computes nothing


# ---- the study --------------------------------------------------------------------------------------------------

def test_torchrun_two_ranks_equals_one_process(solo, tiny_model, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(tiny_model, out, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert comparable(out) == comparable(solo)
    files = chunk_files(out)
    assert set(files) == set(chunk_files(solo))  # the same chunk keys, whoever computed them
    res = json.loads((out / "results.json").read_text())["config"]
    assert res["processes"] == 2
    assert sum(res["cache"]["computed"].values()) == len(files)  # over both ranks: each chunk computed once
    rank1 = (out / "logs" / "rank-1.log").read_text()
    n1 = rank1.count(" computed in ")
    assert 0 < n1 < len(files)  # rank 1 did a share, not everything
    assert proc.stdout.count(f"wrote {out / 'results.json'}") == 1  # by rank 0 alone
    assert_left_after_rank0(out)


def assert_left_after_rank0(out: Path):
    """Rank 1 exited only after rank 0 had written results.json (Workers.finish): its log's last line says so,
    stamped no earlier than the file (asctime has ms resolution: 10 ms of slack)."""
    last = (out / "logs" / "rank-1.log").read_text().splitlines()[-1]
    assert last.endswith("rank 0 has written the outputs; leaving"), last
    stamp = datetime.strptime(last[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert stamp >= (out / "results.json").stat().st_mtime - 0.01, (last, (out / "results.json").stat().st_mtime)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launchers(cmd: list[str], env: dict, n: int, logs: Path, timeout: float) -> list[tuple[str, str]]:
    """Start n copies of a torchrun command at once; return each one's (stdout, stderr) once all have exited 0.

    As soon as one exits with an error the others are killed: torch elastic would keep them in its 300 s exit
    barrier waiting for the failed one. Then, or past `timeout`, the test fails with what each launcher wrote.
    Output goes to files under `logs` (a pipe nobody reads while we poll could fill and block a launcher)."""
    logs.mkdir()
    files = [(logs / f"launcher-{i}.out", logs / f"launcher-{i}.err") for i in range(n)]
    procs = []
    for out, err in files:
        with open(out, "w") as fo, open(err, "w") as fe:
            procs.append(subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, text=True))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if None not in codes or any(codes):  # all exited, or one failed
            break
        time.sleep(0.2)
    running = [p.poll() is None for p in procs]
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    outs = [(out.read_text(), err.read_text()) for out, err in files]
    if any(running) or any(p.returncode for p in procs):
        failed = any(p.returncode for p, r in zip(procs, running) if not r)
        why = "a launcher failed" if failed else f"launchers still running after {timeout:.0f} s"
        pytest.fail(f"{why}:\n" + "\n".join(
            f"--- launcher {i}: returncode {p.returncode}{' (killed)' if r else ''}\nstdout: {o[-1500:]}\n"
            f"stderr: {e[-3000:]}" for i, (p, r, (o, e)) in enumerate(zip(procs, running, outs))))
    return outs


def test_two_nodes_with_c10d_rendezvous_equal_one_process(solo, tiny_model, tmp_path):
    """README's multi-node recipe, both "nodes" on this host: two torchrun launchers (--nnodes 2, one process
    each) meet at a c10d rendezvous and share one run folder. Each worker has LOCAL_RANK 0 and a distinct RANK."""
    out, port = tmp_path / "run", _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
           "-m", "rgd_eval", "run", "--model", str(tiny_model), "--output-dir", str(out), *ARGS]
    outs = run_launchers(cmd, _worker_env(tmp_path), 2, tmp_path / "launchers", timeout=TORCHRUN_TIMEOUT_S)
    assert comparable(out) == comparable(solo)
    res = json.loads((out / "results.json").read_text())["config"]
    assert res["processes"] == 2
    assert sum(res["cache"]["computed"].values()) == len(chunk_files(out))  # each chunk computed once
    assert (out / "logs" / "rank-1.log").read_text().count(" computed in ") > 0  # the second node did a share
    assert sum(o.count(f"wrote {out / 'results.json'}") for o, _ in outs) == 1  # by global rank 0 alone
    assert_left_after_rank0(out)


def test_shards_then_a_plain_run_equal_one_process(solo, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_here(tiny_model, out, "--shard", "0/2") == 0
    assert "shard 0/2 stops at stage 'negatives'" in capsys.readouterr().out
    assert not (out / "results.json").exists()
    first = chunk_files(out)
    assert 0 < len(first) < len(chunk_files(solo))
    assert run_here(tiny_model, out, "--shard", "1/2") == 0
    assert "shard 1/2" in capsys.readouterr().out
    second = chunk_files(out)
    assert_untouched(first, second)
    assert len(second) > len(first) and not (out / "results.json").exists()
    assert run_here(tiny_model, out) == 0
    assert comparable(out) == comparable(solo)
    final = chunk_files(out)
    assert_untouched(second, final)
    assert set(final) == set(chunk_files(solo))
    computed = json.loads((out / "results.json").read_text())["config"]["cache"]["computed"]
    assert "negatives" not in computed  # the shards computed every negative between them
    assert sum(computed.values()) == len(final) - len(second)


def test_a_rank_killed_mid_stage_leaves_complete_chunks_and_a_rerun_finishes(solo, tiny_model, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(tiny_model, out, tmp_path, entry=(str(Path(__file__).with_name("dist_crash_run.py")),))
    assert proc.returncode != 0 and not (out / "results.json").exists(), proc.stderr[-3000:]
    left = chunk_files(out)
    guided = [k for k in left if k.startswith("generation-guided/")]
    assert 0 < len(guided) < sum(k.startswith("generation-guided/") for k in chunk_files(solo))  # died mid-stage
    for name in left:  # only complete, valid chunk files (read_record raises on a truncated or corrupt one)
        read_record(out / "cache" / name, "torch" if name.endswith(".pt") else "json")
    assert run_here(tiny_model, out) == 0  # rerun with another N
    assert comparable(out) == comparable(solo)
    assert_untouched(left, chunk_files(out))


@pytest.mark.parametrize("bad", ["3/2", "abc", "1/0", "2", "1/2/3", "a/2"])
def test_bad_shard_is_a_one_line_error_before_any_work(tiny_model, tmp_path, capsys, bad):
    out = tmp_path / "o"
    assert run_here(tiny_model, out, "--shard", bad) == 2
    err = capsys.readouterr().err
    assert "--shard" in err and repr(bad) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_shard_under_torchrun_is_a_one_line_error(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "o"
    assert run_here(tiny_model, out, "--shard", "0/2") == 2
    err = capsys.readouterr().err
    assert "--shard 0/2 cannot run under torchrun" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
