"""Stop strings checked incrementally give the rule's answer (the first token after which the whole row's decoded
text contains a stop string) at O(T) decoding cost, on random token streams of the tests' byte-level tokenizer."""
import random

import pytest

from rgd_engine.stopping import RowStopper

STOPS = [("\n",), ("e ",), ("Headline", "\n\n"), ("ab",), ("é",)]


class CountingTokenizer:
    def __init__(self, tok):
        self.tok, self.decoded = tok, 0

    def decode(self, ids, skip_special_tokens=True):
        self.decoded += len(ids)
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def whole_row_rule(tok, ids, stop, eos):
    for t in range(len(ids)):
        if ids[t] in eos:
            return t, "eos"
        if any(s in tok.decode(ids[:t + 1], skip_special_tokens=True) for s in stop):
            return t, "stop"
    return None, None


@pytest.mark.parametrize("stop", STOPS)
def test_incremental_stop_check_equals_the_whole_row_rule(tiny_tokenizer, stop):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    V = len(tiny_tokenizer)
    text_ids = tiny_tokenizer("Headline: Stocks rally.\nThe quick brown fox, über naïve café ab\n\n",
                              add_special_tokens=False)["input_ids"]
    for trial in range(40):
        # random tokens (incl. lone bytes of multi-byte characters and <eos>/<pad>) mixed with real text
        ids = [rng.randrange(V) if rng.random() < 0.5 else rng.choice(text_ids) for _ in range(rng.randrange(1, 40))]
        eos = {0} if trial % 2 else set()
        want_t, want_reason = whole_row_rule(tiny_tokenizer, ids, stop, eos)
        row = RowStopper(tiny_tokenizer, eos, stop)
        got_t = next((t for t, tok in enumerate(ids) if row.push(tok)), None)
        assert (got_t, row.finish_reason) == (want_t, want_reason), f"seed {seed} trial {trial}: ids {ids}"


def test_a_long_row_costs_linear_decoding(tiny_tokenizer):
    tok = CountingTokenizer(tiny_tokenizer)
    ids = tiny_tokenizer("The quick brown fox jumps over the lazy dog. " * 40, add_special_tokens=False)["input_ids"]
    row = RowStopper(tok, set(), ("never appears",))
    assert not any(row.push(t) for t in ids)
    T = len(ids)
    assert T > 300 and tok.decoded <= 4 * T, f"{tok.decoded} token decodes for {T} tokens"
