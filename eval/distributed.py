"""Scale-out of `rgd-eval run`: which process computes which chunk, and how the processes meet.

`Workers.start(args)` picks one of three ways to run:
- solo: one process (no torchrun, no --shard) computes every chunk; nothing changes.
- torchrun: the N ranks of a torch.distributed process group (`torchrun --nproc-per-node N -m rgd_eval run ...`,
  multi-node with c10d rendezvous and a shared run folder). Backend gloo on CPU; with --device cuda each rank uses
  cuda:LOCAL_RANK and the group is `cpu:gloo,cuda:nccl` (the study only exchanges CPU objects: barriers, the fitted
  heads, cache counts, which take gloo; a CUDA tensor collective would take NCCL).
- shard i/n (`--shard i/n`): no communication at all (job arrays). A shard computes the chunks it owns of each
  chunked stage; it stops at the first stage whose output a later stage reads and whose other chunks are not in
  the cache yet (ShardPending); a plain run afterwards finishes everything from the cache.

Ownership rule (one rule for ranks and shards): the chunks of one `StageCache.map_chunks` call, numbered
j = 0 .. C-1 in order, belong to worker (j + o) mod N, where o = int(first 8 hex digits of chunk 0's key hash)
and N the number of workers. Each chunk has exactly one owner; a call's chunks are spread as evenly as possible
(owners' counts differ by at most one), and o spreads the many small calls (a generation system of a few
batches) over different workers. The rule reads only chunk keys, which depend on the chunk's inputs, never on
N or the rank: the cached result does not depend on who computed it, and a rerun with any N reuses it.

Stages that a later stage reads (paraphrases, negatives, features, trees) end with a barrier under torchrun;
terminal stages (generation systems, `Stage.terminal`) do not: each rank computes its share of all of them and
the ranks meet once (`merge`), after which rank 0 alone reads every chunk from the cache and runs the global
steps (head fitting and policy accuracy are also rank 0's, broadcast to the others; statistics, results.json,
report and plots are rank 0's only). Then every rank meets rank 0 once more (`finish`) before it exits.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from .errors import RunArgumentError

log = logging.getLogger("rgd_eval")

# A barrier waits for the slowest rank's share of a stage and the others wait for rank 0's head fitting and
# policy accuracy; a rank that dies is noticed by torchrun, which stops the others, so a long timeout only
# matters for a node that vanishes without its torchrun agent noticing.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
PROGRESS_POLL_S = 0.5
SHARED_WAIT_S = 60.0


class ShardPending(Exception):
    """A shard reached a stage whose output a later stage needs while other shards' chunks are missing."""


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; RunArgumentError naming --shard otherwise."""
    i, sep, n = text.partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        index = count = -1
    if not sep or count < 1 or not 0 <= index < count:
        raise RunArgumentError(f"--shard must be i/n with integers 0 <= i < n (e.g. 0/4), got {text!r}")
    return index, count


def chunk_offset(first_key_hash: str) -> int:
    """o of the ownership rule: from the first chunk's key hash (the same on every worker)."""
    return int(first_key_hash[:8], 16)


def owned_chunks(n_chunks: int, rank: int, world: int, offset: int) -> list[int]:
    """Indices j of the call's chunks that worker `rank` of `world` owns: (j + offset) mod world == rank."""
    return [j for j in range(n_chunks) if (j + offset) % world == rank]


