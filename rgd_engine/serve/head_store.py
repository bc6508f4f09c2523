"""The server's head banks: snapshots for admission, live updates, versions and atomic saves.

Consistency rule: a request copies its user's head row (a snapshot) when the server accepts it. A later PUT or
DELETE of that user changes the bank in place (visible to every request accepted afterwards, from the next step
boundary on) but never the snapshot of a request already accepted, so every request decodes with one head from
its first token to its last, and a freed slot reused by another user cannot leak into it.
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from ..heads import HeadBank, TokenHeadBank

KINDS = {"args": "sequence", "token": "token"}  # rule -> bank kind


class HeadStore:
    def __init__(self, banks: dict[str, tuple[HeadBank | TokenHeadBank, Path]]):
        """banks: kind ("sequence" / "token") -> (bank, the file it was loaded from and is saved to)."""
        self.banks = banks
        self.versions = {kind: 0 for kind in banks}
        self._dirty = set()
        self._lock = threading.Lock()

    def bank(self, kind: str):
        return self.banks[kind][0] if kind in self.banks else None

    def snapshot(self, kind: str, user: str) -> tuple[dict[str, torch.Tensor], int]:
        """A copy of the head `user` decodes with (the default user's where the bank has one and `user` is
        unknown) and the bank version it was taken at. Raises UnknownUserError naming the user."""
        with self._lock:
            bank = self.banks[kind][0]
            slot = bank.slot(user)
            return {name: t[slot].clone() for name, t in bank.tensors.items()}, self.versions[kind]

    def put(self, kind: str, user: str, parts: dict) -> tuple[int, bool, int]:
        """Add or replace `user`'s head: an in-place copy into its slot. -> (slot, created, new version).
        A bad head raises HeadBankError and leaves the bank unchanged."""
        with self._lock:
            bank = self.banks[kind][0]
            created = user not in bank
            slot = (bank.add if created else bank.replace)(user, *parts)
            return slot, created, self._changed(kind)

    def delete(self, kind: str, user: str) -> int:
        with self._lock:
            self.banks[kind][0].remove(user)
            return self._changed(kind)

    def _changed(self, kind: str) -> int:
        self.versions[kind] += 1
        self._dirty.add(kind)
        return self.versions[kind]

    def save(self, only_dirty: bool = False) -> dict[str, str]:
        """Write the banks atomically to their files (all, or only those changed since the last save).
        -> kind -> path written."""
        with self._lock:
            written = {}
            for kind, (bank, path) in self.banks.items():
                if only_dirty and kind not in self._dirty:
                    continue
                bank.save(path)
                self._dirty.discard(kind)
                written[kind] = str(path)
            return written

    def describe(self) -> dict:
        with self._lock:
            return {kind: {"users": bank.users, "version": self.versions[kind], "capacity": bank.capacity,
                           "hidden_size": bank.hidden_size, "default_user": bank.default_user, "path": str(path),
                           "unsaved_changes": kind in self._dirty,
                           **({"rank": bank.rank} if isinstance(bank, TokenHeadBank) else {})}
                    for kind, (bank, path) in self.banks.items()}
