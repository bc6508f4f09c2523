"""`rgd-eval sweep`: run options reach every configuration, each configuration's row is its run's results, a failed
configuration is reported without stopping the others, a rerun resumes from the caches, and the scale report
is written (JSON, Markdown, plot)."""
import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tiny_models

from tiny_models import make_tokenizer, save_tiny  # noqa: E402

OPTIONS = ["--dtype", "float32", "--users", "2", "--max-profile-pairs", "4", "--min-profile-pairs", "2",
           "--weights", "0,1,3", "--gen-weights", "1,3", "-k", "3", "--max-new-tokens", "5", "--n-boot", "50",
           "--n-perm", "50", "--batch-size", "4", "--rules", "args", "token", "logratio"]


def test_run_options_round_trip_through_the_run_parser():
    from rgd_eval.run_args import add_arguments
    from rgd_eval.sweep import add_sweep_arguments, run_options

    options = OPTIONS + ["--chat", "--tasks", "LaMP-4", "--methods", "global", "lore", "--seed", "7"]
    run = argparse.ArgumentParser()
    add_arguments(run)
    direct = vars(run.parse_args(["--model", "m", "--output-dir", "o", *options]))
    sweep = argparse.ArgumentParser()
    add_sweep_arguments(sweep)
    forwarded = run_options(sweep.parse_args(["--models", "m", *options]))
    assert vars(run.parse_args(["--model", "m", "--output-dir", "o", *forwarded])) == direct
    assert run_options(sweep.parse_args(["--models", "m"])) == []  # defaults are not repeated


@pytest.mark.parametrize("models,pairs,needle", [
    (["a", "a"], [], "share the run folder"),
    (["x/a", "y/a"], [], "share the run folder"),
    (["a"], ["a"], "POLICY:REWARD_MODEL"),
    (["a"], ["a:"], "POLICY:REWARD_MODEL"),
])
def test_bad_configurations_are_clear_errors(models, pairs, needle):
    from rgd_eval.errors import RunArgumentError
    from rgd_eval.sweep import configurations

    with pytest.raises(RunArgumentError, match=needle):
        configurations(models, pairs)


def test_shard_is_not_a_sweep_option(capsys):
    from rgd_eval.cli import main

    with pytest.raises(SystemExit):
        main(["sweep", "--models", "a", "--shard", "0/2"])
    assert "--shard" in capsys.readouterr().err


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from rgd_eval.lamp import DATA_DIR

    news = [json.loads(line) for line in (DATA_DIR / "news_category_v3_lamp4_subset.jsonl").read_text().splitlines()]
    tok = make_tokenizer(vocab_size=3000, extra_corpus=[r["headline"] + " " + r["short_description"] for r in news])
    root = tmp_path_factory.mktemp("models")
    return {"small": save_tiny(root / "small", "llama", seed=5, tokenizer=tok),
            "large": save_tiny(root / "large", "qwen2", seed=6, hidden=96, tokenizer=tok),
            "rm": save_tiny(root / "rm", "llama", seed=7, hidden=48, tokenizer=tok)}


@pytest.fixture(scope="module")
def swept(models, tmp_path_factory):
    from rgd_eval.cli import main

    out = tmp_path_factory.mktemp("sweep")
    argv = ["sweep", "--models", str(models["small"]), str(models["large"]), str(out / "no-such-model"),
            "--reward-pairs", f"{models['small']}:{models['rm']}", "--output-dir", str(out), *OPTIONS]
    rc = main(argv)
    return out, argv, rc


