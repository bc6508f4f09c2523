"""Launch settings of the Triton kernels: block sizes, warps and the merge plan of lmhead_topk, all bounded.

Pure arithmetic (no triton import), so the bounds are unit-tested for any (V, k) without a GPU.

lmhead_topk runs in rounds. Stage 1 cuts V into NB = cdiv(V, BLOCK_V) blocks and keeps per (row, block) a partial
(max, sum-exp) and a sorted top-KC list (KC = min(k, BLOCK_V)). Each merge round then merges GROUP lists into one
(one program per (row, group)): the group's (m, s) pairs combine as s = sum_c s_c exp(m_c - m), and its
GROUP * K_IN entries give the top K_OUT. The last round has one group per row and writes logprob = value - lse.
GROUP is chosen so that a program never holds more than MAX_MERGE entries (a [BLOCK_C] register tile): one
round for every realistic vocabulary, more only when NB * KC is large (V = 262k, k = 256: 1024 blocks -> 64 -> 1).
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_MERGE = 4096  # entries one merge program holds (BLOCK_C); a power of two
MAX_K = MAX_MERGE // 2  # a round must merge at least 2 lists of up to k entries
MAX_TILE = 8192  # elements of one score_select / gather_score_select register tile on GPU
BLOCK_B = 16  # tl.dot needs >= 16 rows; B = 1 decode wastes the padding but W is read once per block


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class MergeRound:
    n_in: int  # partial lists per row going in
    k_in: int  # entries per list going in
    group: int  # lists merged by one program
    n_out: int  # lists per row coming out (1 in the final round)
    k_out: int  # entries per list coming out (k in the final round)
    block_g: int  # next_pow2(group): the (m, s) pairs of a program
    block_c: int  # next_pow2(group * k_in) <= MAX_MERGE: the entries of a program
    num_warps: int

    @property
    def final(self) -> bool:
        return self.n_out == 1  # only the last round ends with one list per row


@dataclass(frozen=True)
class LmheadPlan:
    block_v: int  # W rows per stage-1 program
    nb: int  # V-blocks
    kc: int  # entries of a stage-1 partial list
    block_d: int  # hidden columns per stage-1 inner step
    num_warps: int  # stage 1
    rounds: tuple[MergeRound, ...]


def lmhead_plan(V: int, k: int, device_type: str, block_v: int | None = None,
                max_merge: int = MAX_MERGE) -> LmheadPlan:
    """Stage-1 blocks and merge rounds for a vocabulary of V rows and top-k. block_v / max_merge override the
    defaults (tests use small ones to run several rounds on a small vocabulary)."""
    if not 1 <= k <= V:
        raise ValueError(f"triton lmhead_topk: k={k} must be in [1, V={V}]")
    if k > max_merge // 2:
        raise ValueError(f"triton lmhead_topk: k={k} is above the largest supported k={max_merge // 2} "
                         f"(a merge program holds at most {max_merge} candidates); use the cuda or torch backend")
    if block_v is None:
        # GPU: 256-row V-blocks give ~200 programs for V = 49k (fills an H100/H200). Interpreter: fewer, larger
        # programs because each program costs Python overhead.
        block_v = 256 if device_type == "cuda" else 4096
    nb = cdiv(V, block_v)
    kc = min(k, block_v)  # one V-block holds at most block_v candidates
    rounds = []
    n, width = nb, kc
    while True:
        group = max(2, max_merge // width)
        if n <= group:  # the last round: every list of a row in one program
            rounds.append(_round(n, width, n, 1, k))
            break
        n_out = cdiv(n, group)
        k_out = min(k, group * width)
        rounds.append(_round(n, width, group, n_out, k_out))
        n, width = n_out, k_out
    return LmheadPlan(block_v=block_v, nb=nb, kc=kc, block_d=64, num_warps=8, rounds=tuple(rounds))


def _round(n_in: int, k_in: int, group: int, n_out: int, k_out: int) -> MergeRound:
    block_c = next_pow2(group * k_in)
    return MergeRound(n_in=n_in, k_in=k_in, group=group, n_out=n_out, k_out=k_out, block_g=next_pow2(group),
                      block_c=block_c, num_warps=4 if block_c <= 1024 else 8)


@dataclass(frozen=True)
class SelectTile:
    block_r: int  # rows per program (score_select only)
    block_k: int  # candidates, padded to a power of two (>= 2 for tl.arange)
    block_d: int  # hidden columns per inner step


def select_tile(B: int, k: int, D: int, device_type: str, rows: bool = True) -> SelectTile:
    """Tile of score_select ([BLOCK_R, BLOCK_K, BLOCK_D]) or gather_score_select ([BLOCK_K, BLOCK_D], rows=False).

    GPU: block_r * block_k * block_d <= MAX_TILE for k <= MAX_TILE // 16 (block_d shrinks to 16 before rows go).
    Interpreter: many rows per program, because each program costs milliseconds of Python."""
    block_k = max(2, next_pow2(k))
    block_d = min(64, next_pow2(D))
    if device_type == "cuda":
        block_d = max(16, min(block_d, MAX_TILE // block_k))
        block_r = max(1, min(4, MAX_TILE // (block_k * block_d)))
    else:
        block_r = max(1, 16384 // block_k)
    block_r = min(block_r, next_pow2(B)) if rows else 1
    return SelectTile(block_r=block_r, block_k=block_k, block_d=block_d)
