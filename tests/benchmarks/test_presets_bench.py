"""benchmarks.presets on a tiny model directory: both dtypes decode, the table renders, a failing step names its
command and error. (The real presets are measured by `python -m benchmarks.presets`, not in CI.)"""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tiny_models import save_tiny  # noqa: E402

from benchmarks import presets  # noqa: E402


def test_decode_once_runs_both_dtypes_and_the_table_renders(tmp_path):
    model = save_tiny(tmp_path / "llama", "llama", seed=1)
    row = presets.decode_once(str(model), prompt_len=12, new_tokens=3, k=2, seed=0)
    for dtype in ("float32", "bfloat16"):
        for mode in ("greedy", "rgd_shared"):
            assert row[f"{dtype}_{mode}_tokens_per_s"] == pytest.approx(3 / row[f"{dtype}_{mode}_wall_s"])
    row |= {"preset": "tiny", "params": "1M", "setup_s": None, "setup_peak_rss_mb": None, "gguf_mb": 0.0,
            "dir_mb": 1.0, "decode_peak_rss_mb": 512.0, "load_avg_1m_before": 0.5}
    table = presets.markdown([row], SimpleNamespace(k=2))
    assert "| tiny | 1M | fast | (cached) |" in table
    assert f"{row['float32_greedy_tokens_per_s']:.1f} / {row['bfloat16_greedy_tokens_per_s']:.1f}" in table


def test_a_failing_step_names_its_command_and_error():
    cmd = [sys.executable, "-c", "import sys; print('boom: no such preset', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(RuntimeError, match="exited with 3: boom: no such preset"):
        presets.run_checked(cmd, None)
