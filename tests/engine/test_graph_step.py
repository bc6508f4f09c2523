"""The static decode steps that a CUDA graph replays (rgd_engine/graph_step.py), run on CPU without a graph:
- they decode what the default step decodes (tokens equal; per-step scores to fp32 rounding), also when rows
  finish and leave the batch, with stop strings and host blocks of any size;
- they are capturable: every step after the first dispatches the same ops on the same shapes with the same
  non-tensor arguments, and none of them reads a device value on the host;
- the static forward equals the fast forward's torch loop, and writes only the slots it is given;
- what has no graphed step is refused with a message that says why.
What only a GPU can show (the recording itself, replay = eager on CUDA) runs in benchmarks/engine_check.py, part of
benchmarks/gpu_check.sh."""
import numpy as np
import pytest
import torch
from seeding import fresh_seed  # noqa: F401
from test_reward_guided import make_bank
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rgd_engine import Engine, GenerationInputError, graph_step

PROMPTS = ["The quick brown", "Reward guided decoding steers", "Breaking news: the city council", "Once upon a time",
           "A"]


def _guided(engine, users=("a", None, "b", "a", "b")):
    return dict(heads=make_bank(engine.hidden_size, ["a", "b"], seed=3), users=list(users), k=4, weight=1.5)


@pytest.mark.parametrize("rule", ["plain", "args"])
@pytest.mark.parametrize("finish", [dict(ignore_eos=True), dict(stop=tuple("aeiost")),
                                    dict(stop=tuple("aeiost"), sync_every=4)])
def test_static_step_decodes_what_the_default_step_decodes(tiny_dirs, load, rule, finish):
    engine = Engine(load(tiny_dirs["llama"]))
    kw = dict(max_new_tokens=16, return_scores=True, **finish, **(_guided(engine) if rule == "args" else {}))
    want = engine.generate(PROMPTS, **kw)
    got = engine.generate(PROMPTS, cuda_graph=True, **kw)
    if "stop" in finish:  # rows finish at different steps and leave the batch
        assert len({len(g.token_ids) for g in want}) > 1
    for g, ref in zip(got, want):
        assert (g.token_ids, g.text, g.finish_reason) == (ref.token_ids, ref.text, ref.finish_reason)
        assert g.kv_bytes == ref.kv_bytes
        assert len(g.steps) == len(ref.steps)
        for s, r in zip(g.steps, ref.steps):
            assert s.keys() == r.keys()
            for key in s:  # the default step runs the C++ stack, the static one torch's ops: fp32 rounding apart
                assert np.allclose(s[key], r[key], rtol=1e-5, atol=1e-4), key


