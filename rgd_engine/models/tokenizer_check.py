"""Check that a separate reward backbone shares the policy's tokenizer."""
from __future__ import annotations

from ..errors import TokenizerMismatchError

_PROBE = "Reward-guided decoding: héllo wörld 123 <tag> \n\t  end."


def check_same_tokenizer(policy_tok, policy_name: str, reward_tok, reward_name: str) -> None:
    """Raise TokenizerMismatchError naming both models when vocab size or token mapping differ."""
    if len(policy_tok) != len(reward_tok):
        raise TokenizerMismatchError(
            f"reward model {reward_name!r} has vocab size {len(reward_tok)} but policy {policy_name!r} has "
            f"{len(policy_tok)}: a separate reward backbone must share the policy's tokenizer")
    pv, rv = policy_tok.get_vocab(), reward_tok.get_vocab()
    if pv != rv:
        diff = sorted(set(pv.items()) ^ set(rv.items()))[:3]
        raise TokenizerMismatchError(
            f"reward model {reward_name!r} and policy {policy_name!r} map tokens differently (e.g. {diff})")
    if policy_tok(_PROBE)["input_ids"] != reward_tok(_PROBE)["input_ids"]:
        raise TokenizerMismatchError(
            f"reward model {reward_name!r} and policy {policy_name!r} tokenize the same text differently")
