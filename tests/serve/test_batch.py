"""Lanes (continuous batches) against Engine.generate of each request alone: rows join at different steps with
their own prefill, leave when done, differ in prompt, user, w, length and stop strings; both KV storages (fast
Llama forward, HF GPT-2 forward) and a separate reward backbone."""
import pytest
import torch
from serve_helpers import USERS, make_engine, write_banks

from rgd_engine import GenerationConfig
from rgd_engine.heads import load_bank
from rgd_engine.serve.batch import Lane, LaneKey, RowSpec

PROMPTS = ["The quick brown", "Reward guided decoding steers a language model", "Breaking news:",
           "How to cook pasta: boil water, add salt", "Scientists discover", "Headline: Stocks rally as"]


def _run_lane(lane, jobs, join_every=2):
    """Admit jobs (tag, spec) two at first, then one every `join_every` steps; -> tag -> generated ids."""
    out, pending, t = {}, list(jobs), 0
    lane.admit(pending[:2])
    pending = pending[2:]
    while len(lane) or pending:
        if pending and t % join_every == 0:
            lane.admit(pending[:1])
            pending = pending[1:]
        if len(lane):
            for ev in lane.step():
                if ev.done:
                    assert ev.row.tag not in out
                    out[ev.row.tag] = (ev.row.stopper.ids, ev.row.stopper.finish_reason or "length")
        t += 1
    return out


@pytest.fixture(scope="module")
def engines(tiny_dirs, tmp_path_factory):
    """(engine, sequence bank file, token bank file) per model setup, loaded once."""
    cache = {}

    def get(arch, separate):
        if (arch, separate) not in cache:
            engine = make_engine(tiny_dirs[arch], tiny_dirs["rm"] if separate else None)
            cache[arch, separate] = (engine, *write_banks(engine, tmp_path_factory.mktemp(f"{arch}-{separate}")))
        return cache[arch, separate]

    return get


@pytest.mark.parametrize("arch,separate,rule", [
    ("llama", False, "plain"), ("llama", False, "args"), ("llama", False, "token"),
    ("gpt2", False, "plain"), ("gpt2", False, "args"), ("gpt2", False, "token"),
    ("llama", True, "args"), ("llama", True, "token")])  # a plain lane never reads the reward backbone
def test_lane_rows_equal_solo_generate(engines, arch, separate, rule):
    engine, seq_path, tok_path = engines(arch, separate)
    bank = None if rule == "plain" else load_bank(seq_path if rule == "args" else tok_path)
    k = 1 if rule == "plain" else 4
    lane = Lane(engine.decoder, LaneKey(rule, k))
    jobs, refs = [], {}
    for i, prompt in enumerate(PROMPTS):
        user, w = USERS[i], [0.5, 1.0, 2.0, 3.0][i % 4]
        stop = ("e",) if i == 4 else ()
        ignore_eos = i % 2 == 0
        n = 4 + 3 * i
        head = None if bank is None else {name: t[bank.slot(user)].clone() for name, t in bank.tensors.items()}
        jobs.append((i, RowSpec(engine.encode(prompt), n, stop, ignore_eos, w, head)))
        cfg = GenerationConfig(max_new_tokens=n, stop=stop, k=k, weight=w, rule="args" if rule == "plain" else rule,
                               ignore_eos=ignore_eos)
        ref = engine.generate([prompt], users=[user] if bank is not None else None, heads=bank, config=cfg)[0]
        refs[i] = (ref.token_ids, ref.finish_reason)
    out = _run_lane(lane, jobs)
    assert out == refs
    assert len(lane) == 0 and lane.streams == {}


def test_lane_cache_is_trimmed_when_rows_leave(llama_engine):
    """A lane's cache holds what its rows need: after the long-prompt row leaves, the slots only it used go."""
    lane = Lane(llama_engine.decoder, LaneKey("plain"))
    long_ids = llama_engine.encode(" ".join(PROMPTS))
    lane.admit([("long", RowSpec(long_ids, 2, ignore_eos=True)), ("short", RowSpec([5, 6], 20, ignore_eos=True))])
    assert lane.streams["policy"].cache.length == len(long_ids)
    lane.step()
    lane.step()  # "long" is done after its 2nd token
    assert [r.tag for r in lane.rows] == ["short"]
    assert lane.streams["policy"].cache.length == 4  # 2 prompt tokens + 2 generated, no leftover left padding


def test_cancelled_rows_leave_at_the_next_boundary(llama_engine):
    lane = Lane(llama_engine.decoder, LaneKey("plain"))
    rows = lane.admit([(i, RowSpec([5 + i, 6, 7], 50, ignore_eos=True)) for i in range(3)])
    lane.step()
    rows[1].cancelled = True
    assert lane.drop_cancelled() == [rows[1]]
    assert [r.tag for r in lane.rows] == [0, 2]
    lane.step()
    assert all(len(r.stopper.ids) == 2 for r in lane.rows)


def test_lane_refuses_rows_of_the_wrong_kind(llama_engine):
    with pytest.raises(ValueError, match="needs rows with a head"):
        Lane(llama_engine.decoder, LaneKey("args", 4)).admit([(0, RowSpec([5, 6], 3))])
    with pytest.raises(ValueError, match="unknown lane rule"):
        Lane(llama_engine.decoder, LaneKey("logratio", 4))
    head = {"W": torch.zeros(llama_engine.hidden_size), "b": torch.zeros(())}
    with pytest.raises(ValueError, match="needs rows without a head"):
        Lane(llama_engine.decoder, LaneKey("plain")).admit([(0, RowSpec([5, 6], 3, weight=1.0, head=head))])
