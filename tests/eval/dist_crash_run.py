"""torchrun entry point of test_distributed: `rgd-eval run ARGS` whose rank 1 is killed (SIGKILL, as by the OOM
killer) just before it computes its second chunk of reward-guided generation, i.e. in the middle of a stage."""
import os
import signal
import sys

from rgd_eval import stages
from rgd_eval.cli import main

_compute = stages.StageCache._compute
_started = []


def _dying_compute(self, stage, key, path, compute):
    if os.environ.get("RANK") == "1" and stage.name == "generation-guided":
        _started.append(path)
        if len(_started) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return _compute(self, stage, key, path, compute)


stages.StageCache._compute = _dying_compute
sys.exit(main())
