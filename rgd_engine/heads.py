"""Per-user reward-head banks: a user -> slot map over fixed-capacity tensors.

Two kinds of head, one slot mechanism:
- `HeadBank` (kind "sequence", the ARGS and bon-block rules): r_u(h) = W[slot(u)] . h + b[slot(u)] on the
  backbone's final-norm state of a whole candidate sequence. Tensors W [capacity, d], b [capacity].
- `TokenHeadBank` (kind "token", the GenARM-style `token` rule): r_u(v | h) = e_v . (A_u h) with
  A_u = P_u^T Q_u of rank r, e_v the backbone's output-embedding row of token v and h the prefix state.
  Tensors P [capacity, r, d], Q [capacity, r, d]; never a V x d matrix per user.

Adding, replacing or removing a user is an in-place copy into a slot (no reallocation), seen by the next decode
step because the decoder reads the same tensors every step. When every slot is taken, `add` doubles the capacity:
a one-off reallocation (documented cost, O(capacity * head size)); the decoder re-reads the tensors each step so
it picks up the new storage. Stored as safetensors with metadata (kind, hidden size, rank, backbone id, format
version); save is atomic and load leaves the bank unchanged on any error. `load_bank` opens either kind.
"""
from __future__ import annotations

import json
import numbers
from pathlib import Path

import torch

from .atomic import atomic_path
from .errors import HeadBankError, UnknownUserError

FORMAT_VERSION = "1"


