"""Public API: load a policy (and optionally a separate reward backbone and a head bank), then generate."""
from __future__ import annotations

import torch

from .config import EngineConfig, GenerationConfig
from .decoder import Decoder, Generation
from .heads import HeadBank, TokenHeadBank, load_bank
from .models import CausalLM, check_same_tokenizer, load_causal_lm


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
            self._check_bank(heads)

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

    def _check_bank(self, bank: HeadBank | TokenHeadBank):
        if bank.hidden_size != self.hidden_size:
            raise ValueError(f"head bank hidden size {bank.hidden_size} != reward backbone {self.backbone_id!r} "
                             f"hidden size {self.hidden_size}")

    def new_bank(self, capacity: int = 16, default_user: str | None = None) -> HeadBank:
        return HeadBank(self.hidden_size, capacity, backbone_id=self.backbone_id, default_user=default_user,
                        device=self.policy.device)

    def new_token_bank(self, rank: int, capacity: int = 16, default_user: str | None = None) -> TokenHeadBank:
        """An empty bank of token-level heads (the `token` rule) for this engine's reward backbone."""
        return TokenHeadBank(self.hidden_size, rank, capacity, backbone_id=self.backbone_id,
                             default_user=default_user, device=self.policy.device)

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        """Prompt text -> token ids; raw unless chat=True (then the tokenizer's chat template, generation prompt added)."""
        tok = self.tokenizer
        if chat:
            if not tok.chat_template:
                raise ValueError(f"model {self.policy.name!r} has no chat template; drop --chat")
            return list(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False))
        return tok(prompt, add_special_tokens=True)["input_ids"]

    def generate(self, prompts: list[str] | str, users: list | str | None = None,
                 heads: HeadBank | TokenHeadBank | None = None, config: GenerationConfig | None = None,
                 chat: bool = False, weights: list[float] | None = None, cond_prompts: list[str | None] | None = None,
                 **overrides) -> list[Generation]:
        """Decode each prompt with `config.rule`. args / token / bon-block: rows with a user (and a head bank of
        the rule's kind) are reward-guided. logratio: every row with w != 0 is guided by the policy conditioned on
        its `cond_prompts` entry (the prompt with the user's profile in it; None = the plain prompt, reward 0)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if users is None or isinstance(users, str):
            users = [users] * len(prompts)
        if len(users) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(users)} users")
        cfg = config or GenerationConfig()
        if overrides:
            cfg = GenerationConfig.from_dict({**cfg.to_dict(), **overrides})
        cond_ids = None
        if cfg.rule == "logratio":
            bank = None  # the reward is the conditioned policy itself
            if cond_prompts is None:
                raise ValueError("rule 'logratio' needs cond_prompts: each row's prompt with the user's profile in it")
            if len(cond_prompts) != len(prompts):
                raise ValueError(f"{len(prompts)} prompts but {len(cond_prompts)} cond_prompts")
            cond_ids = [self.encode(c if c is not None else p, chat) for c, p in zip(cond_prompts, prompts)]
        else:
            bank = heads if heads is not None else self.heads
            if bank is not None:
                self._check_bank(bank)
            if bank is None and any(u is not None for u in users):
                raise ValueError("users were given but no head bank is loaded (pass heads= or EngineConfig.heads)")
        slots = bank.slots(users) if bank is not None else None
        w = torch.tensor(weights if weights is not None else [cfg.weight] * len(prompts), dtype=torch.float32)
        ids = [self.encode(p, chat) for p in prompts]
        return self.decoder.generate(ids, cfg, bank=bank, slots=slots, weights=w, users=list(users),
                                     cond_prompts=cond_ids)

    @torch.inference_mode()
    def features(self, prompt_ids: list[list[int]], response_ids: list[list[int]], batch_size: int = 16) -> torch.Tensor:
        """h(x o y): the reward backbone's final-norm hidden state at the last token of prompt + response.

        -> [N, d] float32 on CPU. Sequences are right-padded; the last real token is gathered per row.
        """
        from .features import last_token_states

        return last_token_states(self.backbone, [p + r for p, r in zip(prompt_ids, response_ids)], batch_size)