class _Record(TorchDispatchMode):
    """Every dispatched op with its tensor arguments' shapes and dtypes and its other arguments' values."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat, _ = tree_flatten((args, kwargs or {}))
        self.ops.append((str(func), tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else repr(a)
                                          for a in flat)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rule", ["plain", "args"])
def test_static_step_keeps_its_shapes_and_reads_nothing_on_the_host(tiny_dirs, load, monkeypatch, rule):
    """What a CUDA graph needs, checked on the dispatcher: each step's ops, shapes and scalar arguments are those of
    the step before (a replay repeats them), and no op reads a value on the host. With the torch backend (the C++
    CPU kernels bypass the dispatcher; on a GPU the kernels are CUDA / Triton launches)."""
    engine = Engine(load(tiny_dirs["llama"]), backend="torch")
    steps = []

    def recorded(self):
        with _Record() as rec:
            out = self.fn()
        steps.append(rec.ops)
        return out

    monkeypatch.setattr(graph_step._Replay, "__call__", recorded)
    kw = _guided(engine, ["a", "b", None]) if rule == "args" else {}
    engine.generate(PROMPTS[:3], max_new_tokens=6, ignore_eos=True, cuda_graph=True, **kw)
    assert len(steps) == (6 if rule == "args" else 5)  # plain: the first token comes from the prefill
    assert steps[0], "nothing was recorded"
    for i, ops in enumerate(steps[1:], 1):
        assert ops == steps[0], f"step {i} differs from step 0: {set(ops) ^ set(steps[0])}"
    names = {name for name, _ in steps[0]}
    reads = {n for n in names if any(s in n for s in ("_local_scalar_dense", "nonzero", "masked_select", "unique"))}
    assert not reads, reads
    # the guard itself: the default step's ops change with the cache length (its attention spans [0, T))
    default = []
    monkeypatch.setattr(engine.policy.fast, "few_row_kernels", False)
    forward = engine.policy.forward

    def recorded_forward(*a):
        with _Record() as rec:
            out = forward(*a)
        default.append(rec.ops)
        return out

    monkeypatch.setattr(engine.policy, "forward", recorded_forward)
    engine.generate(PROMPTS[:3], max_new_tokens=4, ignore_eos=True, **kw)
    assert default[2] != default[3]


@torch.inference_mode()
def test_static_forward_equals_the_forward_and_writes_only_its_slots(tiny_dirs, load, monkeypatch, fresh_seed):
    lm = load(tiny_dirs["llama"])
    monkeypatch.setattr(lm.fast, "few_row_kernels", False)  # the torch loop on both sides
    gen = torch.Generator().manual_seed(fresh_seed)
    B, P, q = 3, 7, 4
    ids = torch.randint(2, lm.vocab_size, (B, P), generator=gen)
    pad = torch.ones(B, P, dtype=torch.bool)
    pad[0, :3] = False
    caches = []
    for _ in range(2):
        cache = lm.new_cache(B, P + q + 2)
        lm.forward(ids, (pad.long().cumsum(-1) - 1).clamp(min=0), cache.prefill_mask(pad), cache)
        cache.advance(P, pad)
        caches.append(cache)
    dynamic, static = caches
    new = torch.randint(2, lm.vocab_size, (B, q), generator=gen)
    pos = pad.long().sum(-1)[:, None].expand(-1, q)
    want = lm.forward(new, pos, dynamic.tree_mask(q), dynamic)
    length = torch.tensor(P)
    mask = static.static_mask(length, q)
    assert mask.shape == (B, 1, q, static.capacity)
    assert torch.equal(mask[..., :P + q], dynamic.tree_mask(q))
    assert (mask[..., P + q:] == torch.finfo(mask.dtype).min).all()
    got = lm.forward_static(new, pos, mask, static, static.static_slots(length, q))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"seed {fresh_seed}")
    assert torch.equal(static.kv[0], dynamic.kv[0])  # layer 0's K/V precede any attention: the same bits
    torch.testing.assert_close(static.kv, dynamic.kv, rtol=1e-5, atol=1e-5, msg=f"seed {fresh_seed}")
    assert (static.kv[..., P + q:, :] == 0).all()  # slots past the new ones untouched
    chosen = torch.randint(0, q, (B,), generator=gen)
    dynamic.kv.copy_(static.kv)  # the commits move the same bits
    dynamic.commit(chosen, q)
    static.static_commit(chosen, length)
    static.host_commit()
    assert torch.equal(static.kv, dynamic.kv) and torch.equal(static._bias, dynamic._bias)
    assert static.length == dynamic.length


@pytest.mark.parametrize("case, message", [
    (dict(sample=True, seed=0), "only greedy"),
    (dict(rule="token"), "got rule 'token'"),
    (dict(rule="bon-block"), "got rule 'bon-block'"),
    ("separate", "separate reward model"),
    ("gpt2", "runs the HF forward"),
])
def test_what_has_no_graphed_step_is_refused(tiny_dirs, load, case, message):
    if case == "gpt2":
        engine, kw = Engine(load(tiny_dirs["gpt2"])), {}
    elif case == "separate":
        engine = Engine(load(tiny_dirs["llama"]), reward=load(tiny_dirs["rm"]))
        kw = _guided(engine, ["a"])
    else:
        engine, kw = Engine(load(tiny_dirs["llama"])), case
    with pytest.raises(GenerationInputError, match=f"cuda_graph: .*{message}"):
        engine.generate(PROMPTS[:1], max_new_tokens=2, cuda_graph=True, **kw)


def test_replay_warms_up_then_records_then_replays(monkeypatch):
    """_Replay's CUDA protocol with torch.cuda's stream and graph calls faked (no GPU here): the first call runs the
    step for real on a side stream, the second records it inside torch.cuda.graph and replays the recording once (a
    recording runs nothing), later calls only replay, and every call after the first returns the recorded outputs."""
    log = []

    class Graph:
        def replay(self):
            log.append("replay")

    class Context:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            log.append(f"enter {self.name}")

        def __exit__(self, *exc):
            log.append(f"exit {self.name}")

    class Stream:
        def wait_stream(self, other):
            log.append("wait")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: Context("side stream"))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: Context("graph"))
    calls = []

    def step():
        calls.append(len(log))
        log.append("step")
        return f"out {len(calls)}"

    replay = graph_step._Replay(step, torch.device("cuda"))
    assert replay() == "out 1"
    assert log == ["wait", "enter side stream", "step", "exit side stream", "wait"]
    log.clear()
    assert replay() == "out 2"  # what the recording returned: the buffers each replay overwrites
    assert log == ["enter graph", "step", "exit graph", "replay"]
    log.clear()
    assert replay() == "out 2" and replay() == "out 2"
    assert log == ["replay", "replay"] and len(calls) == 2
    assert graph_step._Replay(step, torch.device("cpu"))() == "out 3"  # off CUDA: the step itself


def test_a_bank_that_grows_mid_call_gets_a_new_graph(tiny_dirs, load, monkeypatch):
    """At step 3 the bank grows past its capacity (new tensors) and user a's head is replaced in the new storage: the
    graphed step must read the new tensors from then on, as the default step (which re-reads the bank every step) does.
    A step still reading the old tensors would keep a's old head; the swap changes the tokens, so it would show."""
    from rgd_engine import decoder

    engine = Engine(load(tiny_dirs["llama"]))
    d = engine.hidden_size

    def run(cls, swap: bool, **kw):
        kw = {**_guided(engine, ["a", "b", "a"]), **kw}
        bank, steps = kw["heads"], []
        select = cls.select

        def counted(self):
            steps.append(1)
            if swap and len(steps) == 3:
                bank.add("c", torch.zeros(d))  # the bank was full (a, b): it doubles
                bank.replace("a", -3 * bank.head("a")[0], 0.0)
            return select(self)

        monkeypatch.setattr(cls, "select", counted)
        out = [g.token_ids for g in engine.generate(PROMPTS[:3], max_new_tokens=8, ignore_eos=True, **kw)]
        monkeypatch.setattr(cls, "select", select)
        return out

    swapped = run(graph_step.GraphedArgs, True, cuda_graph=True)
    assert swapped == run(decoder._Args, True)
    assert swapped != run(graph_step.GraphedArgs, False, cuda_graph=True)
