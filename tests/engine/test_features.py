"""response_states (one forward, both reward features) against the two single-purpose functions and a full
per-sequence recomputation with the HF modules."""
import random

import pytest
import torch


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_response_states_equal_last_token_and_prefix_states(tiny_dirs, load, arch):
    from rgd_engine.features import last_token_states, prefix_states, response_states

    fresh_seed = random.SystemRandom().randrange(2**31)
    model = load(tiny_dirs[arch])
    g = torch.Generator().manual_seed(fresh_seed)
    V = model.vocab_size
    prompts = [torch.randint(3, V, (int(n),), generator=g).tolist() for n in torch.randint(1, 9, (5,), generator=g)]
    responses = [torch.randint(3, V, (int(n),), generator=g).tolist() for n in torch.randint(1, 7, (5,), generator=g)]
    last, prefix = response_states(model, prompts, responses, batch_size=2)
    want_last = last_token_states(model, [p + r for p, r in zip(prompts, responses)], batch_size=3)
    want_prefix = prefix_states(model, prompts, responses, batch_size=4)
    assert torch.allclose(last, want_last, atol=1e-5), f"seed={fresh_seed}"
    for i, (p, r) in enumerate(zip(prompts, responses)):
        with torch.no_grad():
            full = model.base(input_ids=torch.tensor([p + r])).last_hidden_state[0].float()  # [P+T, d]
        assert torch.allclose(prefix[i], want_prefix[i], atol=1e-5), f"seed={fresh_seed}"
        assert torch.allclose(prefix[i], full[len(p) - 1:len(p) + len(r) - 1], atol=1e-4), f"seed={fresh_seed}"
        assert torch.allclose(last[i], full[-1], atol=1e-4), f"seed={fresh_seed}"