class _SlotBank:
    """Slot bookkeeping, growth and persistence shared by both kinds. A subclass names its per-head tensors."""

    KIND = ""

    def __init__(self, hidden_size: int, capacity: int, backbone_id: str, default_user: str | None, device):
        if hidden_size <= 0 or capacity <= 0:
            raise HeadBankError(f"hidden_size and capacity must be positive, got {hidden_size}, {capacity}")
        self.hidden_size = int(hidden_size)
        self.backbone_id = backbone_id
        self.default_user = default_user
        self.tensors = {name: torch.zeros((capacity, *shape), dtype=torch.float32, device=device)
                        for name, shape in self.head_shapes().items()}
        self._slots: dict[str, int] = {}
        self._free = list(range(capacity - 1, -1, -1))  # pop() hands out the lowest slot first

    # -- what a subclass defines --------------------------------------------------------------------------
    @classmethod
    def shapes(cls, hidden_size: int, **params) -> dict[str, tuple]:
        """Per-head tensor name -> shape of one user's entry, for a bank of this hidden size and kind params."""
        raise NotImplementedError

    def _params(self) -> dict:
        """The kind's own constructor parameters (TokenHeadBank: rank); stored in the file's metadata as strings."""
        return {}

    @classmethod
    def _file_params(cls, meta: dict, path: Path) -> dict:
        """_params() back from a file's metadata, with a clear error."""
        return {}

    def head_shapes(self) -> dict[str, tuple]:
        return self.shapes(self.hidden_size, **self._params())

    # -- slots ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    @property
    def capacity(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, user: str) -> bool:
        return user in self._slots

    @property
    def users(self) -> list[str]:
        return list(self._slots)

    def _check(self, user: str, parts: dict) -> dict[str, torch.Tensor]:
        """Validate one user's head and cast it to the bank's float32; nothing is written here, so a bad head
        leaves the bank unchanged. Finiteness is checked AFTER the cast: a float64 1e300 is finite but becomes inf."""
        out = {}
        for name, shape in self.head_shapes().items():
            t = _as_tensor(user, name, parts[name])
            if not t.is_floating_point():
                raise HeadBankError(f"head of user {user!r}: {name} must be floating point, got {t.dtype}")
            if tuple(t.shape) != shape:
                raise HeadBankError(f"head of user {user!r}: {name} shape {tuple(t.shape)} != {shape}")
            if not torch.isfinite(t).all():
                raise HeadBankError(f"head of user {user!r} contains NaN or inf in {name}")
            cast = t.detach().to(torch.float32)
            if not torch.isfinite(cast).all():
                raise HeadBankError(f"head of user {user!r}: {name} has values beyond float32 (max |x| = "
                                    f"{t.abs().max().item():.3g} in {t.dtype}); the bank stores float32")
            out[name] = cast
        return out

    def _write(self, slot: int, parts: dict[str, torch.Tensor]):
        for name, t in parts.items():
            self.tensors[name][slot].copy_(t)  # in place: same storage, visible at the next decode step

    def _add(self, user: str, parts: dict) -> int:
        if not isinstance(user, str) or not user:
            raise HeadBankError(f"user id must be a non-empty string, got {user!r}")
        if not _is_utf8(user):  # the slot map is saved as UTF-8 JSON
            raise HeadBankError(f"user id {user!r} is not valid UTF-8 text")
        if user in self._slots:
            raise HeadBankError(f"user {user!r} already has a head (slot {self._slots[user]}); use replace()")
        checked = self._check(user, parts)
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._write(slot, checked)
        self._slots[user] = slot
        return slot

    def _replace(self, user: str, parts: dict) -> int:
        slot = self._lookup(user)
        self._write(slot, self._check(user, parts))
        return slot

    def remove(self, user: str) -> None:
        slot = self._lookup(user)
        del self._slots[user]
        for t in self.tensors.values():
            t[slot].zero_()
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
        return torch.tensor([self.slot(u) for u in users], dtype=torch.int64, device=self.device)

    def _grow(self):
        old = self.capacity
        for name, t in self.tensors.items():
            new = torch.zeros((2 * old, *t.shape[1:]), dtype=t.dtype, device=t.device)
            new[:old].copy_(t)
            self.tensors[name] = new
        self._free = list(range(2 * old - 1, old - 1, -1))

    def to(self, device):
        self.tensors = {n: t.to(device) for n, t in self.tensors.items()}
        return self

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        bad = self._nonfinite_users(self.tensors, self._slots)
        if bad:  # the tensors were edited directly; such a file could not be loaded again
            raise HeadBankError(f"cannot save head bank to {str(path)!r}: heads of users {bad[:5]} contain NaN or inf")
        meta = {"format_version": FORMAT_VERSION, "kind": self.KIND, "hidden_size": str(self.hidden_size),
                "backbone_id": self.backbone_id, "default_user": self.default_user or "",
                "slots": json.dumps(self._slots), **{k: str(v) for k, v in self._params().items()}}
        tensors = {n: t.detach().cpu().contiguous() for n, t in self.tensors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @staticmethod
    def _nonfinite_users(tensors: dict[str, torch.Tensor], slots: dict[str, int]) -> list[str]:
        return [u for u, s in slots.items() if not all(torch.isfinite(t[s]).all() for t in tensors.values())]

    @classmethod
    def from_file(cls, path: str | Path, device="cpu"):
        """A bank of the file's hidden size, kind parameters and capacity, everything validated (see load)."""
        contents = cls._read(Path(path), expect_hidden_size=None)
        bank = cls(contents["hidden_size"], capacity=contents["capacity"], device=device, **contents["params"])
        bank._install(contents)
        return bank

    def load(self, path: str | Path, expect_hidden_size: int | None = -1, expect_backbone: str | None = None) -> None:
        """Replace this bank's contents with the file's. Everything is validated first; on error nothing changes.

        expect_hidden_size: -1 = this bank's hidden size, None = accept the file's."""
        want_d = self.hidden_size if expect_hidden_size == -1 else expect_hidden_size
        self._install(self._read(Path(path), want_d, expect_backbone))

    @classmethod
    def _read(cls, path: Path, expect_hidden_size: int | None, expect_backbone: str | None = None) -> dict:
        """A bank file's validated contents: hidden_size, params, capacity, meta, float32 tensors, slots."""
        meta, tensors = read_bank_file(path)
        kind = meta.get("kind") or HeadBank.KIND  # files written before token banks existed are sequence banks
        if kind != cls.KIND:
            raise HeadBankError(f"head bank {str(path)!r} holds {kind!r} heads, not {cls.KIND!r} heads")
        try:
            d = int(meta["hidden_size"])
            slots = json.loads(meta["slots"])
        except (KeyError, ValueError) as e:
            raise HeadBankError(f"head bank {str(path)!r}: bad metadata ({e})") from e
        if expect_hidden_size is not None and d != expect_hidden_size:
            raise HeadBankError(f"head bank {str(path)!r} has hidden size {d}, expected {expect_hidden_size}")
        if expect_backbone is not None and meta.get("backbone_id") != expect_backbone:
            raise HeadBankError(f"head bank {str(path)!r} was trained on backbone {meta.get('backbone_id')!r}, "
                                f"not {expect_backbone!r}")
        params = cls._file_params(meta, path)
        shapes = cls.shapes(d, **params)
        if set(tensors) != set(shapes):
            raise HeadBankError(f"head bank {str(path)!r}: expected tensors {sorted(shapes)}, found {sorted(tensors)}")
        cap = {t.shape[0] if t.dim() else -1 for t in tensors.values()}
        if len(cap) != 1 or any(tuple(tensors[n].shape[1:]) != s for n, s in shapes.items()):
            raise HeadBankError(f"head bank {str(path)!r}: tensor shapes "
                                f"{ {n: tuple(t.shape) for n, t in tensors.items()} } do not match hidden size {d}")
        capacity = cap.pop()
        if not isinstance(slots, dict) or any(not isinstance(s, int) or not 0 <= s < capacity for s in slots.values()) \
                or len(set(slots.values())) != len(slots):
            raise HeadBankError(f"head bank {str(path)!r}: slot map is invalid")
        for n, t in tensors.items():
            # Only float tensors are accepted: an integer head was not written by save() and would be cast silently.
            if not t.is_floating_point():
                raise HeadBankError(f"head bank {str(path)!r}: tensor {n!r} has dtype {t.dtype}; head tensors must be "
                                    "floating point (the bank stores float32)")
        tensors = {n: t.to(torch.float32) for n, t in tensors.items()}  # check finiteness after the cast
        bad = cls._nonfinite_users(tensors, slots)
        if bad:
            raise HeadBankError(f"head bank {str(path)!r}: heads of users {bad[:5]} contain NaN or inf "
                                "(in float32)")
        return {"hidden_size": d, "params": params, "capacity": capacity, "meta": meta,
                "tensors": {n: tensors[n] for n in shapes}, "slots": dict(slots)}

    def _install(self, contents: dict) -> None:
        """Take over validated contents (from _read): nothing here can fail half-way."""
        device, meta = self.device, contents["meta"]
        self.hidden_size = contents["hidden_size"]
        for name, value in contents["params"].items():
            setattr(self, name, value)
        self.backbone_id = meta.get("backbone_id", "")
        self.default_user = meta.get("default_user") or None
        self.tensors = {n: t.to(device=device) for n, t in contents["tensors"].items()}
        self._slots = contents["slots"]
        taken = set(self._slots.values())
        self._free = [s for s in range(contents["capacity"] - 1, -1, -1) if s not in taken]


def read_bank_file(path: Path) -> tuple[dict, dict]:
    """(metadata, tensors) of a head-bank file, with a clear error for a missing, corrupt or foreign file."""
    from safetensors import safe_open

    if path.is_dir():
        raise HeadBankError(f"head bank {str(path)!r} is a directory, not a head-bank (.safetensors) file")
    if not path.is_file():
        raise HeadBankError(f"head bank file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt files
        raise HeadBankError(f"head bank {str(path)!r} is not a readable safetensors file: {e}") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise HeadBankError(f"head bank {str(path)!r}: format version {meta.get('format_version')!r} "
                            f"!= supported {FORMAT_VERSION!r}")
    return meta, tensors


class HeadBank(_SlotBank):
    """Sequence-level heads r_u(h) = W[slot] . h + b[slot] (ARGS, bon-block)."""

    KIND = "sequence"

    def __init__(self, hidden_size: int, capacity: int = 16, backbone_id: str = "", default_user: str | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__(hidden_size, capacity, backbone_id, default_user, device)

    @classmethod
    def shapes(cls, hidden_size: int) -> dict[str, tuple]:
        return {"W": (hidden_size,), "b": ()}

    @property
    def W(self) -> torch.Tensor:  # [capacity, d]
        return self.tensors["W"]

    @property
    def b(self) -> torch.Tensor:  # [capacity]
        return self.tensors["b"]

    def add(self, user: str, weight, bias: float = 0.0) -> int:
        return self._add(user, {"W": weight, "b": _bias(user, bias)})

    def replace(self, user: str, weight, bias: float = 0.0) -> int:
        return self._replace(user, {"W": weight, "b": _bias(user, bias)})

    def head(self, user: str) -> tuple[torch.Tensor, float]:
        s = self._lookup(user)
        return self.W[s].clone(), float(self.b[s])


class TokenHeadBank(_SlotBank):
    """Token-level heads r_u(v | h) = e_v . (P_u^T Q_u h) of rank r (the `token` rule)."""

    KIND = "token"

    def __init__(self, hidden_size: int, rank: int, capacity: int = 16, backbone_id: str = "",
                 default_user: str | None = None, device: str | torch.device = "cpu"):
        if rank <= 0:
            raise HeadBankError(f"token head rank must be positive, got {rank}")
        self.rank = int(rank)
        super().__init__(hidden_size, capacity, backbone_id, default_user, device)

    @classmethod
    def shapes(cls, hidden_size: int, rank: int) -> dict[str, tuple]:
        return {"P": (rank, hidden_size), "Q": (rank, hidden_size)}

    def _params(self) -> dict:
        return {"rank": self.rank}

    @classmethod
    def _file_params(cls, meta: dict, path: Path) -> dict:
        try:
            rank = int(meta["rank"])
        except (KeyError, ValueError) as e:
            raise HeadBankError(f"head bank {str(path)!r}: bad metadata (rank: {e})") from e
        if rank <= 0:
            raise HeadBankError(f"head bank {str(path)!r}: bad metadata (rank {rank} must be positive)")
        return {"rank": rank}

    @property
    def P(self) -> torch.Tensor:  # [capacity, r, d]
        return self.tensors["P"]

    @property
    def Q(self) -> torch.Tensor:  # [capacity, r, d]
        return self.tensors["Q"]

    def add(self, user: str, P, Q) -> int:
        return self._add(user, {"P": P, "Q": Q})

    def replace(self, user: str, P, Q) -> int:
        return self._replace(user, {"P": P, "Q": Q})

    def head(self, user: str) -> tuple[torch.Tensor, torch.Tensor]:
        s = self._lookup(user)
        return self.P[s].clone(), self.Q[s].clone()

    def query(self, hidden: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """A_u h = P_u^T (Q_u h) per row: the vector the candidates' embedding rows are dotted with.

        hidden [B, d], slots [B] (-1 = no head) -> [B, d] float32, zero where slots == -1.
        The rank-r shrink / expand of a gathered low-rank pair, as in multi-LoRA serving (BGMV).
        """
        safe = slots.clamp(min=0)
        z = torch.einsum("brd,bd->br", self.Q[safe], hidden.float())  # [B, r]
        q = torch.einsum("brd,br->bd", self.P[safe], z)  # [B, d]
        return torch.where((slots >= 0)[:, None], q, torch.zeros_like(q))


def _as_tensor(user: str, name: str, value) -> torch.Tensor:
    """A head part given as a tensor, an array or a (nested) list of numbers -> tensor; anything else is named."""
    if value is None or isinstance(value, (str, bytes, bool)):
        raise HeadBankError(f"head of user {user!r}: {name} must be a float tensor, got {type(value).__name__} "
                            f"{value!r}")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise HeadBankError(f"head of user {user!r}: {name} is not a numeric tensor ({type(value).__name__}: "
                            f"{e})") from None


def _bias(user: str, bias) -> torch.Tensor:
    """A bias given as a number or a one-element tensor / array -> 0-d float64 tensor (float64 so that _check
    sees a value that overflows float32 before the cast)."""
    if bias is None or isinstance(bias, (str, bytes, bool)):
        raise HeadBankError(f"head of user {user!r}: bias must be a number, got {type(bias).__name__} {bias!r}")
    if isinstance(bias, numbers.Real):
        return torch.tensor(float(bias), dtype=torch.float64)
    t = _as_tensor(user, "bias", bias)
    if t.numel() != 1:
        raise HeadBankError(f"head of user {user!r}: bias must be a scalar, got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise HeadBankError(f"head of user {user!r}: bias must be a real number, got dtype {t.dtype}")
    return t.detach().reshape(()).to(torch.float64)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_bank(path: str | Path, device="cpu") -> HeadBank | TokenHeadBank:
    """Open a head-bank file of either kind (the file's metadata says which)."""
    meta, _ = read_bank_file(Path(path))
    kind = meta.get("kind") or HeadBank.KIND
    classes = {c.KIND: c for c in (HeadBank, TokenHeadBank)}
    if kind not in classes:
        raise HeadBankError(f"head bank {str(path)!r}: unknown kind {kind!r}; expected one of {sorted(classes)}")
    return classes[kind].from_file(path, device=device)
