"""The torch reference as a dispatch backend (runs anywhere torch runs)."""
from .reference import gather_score_select_ref as gather_score_select  # noqa: F401
from .reference import lmhead_topk_ref as lmhead_topk  # noqa: F401
from .reference import score_select_ref as score_select  # noqa: F401


def availability(device_type: str):
    return None