def test_each_row_is_its_runs_results_and_a_failure_does_not_stop_the_sweep(swept, models):
    out, _, rc = swept
    assert rc == 1  # one configuration failed
    scale = json.loads((out / "scale.json").read_text())
    assert [r["label"] for r in scale["rows"]] == ["small", "large", "small+rm-rm"]
    assert [f["label"] for f in scale["failed"]] == ["no-such-model"]
    assert "no-such-model" in scale["failed"][0]["error"]
    for row in scale["rows"]:
        res = json.loads((out / row["label"] / "results.json").read_text())
        cfg = res["config"]
        # the sweep's run options reached the run
        assert (cfg["k"], cfg["users"], cfg["max_new_tokens"], cfg["dtype"], cfg["rules"]) == \
            (3, 2, 5, "float32", ["args", "token", "logratio"])
        assert cfg["model"] == str(models["large" if row["label"] == "large" else "small"])
        assert cfg["reward_model"] == (str(models["rm"]) if row["label"] == "small+rm-rm" else None)
        # the row is the run's own numbers
        t = res["comparisons"]["tests"]["icl - zero-shot"]
        assert row["icl_minus_zero_shot"]["diff"] == t["diff"]
        assert row["icl_minus_zero_shot"]["ci_low"] == t["ci_low"]
        best = next(r for r in res["paper"] if r["claim"].startswith("ICL beats"))["ours"]["best"]
        assert row["icl_minus_best_rgd"]["diff"] == res["comparisons"]["tests"][f"icl - {best}"]["diff"]
        assert row["icl_rouge1"] == res["generation"]["icl"]["rouge1"]["mean"]
        rm = [e["rm_accuracy"] for v in res["reward_models"].values() for e in v.values()]
        assert row["rm_accuracy_range"] == [min(rm), max(rm)]
        assert row["kendall_tau_per_w"] == {w: k["tau"] for w, k in res["kendall"]["per_w"].items()}
        assert row["parameters"] == cfg["policy_parameters"]
        assert row["sweep"]["returncode"] == 0 and row["sweep"]["peak_rss_mb"] > 0
    small, large = (scale["rows"][0]["parameters"], scale["rows"][1]["parameters"])
    assert large > small
    md = (out / "scale.md").read_text()
    assert "small+rm-rm" in md and "no-such-model" in md and "rgd-eval sweep --models" in md
    assert (out / "scale.png").stat().st_size > 1000


def test_a_rerun_resumes_every_configuration_from_its_cache(swept):
    from rgd_eval.cli import main

    out, argv, _ = swept
    before = {r: json.loads((out / r / "results.json").read_text()) for r in ("small", "large", "small+rm-rm")}
    assert main(argv) == 1
    for label, old in before.items():
        new = json.loads((out / label / "results.json").read_text())
        assert new["config"]["cache"]["computed"] == {}, label
        assert new["generation"] == old["generation"] and new["kendall"] == old["kendall"], label


def test_report_only_rebuilds_the_report_without_running(swept):
    from rgd_eval.cli import main

    out, argv, _ = swept
    before = json.loads((out / "scale.json").read_text())
    (out / "scale.md").unlink()
    mtime = (out / "small" / "results.json").stat().st_mtime
    assert main([*argv, "--report-only"]) == 1  # the failed configuration has no results.json
    assert (out / "scale.md").is_file()
    assert (out / "small" / "results.json").stat().st_mtime == mtime
    after = json.loads((out / "scale.json").read_text())
    assert after["rows"] == before["rows"]  # the runs' wall time and peak RSS come back from sweep-run.json
    assert after["failed"][0]["error"] == before["failed"][0]["error"]


def _row(label, params, users, diff, lo, hi, reward_model=None):
    t = {"diff": diff, "ci_low": lo, "ci_high": hi, "p_value": None, "p_holm": None, "n_users": users}
    return {"label": label, "parameters": params, "test_users": users, "reward_model": reward_model,
            "icl_minus_best_rgd": t}


def test_reading_counts_cis_and_says_when_too_few_users_for_any_significance():
    from rgd_eval.scale import reading

    rows = [_row("a", 1e8, 50, 0.03, 0.01, 0.05), _row("b", 5e8, 50, -0.02, -0.04, -0.01),
            _row("c", 1e9, 50, 0.0, -0.01, 0.01), _row("b+rm", 5e8, 50, 0.0, -0.01, 0.01, reward_model="x")]
    text = "\n".join(reading(rows, {}))
    assert "above 0 for 1 of 4 configurations (a)" in text and "below 0 for 1 (b)" in text
    assert "smallest (a, +0.030) to the largest policy (c, +0.000)" in text  # the reward pair is not a policy point
    assert "cannot give a two-sided p" not in text and "fewer than 20 test users" not in text
    few = "\n".join(reading([_row("a", 1e8, 4, 0.03, 0.0, 0.07), _row("c", 1e9, 5, 0.0, -0.01, 0.01)], {}))
    assert "With 4 test users a sign-flip test over users cannot give a two-sided p below 2 / 2^4 = 0.125" in few
    assert "fewer than 20 test users (a, c)" in few
