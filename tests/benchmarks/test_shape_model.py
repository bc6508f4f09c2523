"""benchmarks/shape_model.py: a skeleton holds every file of a model directory but its weights; materializing it
gives a loadable model whose every tensor has the source's name, shape and dtype, drawn afresh under the seed."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks import shape_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tiny_models
from tiny_models import make_tokenizer, save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("src") / "llama", "llama", seed=1, tokenizer=make_tokenizer())


def test_skeleton_copies_everything_but_the_weights(source, tmp_path):
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    names = shape_model.skeleton(source, tmp_path / "sk")
    weights = {n for n in before if n.endswith(".safetensors")}
    assert weights and set(names) == set(before) - weights
    for n in names:
        assert (tmp_path / "sk" / n).read_bytes() == before[n], n
    assert sorted(p.name for p in (tmp_path / "sk").iterdir()) == sorted(names + ["SHAPE_MODEL.json"])
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before  # the source is untouched


def test_materialized_weights_have_the_source_shapes_and_follow_the_seed(source, tmp_path):
    sk = tmp_path / "sk"
    shape_model.skeleton(source, sk)
    a = load_file(shape_model.materialize(sk, tmp_path / "a", seed=5) / "model.safetensors")
    b = load_file(shape_model.materialize(sk, tmp_path / "b", seed=5) / "model.safetensors")
    c = load_file(shape_model.materialize(sk, tmp_path / "c", seed=6) / "model.safetensors")
    ref = load_file(source / "model.safetensors")
    assert set(a) == set(ref)
    for name, t in ref.items():
        assert a[name].shape == t.shape and a[name].dtype == t.dtype, name
        assert torch.equal(a[name], b[name]), f"{name}: same seed, different weights"
    drawn = [n for n, t in ref.items() if t.dim() == 2]  # norms start at ones whatever the seed
    assert drawn and all(not torch.equal(a[n], c[n]) and not torch.equal(a[n], ref[n]) for n in drawn)
    assert json.loads((tmp_path / "a" / "SHAPE_MODEL.json").read_text())["seed"] == 5
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(source).parameters())


def test_a_directory_without_config_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"empty.*no config\.json"):
        shape_model.skeleton(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(SystemExit, match=r"empty.*no config\.json"):
        shape_model.materialize(tmp_path / "empty", tmp_path / "out")