@dataclass
class Workers:
    """This process's place among the workers of a run (see the module doc)."""
    mode: str = "solo"         # "solo" | "torchrun" | "shard"
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    complete: bool = True      # map_chunks must return every chunk (computing any that is missing)
    _others_counts: list = field(default_factory=list, repr=False)  # rank 0: the other ranks' cache counts

    @classmethod
    def start(cls, args) -> "Workers":
        """Workers of this run from the environment (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK) and --shard."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if args.shard is not None:
            index, count = parse_shard(args.shard)
            if world > 1:
                raise RunArgumentError(f"--shard {args.shard} cannot run under torchrun (WORLD_SIZE={world}): "
                                       "use one or the other")
            return cls(mode="shard", rank=index, world=count, complete=False)
        if world == 1:
            return cls()
        w = cls(mode="torchrun", rank=int(os.environ["RANK"]), world=world,
                local_rank=int(os.environ.get("LOCAL_RANK", "0")), complete=False)
        w._join(args)
        return w

    def device(self, requested: str) -> str:
        """The torch device of this process: cuda:LOCAL_RANK for a torchrun rank on --device cuda."""
        return f"cuda:{self.local_rank}" if self.mode == "torchrun" and requested == "cuda" else requested

    def owns(self, n_chunks: int, first_key_hash: str) -> list[int]:
        return owned_chunks(n_chunks, self.rank, self.world, chunk_offset(first_key_hash)) if not self.complete \
            else list(range(n_chunks))

    # ---- torchrun ---------------------------------------------------------------------------------------------

    def _join(self, args) -> None:
        import torch
        import torch.distributed as dist

        if args.device == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise RunArgumentError(f"--device cuda: local rank {self.local_rank} needs GPU {self.local_rank}, "
                                       f"{torch.cuda.device_count()} visible on this node")
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl" if args.device == "cuda" else "gloo",
                                timeout=COLLECTIVE_TIMEOUT)
        self._log_to_file(Path(args.output_dir))
        self._check_shared_folder(Path(args.output_dir))
        if self.rank == 0:
            print(f"rgd-eval: {self.world} ranks; ranks > 0 log to {Path(args.output_dir) / 'logs'}", flush=True)

    def _log_to_file(self, run_dir: Path) -> None:
        """Ranks > 0: INFO lines (each chunk computed, the end) to RUN_DIR/logs/rank-R.log, warnings also to
        stderr; rank 0 keeps the console and its progress bars."""
        if self.rank == 0:
            return
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        fmt = logging.Formatter(f"%(asctime)s rank {self.rank}: %(message)s")
        to_file = logging.FileHandler(run_dir / "logs" / f"rank-{self.rank}.log", encoding="utf-8")
        to_file.setFormatter(fmt)
        to_err = logging.StreamHandler(sys.stderr)
        to_err.setLevel(logging.WARNING)
        to_err.setFormatter(fmt)
        log.handlers[:] = [to_file, to_err]
        log.setLevel(logging.INFO)
        log.propagate = False

    def _check_shared_folder(self, run_dir: Path) -> None:
        """Every rank must see the same run folder (multi-node: a shared file system), else no rank could read
        the others' chunks: rank 0 writes a marker, every rank looks for it (for up to SHARED_WAIT_S: an NFS
        client may cache the folder's old listing for a while)."""
        import torch.distributed as dist

        token = [uuid.uuid4().hex if self.rank == 0 else None]
        dist.broadcast_object_list(token, src=0)
        marker = run_dir / f".shared-{token[0]}"
        if self.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            marker.touch()
        dist.barrier()
        deadline = time.time() + SHARED_WAIT_S
        while not marker.exists() and time.time() < deadline:
            time.sleep(PROGRESS_POLL_S)
        seen = [None] * self.world
        dist.all_gather_object(seen, marker.exists())
        dist.barrier()
        if self.rank == 0:
            marker.unlink()
        blind = [r for r, ok in enumerate(seen) if not ok]
        if blind:
            raise RunArgumentError(f"--output-dir {run_dir} is not one shared folder: ranks {blind} do not see rank "
                                   "0's files (multi-node runs need the run folder on a shared file system)")

    def barrier(self, progress: Callable[[], None] | None = None) -> None:
        """torchrun: wait for every rank, calling progress() while waiting (rank 0's bar polls the cache)."""
        if self.mode != "torchrun":
            return
        import torch.distributed as dist

        work = dist.barrier(async_op=True)
        while not work.is_completed():
            if progress is not None:
                progress()
            time.sleep(PROGRESS_POLL_S)
        work.wait()

    def on_rank0(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """fn(...) computed by rank 0 and sent to every rank (torchrun); fn(...) here otherwise."""
        if self.mode != "torchrun":
            return fn(*args, **kwargs)
        import torch.distributed as dist

        box = [fn(*args, **kwargs) if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def merge(self, cache) -> bool:
        """After the last chunked stage: True where this process goes on to the global steps with every chunk in
        the cache (solo; rank 0 once every rank is done), False where it stops (ranks > 0, shards)."""
        if self.mode == "solo" or self.complete:
            return True
        counts = {"computed": dict(cache.computed), "reused": dict(cache.reused)}
        if self.mode == "shard":
            print(f"rgd-eval: shard {self.rank}/{self.world}: its chunks of every stage are in the cache "
                  f"(computed {sum(cache.computed.values())}, reused {sum(cache.reused.values())}); "
                  "a plain `rgd-eval run` with the same arguments merges them", flush=True)
            return False
        import torch.distributed as dist

        every = [None] * self.world
        dist.all_gather_object(every, counts)  # also the barrier: every rank has written its chunks
        if self.rank != 0:
            log.info("done: computed %d chunks", sum(cache.computed.values()))
            return False
        self._others_counts = every[1:]
        self.complete = True
        return True

    def finish(self) -> None:
        """torchrun, after a run that raised nothing: every rank waits here until rank 0 has written the outputs.

        Why: a process that exits right after a gloo collective can abort (SIGABRT, "terminate called without an
        active exception"). Gloo's worker thread may still hold that collective's tensors when the interpreter
        starts to shut down, and releasing a tensor made in Python needs the GIL, which a finalizing interpreter
        no longer grants (pytorch/pytorch#179291). Ranks > 0 used to exit right after `merge`: 2 aborts in 35 runs
        of the two-launcher test's command, and torchrun then held the other launcher in its 300 s exit barrier.
        A barrier carries no Python tensor, and the last collective that did (`merge`) has finished long before
        rank 0 arrives here."""
        if self.mode != "torchrun":
            return
        import torch.distributed as dist

        dist.barrier()
        if self.rank != 0:
            log.info("rank 0 has written the outputs; leaving")

    def cache_counts(self, cache) -> dict:
        """Chunks computed and reused per stage, summed over every rank of the run."""
        total = {"computed": dict(cache.computed), "reused": dict(cache.reused)}
        for counts in self._others_counts:
            for what in total:
                for stage, n in counts[what].items():
                    total[what][stage] = total[what].get(stage, 0) + n
        return total

    def close(self) -> None:
        if self.mode == "torchrun":
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
