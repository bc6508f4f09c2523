"""Public API: load a policy (and optionally a separate reward backbone and a head bank), then generate.

`generate` checks everything it is given before any model work (GenerationInputError / PromptTooLongError /
HeadBankError naming the argument, row, user and accepted range): the config's fields, k against the
vocabulary, each row's weight, the prompt text (valid UTF-8) and prompt length + max_new_tokens against the
model's maximum positions (`check_lengths`, public so batch drivers can check a whole workload up front).
"""
from __future__ import annotations

import torch

from .config import MAX_ABS_WEIGHT, EngineConfig, GenerationConfig, check_number, check_text
from .decoder import Decoder, Generation
from .errors import GenerationInputError, HeadBankError, PromptTooLongError
from .heads import HeadBank, TokenHeadBank, load_bank
from .models import CausalLM, check_same_tokenizer, load_causal_lm
from .prompt_cache import DEFAULT_MAX_BYTES, PromptCache


class Engine:
    def __init__(self, policy: CausalLM, reward: CausalLM | None = None, heads: HeadBank | TokenHeadBank | None = None,
                 backend: str | None = None, config: EngineConfig | None = None):
        if reward is not None:
            check_same_tokenizer(policy.tokenizer, policy.name, reward.tokenizer, reward.name)
        self.policy = policy
        self.reward = reward
        self.heads = heads
        self.config = config or EngineConfig(model=policy.name, reward_model=reward.name if reward else None)
        self.decoder = Decoder(policy, reward, backend=backend)
        if heads is not None:
            self.check_bank(heads)

    @classmethod
    def from_config(cls, config: EngineConfig, backend: str | None = None) -> "Engine":
        policy = load_causal_lm(config.model, config.dtype, config.device, config.attn_implementation)
        reward = (load_causal_lm(config.reward_model, config.dtype, config.device, config.attn_implementation)
                  if config.reward_model else None)
        heads = load_bank(config.heads, device=config.device) if config.heads else None
        return cls(policy, reward, heads, backend=backend, config=config)

    @property
    def tokenizer(self):
        return self.policy.tokenizer

    @property
    def backbone(self) -> CausalLM:
        """The model whose final-norm hidden states the reward heads read."""
        return self.reward or self.policy

    @property
    def backbone_id(self) -> str:
        return self.backbone.name

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    @property
    def max_positions(self) -> int | None:
        """Most positions (prompt + generated tokens) one row may use: the smallest `max_position_embeddings`
        of the policy and the reward backbone; None when the model configs give no limit."""
        limit = self._position_limit()
        return limit[0] if limit else None

    def _position_limit(self) -> tuple[int, str] | None:
        """(limit, name of the model that sets it) or None."""
        limits = [(getattr(m.config, "max_position_embeddings", None), m.name) for m in (self.policy, self.reward) if m]
        limits = [(int(n), name) for n, name in limits if isinstance(n, int) and n > 0]
        return min(limits) if limits else None

    def check_lengths(self, prompt_ids: list[list[int]], max_new_tokens: int, what: str = "prompt") -> None:
        """Raise PromptTooLongError unless every prompt, plus max_new_tokens generated tokens, fits the model's
        maximum positions (`max_positions`); GenerationInputError for an empty prompt or a bad max_new_tokens.

        prompt_ids: token ids per row (as from `encode`). Costs nothing: call it before any work. The rule is
        "error, never truncate": a prompt is never silently cut. The message names the first offending prompt's
        index, its length, max_new_tokens, the limit and the model, and how many prompts are too long;
        `what` is the word for a row in messages ("prompt", "cond_prompt")."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise GenerationInputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        lengths = [len(p) for p in prompt_ids]
        if 0 in lengths:
            raise GenerationInputError(f"{what} {lengths.index(0)} is empty (no tokens)")
        found = self._position_limit()
        if found is None:
            return
        limit, model = found
        too_long = [i for i, n in enumerate(lengths) if n + max_new_tokens > limit]
        if too_long:
            i = too_long[0]
            raise PromptTooLongError(
                f"{what} {i} has {lengths[i]} tokens + max_new_tokens {max_new_tokens} = "
                f"{lengths[i] + max_new_tokens} positions, but model {model!r} has {limit} (max_position_embeddings)"
                + (f" ({len(too_long)} of {len(lengths)} {what}s are too long)" if len(too_long) > 1 else "")
                + "; shorten the prompt or lower max_new_tokens")

    def check_k(self, cfg: GenerationConfig) -> None:
        """k candidates come from the policy's vocabulary; bon-block does not use k. (rgd-serve checks a request
        with it before queueing.)"""
        V = self.policy.vocab_size
        if cfg.rule != "bon-block" and cfg.k > V:
            raise GenerationInputError(f"k={cfg.k} is larger than the vocabulary of model {self.policy.name!r} "
                                       f"({V} tokens); choose k in [1, {V}]")

    @staticmethod
    def _row_weights(weights, cfg: GenerationConfig, B: int) -> torch.Tensor:
        """Per-row reward weights -> [B] float32; each must be finite and |w| <= MAX_ABS_WEIGHT."""
        if weights is None:
            return torch.full((B,), float(cfg.weight), dtype=torch.float32)
        if isinstance(weights, torch.Tensor):
            if weights.dim() != 1:
                raise GenerationInputError(f"weights must be one number per prompt, got shape {tuple(weights.shape)}")
            weights = weights.tolist()
        weights = list(weights)
        if len(weights) != B:
            raise GenerationInputError(f"{B} prompts but {len(weights)} weights")
        for i, w in enumerate(weights):
            check_number(f"weights[{i}]", w, -MAX_ABS_WEIGHT, MAX_ABS_WEIGHT)
        return torch.tensor(weights, dtype=torch.float32)

    def check_bank(self, bank: HeadBank | TokenHeadBank):
        """A bank's heads must match the reward backbone's hidden size (rgd-serve checks a loaded bank with it)."""
        if bank.hidden_size != self.hidden_size:
            raise HeadBankError(f"head bank hidden size {bank.hidden_size} != reward backbone {self.backbone_id!r} "
                             f"hidden size {self.hidden_size}")

    def new_bank(self, capacity: int = 16, default_user: str | None = None) -> HeadBank:
        return HeadBank(self.hidden_size, capacity, backbone_id=self.backbone_id, default_user=default_user,
                        device=self.policy.device)

    def new_token_bank(self, rank: int, capacity: int = 16, default_user: str | None = None) -> TokenHeadBank:
        """An empty bank of token-level heads (the `token` rule) for this engine's reward backbone."""
        return TokenHeadBank(self.hidden_size, rank, capacity, backbone_id=self.backbone_id,
                             default_user=default_user, device=self.policy.device)

    def new_prompt_cache(self, max_bytes: int = DEFAULT_MAX_BYTES) -> PromptCache:
        """A cache of the policy's prompt prefills for `generate(prompt_cache=...)` (rgd_engine/prompt_cache.py)."""
        return PromptCache(self.policy, max_bytes)

    def encode(self, prompt: str, chat: bool = False, what: str = "prompt") -> list[int]:
        """Prompt text -> token ids; raw unless chat=True (then the tokenizer's chat template, generation prompt added).
        `what` names the text in errors (e.g. "prompt 3"): it must be a str that is valid UTF-8."""
        check_text(prompt, what)
        tok = self.tokenizer
        if chat:
            if not tok.chat_template:
                raise GenerationInputError(f"model {self.policy.name!r} has no chat template; drop --chat")
            return list(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False))
        return tok(prompt, add_special_tokens=True)["input_ids"]

    def generate(self, prompts: list[str] | str, users: list | str | None = None,
                 heads: HeadBank | TokenHeadBank | None = None, config: GenerationConfig | None = None,
                 chat: bool = False, weights: list[float] | None = None, cond_prompts: list[str | None] | None = None,
                 prompt_cache: PromptCache | None = None, **overrides) -> list[Generation]:
        """Decode each prompt with `config.rule`. args / token / bon-block: rows with a user (and a head bank of
        the rule's kind) are reward-guided. logratio: every row with w != 0 is guided by the policy conditioned on
        its `cond_prompts` entry (the prompt with the user's profile in it; None = the plain prompt, reward 0).
        prompt_cache: a PromptCache of the policy (`new_prompt_cache`): every prompt is prefilled alone, once, and
        reused by later calls (outputs then do not depend on which prompts share a batch)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if users is None or isinstance(users, str):
            users = [users] * len(prompts)
        if len(users) != len(prompts):
            raise GenerationInputError(f"{len(prompts)} prompts but {len(users)} users")
        cfg = config or GenerationConfig()
        if overrides:
            cfg = GenerationConfig.from_dict({**cfg.to_dict(), **overrides})
        cfg.validate()
        self.check_k(cfg)
        w = self._row_weights(weights, cfg, len(prompts))
        ids = [self.encode(p, chat, what=f"prompt {i}") for i, p in enumerate(prompts)]
        self.check_lengths(ids, cfg.max_new_tokens)
        cond_ids = None
        if cfg.rule == "logratio":
            bank = None  # the reward is the conditioned policy itself
            if cond_prompts is None:
                raise GenerationInputError("rule 'logratio' needs cond_prompts: each row's prompt with the user's "
                                           "profile in it")
            if len(cond_prompts) != len(prompts):
                raise GenerationInputError(f"{len(prompts)} prompts but {len(cond_prompts)} cond_prompts")
            cond_ids = [self.encode(c if c is not None else p, chat, what=f"cond_prompt {i}")
                        for i, (c, p) in enumerate(zip(cond_prompts, prompts))]
            self.check_lengths(cond_ids, cfg.max_new_tokens, what="cond_prompt")
        else:
            bank = heads if heads is not None else self.heads
            if bank is not None:
                self.check_bank(bank)
            if bank is None and any(u is not None for u in users):
                raise GenerationInputError("users were given but no head bank is loaded (pass heads= or "
                                           "EngineConfig.heads)")
        slots = bank.slots(users) if bank is not None else None
        return self.decoder.generate(ids, cfg, bank=bank, slots=slots, weights=w, users=list(users),
                                     cond_prompts=cond_ids, prompt_cache=prompt_cache)

    @torch.inference_mode()
    def features(self, prompt_ids: list[list[int]], response_ids: list[list[int]], batch_size: int = 16) -> torch.Tensor:
        """h(x o y): the reward backbone's final-norm hidden state at the last token of prompt + response.

        -> [N, d] float32 on CPU. Sequences are right-padded; the last real token is gathered per row.
        """
        from .features import last_token_states

        return last_token_states(self.backbone, [p + r for p, r in zip(prompt_ids, response_ids)], batch_size)
