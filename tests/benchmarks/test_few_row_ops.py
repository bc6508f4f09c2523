"""benchmarks/few_row_ops.py runs and reports every op it names (2 layers and a small vocabulary here)."""
import pytest
import torch

from benchmarks import few_row_ops
from rgd_engine.kernels import cpp


@pytest.mark.skipif(not cpp.small_linear_native(torch.float32), reason="this CPU cannot run small_linear")
def test_few_row_ops_reports_each_op_and_row_count(monkeypatch, tmp_path):
    monkeypatch.setattr(few_row_ops, "LAYERS", 2)
    monkeypatch.setattr(few_row_ops, "VOCAB", 1000)
    report = few_row_ops.main(["--dtypes", "float32", "--rows", "1", "3", "--repeats", "1",
                               "--json", str(tmp_path / "ops.json")])
    r = report["dtypes"]["float32"]
    assert r["projection_bytes"] == 2 * 4 * sum(n * k for n, k in few_row_ops.PROJECTIONS)
    for m in (1, 3):
        p = r["projections"][m]
        assert p["small_linear_ms"] > 0 and p["torch_ms"] > 0
        assert p["speedup"] == pytest.approx(p["torch_ms"] / p["small_linear_ms"])
        assert r["rms_norm"][m]["cpp_ms"] > 0
    assert r["lmhead_topk_1_row"]["cpp_ms"] > 0
    assert (tmp_path / "ops.json").read_text().startswith("{")
