"""The decoder gives identical tokens with every available kernel backend (greedy and seeded sampled RGD, every rule)."""
import pytest
import torch

from rgd_engine import Engine, HeadBank, TokenHeadBank
from rgd_engine.kernels import available_backends

PROMPTS = ["The quick brown", "Reward guided decoding steers", "News:"]


def test_every_backend_decodes_the_same_tokens(tiny_dirs, load):
    backends = available_backends("cpu")
    if len(backends) < 2:
        pytest.skip(f"only {backends} available: nothing to compare")
    policy = load(tiny_dirs["llama"])
    bank = HeadBank(policy.hidden_size)
    g = torch.Generator().manual_seed(3)
    bank.add("a", torch.randn(policy.hidden_size, generator=g) * 2)
    bank.add("b", torch.randn(policy.hidden_size, generator=g) * 2)
    tb = TokenHeadBank(policy.hidden_size, rank=2)
    tb.add("a", torch.randn(2, policy.hidden_size, generator=g), torch.randn(2, policy.hidden_size, generator=g))
    conds = ["Foxes and dogs. The quick brown", None, "Sports pages. News:"]
    runs = {}
    for backend in backends:
        engine = Engine(policy, backend=backend)
        kw = dict(users=["a", "b", None], heads=bank, k=5, weight=1.0, max_new_tokens=8)
        runs[backend] = (
            [o.token_ids for o in engine.generate(PROMPTS, **kw)],
            [o.token_ids for o in engine.generate(PROMPTS, sample=True, seed=11, temperature=1.5, **kw)],
            [o.token_ids for o in engine.generate(PROMPTS, max_new_tokens=8)],
            [o.token_ids for o in engine.generate(PROMPTS, users=["a", None, "a"], heads=tb, rule="token", k=5,
                                                  weight=2.0, max_new_tokens=8)],
            [o.token_ids for o in engine.generate(PROMPTS, rule="logratio", cond_prompts=conds, k=5, weight=1.5,
                                                  max_new_tokens=8, sample=True, seed=4)],
            [o.token_ids for o in engine.generate(PROMPTS, rule="bon-block", n_samples=3, block_size=3, seed=2,
                                                  max_new_tokens=8, **{k: v for k, v in kw.items()
                                                                       if k in ("users", "heads")})],
        )
    ref = runs["torch"]
    for backend, got in runs.items():
        assert got == ref, f"backend {backend} decodes differently from torch"
