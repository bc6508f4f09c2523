"""The hot ops of a reward-guided decode step, behind backend dispatch (see dispatch.py)."""
from .dispatch import (  # noqa: F401
    BACKENDS,
    BackendUnavailable,
    available_backends,
    gather_score_select,
    lmhead_topk,
    requested_backend,
    resolve_backend,
    score_select,
)
from .reference import GREEDY, SAMPLE  # noqa: F401
