"""The kernels are leaves: importing them (or the compiled extension) imports neither the engine nor transformers."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
import rgd_engine.kernels
from rgd_engine.kernels import cpp, dispatch, reference, torch_backend  # noqa: F401
heavy = sorted(m for m in sys.modules if m == "transformers" or m.startswith("transformers.")
               or m in ("rgd_engine.engine", "rgd_engine.decoder", "rgd_engine.models", "rgd_engine.heads"))
print(",".join(heavy))
"""


def test_importing_kernels_imports_neither_the_engine_nor_transformers():
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"importing rgd_engine.kernels imported: {res.stdout.strip()}"


def test_package_names_still_resolve():
    import rgd_engine

    assert rgd_engine.Engine.__module__ == "rgd_engine.engine"
    assert rgd_engine.GenerationConfig.__module__ == "rgd_engine.config"
    assert "HeadBank" in dir(rgd_engine)
