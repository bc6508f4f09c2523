"""Per-user reward-head bank: r_u(h) = W[slot(u)] . h + b[slot(u)].

Fixed-capacity tensors W [capacity, d] and b [capacity] plus a user -> slot map. Adding, replacing or removing a
user is an in-place copy into a slot (no reallocation), seen by the next decode step because the decoder reads
the same tensors every step. When every slot is taken, `add` doubles the capacity: a one-off reallocation
(documented cost, O(capacity * d)); the decoder re-reads `bank.W` each step so it picks up the new storage.
Stored as safetensors with metadata (hidden size, backbone id, format version); save is atomic and load leaves
the bank unchanged on any error.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .atomic import atomic_path
from .errors import HeadBankError, UnknownUserError

FORMAT_VERSION = "1"


class HeadBank:
    def __init__(self, hidden_size: int, capacity: int = 16, backbone_id: str = "", default_user: str | None = None,
                 device: str | torch.device = "cpu"):
        if hidden_size <= 0 or capacity <= 0:
            raise HeadBankError(f"hidden_size and capacity must be positive, got {hidden_size}, {capacity}")
        self.hidden_size = int(hidden_size)
        self.backbone_id = backbone_id
        self.default_user = default_user
        self.W = torch.zeros(capacity, hidden_size, dtype=torch.float32, device=device)  # [capacity, d]
        self.b = torch.zeros(capacity, dtype=torch.float32, device=device)  # [capacity]
        self._slots: dict[str, int] = {}
        self._free = list(range(capacity - 1, -1, -1))  # pop() hands out the lowest slot first

    @property
    def capacity(self) -> int:
        return self.W.shape[0]

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, user: str) -> bool:
        return user in self._slots

    @property
    def users(self) -> list[str]:
        return list(self._slots)

    def _check_head(self, user: str, weight, bias) -> tuple[torch.Tensor, float]:
        w = torch.as_tensor(weight)
        if not w.is_floating_point():
            raise HeadBankError(f"head of user {user!r}: weight must be floating point, got {w.dtype}")
        if tuple(w.shape) != (self.hidden_size,):
            raise HeadBankError(f"head of user {user!r}: weight shape {tuple(w.shape)} != ({self.hidden_size},)")
        b = float(bias)
        if not torch.isfinite(w).all() or not math.isfinite(b):
            raise HeadBankError(f"head of user {user!r} contains NaN or inf")
        return w, b

    def _write(self, slot: int, w: torch.Tensor, b: float):
        self.W[slot].copy_(w)  # in place: same storage, visible at the next decode step
        self.b[slot] = b

    def add(self, user: str, weight, bias: float = 0.0) -> int:
        if not isinstance(user, str) or not user:
            raise HeadBankError(f"user id must be a non-empty string, got {user!r}")
        if user in self._slots:
            raise HeadBankError(f"user {user!r} already has a head (slot {self._slots[user]}); use replace()")
        w, b = self._check_head(user, weight, bias)
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._write(slot, w, b)
        self._slots[user] = slot
        return slot

    def replace(self, user: str, weight, bias: float = 0.0) -> int:
        slot = self._lookup(user)
        w, b = self._check_head(user, weight, bias)
        self._write(slot, w, b)
        return slot

    def remove(self, user: str) -> None:
        slot = self._lookup(user)
        del self._slots[user]
        self.W[slot].zero_()
        self.b[slot] = 0.0
        self._free.append(slot)

    def _lookup(self, user: str) -> int:
        try:
            return self._slots[user]
        except KeyError:
            raise UnknownUserError(f"unknown user {user!r}: the head bank has {len(self._slots)} users"
                                   + (f" (e.g. {', '.join(list(self._slots)[:3])})" if self._slots else "")) from None

    def slot(self, user: str | None) -> int:
        """Slot of `user`; None -> -1 (no head, reward 0). An unknown user falls back to `default_user` only when
        one is configured; otherwise it is an error."""
        if user is None:
            return -1
        if user not in self._slots and self.default_user is not None and self.default_user in self._slots:
            return self._slots[self.default_user]
        return self._lookup(user)

    def slots(self, users) -> torch.Tensor:
        return torch.tensor([self.slot(u) for u in users], dtype=torch.int64, device=self.W.device)

    def head(self, user: str) -> tuple[torch.Tensor, float]:
        s = self._lookup(user)
        return self.W[s].clone(), float(self.b[s])

    def _grow(self):
        old = self.capacity
        W = torch.zeros(2 * old, self.hidden_size, dtype=self.W.dtype, device=self.W.device)
        b = torch.zeros(2 * old, dtype=self.b.dtype, device=self.b.device)
        W[:old].copy_(self.W)
        b[:old].copy_(self.b)
        self.W, self.b = W, b
        self._free = list(range(2 * old - 1, old - 1, -1))

    def to(self, device) -> "HeadBank":
        self.W, self.b = self.W.to(device), self.b.to(device)
        return self

    # ---- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        meta = {"format_version": FORMAT_VERSION, "hidden_size": str(self.hidden_size),
                "backbone_id": self.backbone_id, "default_user": self.default_user or "",
                "slots": json.dumps(self._slots)}
        tensors = {"W": self.W.detach().cpu().contiguous(), "b": self.b.detach().cpu().contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def from_file(cls, path: str | Path, device="cpu") -> "HeadBank":
        bank = cls(hidden_size=1, capacity=1, device=device)
        bank.load(path, expect_hidden_size=None)
        return bank

    def load(self, path: str | Path, expect_hidden_size: int | None = -1, expect_backbone: str | None = None) -> None:
        """Replace this bank's contents with the file's. Everything is validated first; on error nothing changes.

        expect_hidden_size: -1 = this bank's hidden size, None = accept the file's."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise HeadBankError(f"head bank file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys = set(f.keys())
                if keys != {"W", "b"}:
                    raise HeadBankError(f"head bank {str(path)!r}: expected tensors W and b, found {sorted(keys)}")
                W, b = f.get_tensor("W"), f.get_tensor("b")
        except HeadBankError:
            raise
        except Exception as e:  # safetensors raises several types for corrupt files
            raise HeadBankError(f"head bank {str(path)!r} is not a readable safetensors file: {e}") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise HeadBankError(f"head bank {str(path)!r}: format version {meta.get('format_version')!r} "
                                f"!= supported {FORMAT_VERSION!r}")
        try:
            d = int(meta["hidden_size"])
            slots = json.loads(meta["slots"])
        except (KeyError, ValueError) as e:
            raise HeadBankError(f"head bank {str(path)!r}: bad metadata ({e})") from e
        want_d = self.hidden_size if expect_hidden_size == -1 else expect_hidden_size
        if want_d is not None and d != want_d:
            raise HeadBankError(f"head bank {str(path)!r} has hidden size {d}, expected {want_d}")
        if expect_backbone is not None and meta.get("backbone_id") != expect_backbone:
            raise HeadBankError(f"head bank {str(path)!r} was trained on backbone {meta.get('backbone_id')!r}, "
                                f"not {expect_backbone!r}")
        if W.dim() != 2 or W.shape[1] != d or tuple(b.shape) != (W.shape[0],):
            raise HeadBankError(f"head bank {str(path)!r}: W {tuple(W.shape)} / b {tuple(b.shape)} do not match "
                                f"hidden size {d}")
        if not isinstance(slots, dict) or any(not isinstance(s, int) or not 0 <= s < W.shape[0] for s in slots.values()) \
                or len(set(slots.values())) != len(slots):
            raise HeadBankError(f"head bank {str(path)!r}: slot map is invalid")
        used = list(slots.values())
        if not torch.isfinite(W[used]).all() or not torch.isfinite(b[used]).all():
            bad = [u for u, s in slots.items() if not (torch.isfinite(W[s]).all() and torch.isfinite(b[s]))]
            raise HeadBankError(f"head bank {str(path)!r}: heads of users {bad[:5]} contain NaN or inf")
        device = self.W.device
        self.hidden_size = d
        self.backbone_id = meta.get("backbone_id", "")
        self.default_user = meta.get("default_user") or None
        self.W = W.to(device=device, dtype=torch.float32)
        self.b = b.to(device=device, dtype=torch.float32)
        self._slots = dict(slots)
        taken = set(used)
        self._free = [s for s in range(W.shape[0] - 1, -1, -1) if s not in taken]
