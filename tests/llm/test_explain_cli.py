"""`python -m llm explain` and `python -m llm forecast`: the table, the overlay, the figure, clear errors."""

from llm.cli import main

_SMALL = ["--num-synthetic", "16", "--held-out", "4", "--num-probes", "3", "--tiny-hidden", "32", "--tiny-vocab-size",
          "300", "--max-prompt-tokens", "32", "--max-response-tokens", "16", "--lr", "1e-5", "--eval-every", "4",
          "--progress", "false", "--save-model", "false"]


def test_explain_prints_the_attribution_and_overlays_a_forecast(tmp_path, capsys):
    run, fc = str(tmp_path / "run"), str(tmp_path / "fc")
    assert main(["dpo", *_SMALL, "--explain-prompts", "3", "--explain-every", "2", "--out-dir", run]) == 0
    assert main(["forecast", "--loss", "dpo", *_SMALL, "--out-dir", fc]) == 0
    assert "forecast: 3 steps" in capsys.readouterr().out
    assert main(["explain", run, "--forecast", fc]) == 0
    out = capsys.readouterr().out
    for text in ("y+ pull", "y- push", "rejected fell by", "outweighed", "tracks the run throughout", "forecast_x",
                 "run_with_attribution_x", "per-window (2 windows of 2 steps)"):
        assert text in out, text
    assert (tmp_path / "run" / "explain" / "explain.png").stat().st_size > 10_000


def test_explain_of_a_run_without_attribution_says_how_to_record_one(tmp_path, capsys):
    run = str(tmp_path / "plain")
    assert main(["sft", *_SMALL, "--out-dir", run]) == 0
    assert main(["explain", run]) == 2
    assert "train with --explain-prompts N" in capsys.readouterr().out


def test_forecast_warns_when_asked_for_the_shared_probe_mode(tmp_path):
    import warnings

    import pytest

    with pytest.warns(RuntimeWarning, match="--probe-mode shared is not available for the linearised model"):
        assert main(["forecast", "--loss", "dpo", *_SMALL, "--probe-mode", "shared", "--out-dir",
                     str(tmp_path / "asked")]) == 0
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["forecast", "--loss", "dpo", *_SMALL, "--out-dir", str(tmp_path / "default")]) == 0
    assert not [w for w in seen if "linearised model" in str(w.message)]


def test_a_record_where_no_probe_moved_prints_instead_of_crashing(tmp_path):
    # An RL run whose every group tied (no advantage, no step moved a probe) saves its median r and relative
    # error as null: the report says n/a instead of raising on the format.
    import numpy as np

    from llm.explain_report import Explanation, format_explanation

    zeros = np.zeros((1, 3))
    meta = {"explain_every": 1, "windows": 2, "loss": "grpo", "optimizer": "adamw", "steps": 2, "num_prompts": 2,
            "median_step_correlation": None, "relative_error": float("nan")}
    expl = Explanation(tmp_path, ("chosen",), ("A>0 pull", "A<0 push"), np.arange(3), zeros, zeros,
                       np.zeros((1, 2, 3)), meta)
    text = format_explanation(expl)
    assert "median n/a (no probe moved), cumulative relative error n/a (no probe moved)" in text
    assert "chosen" in text
