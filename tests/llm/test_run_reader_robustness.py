"""The run reader (the app's LLM page) under foreign or damaged files: verdict strings, a cut last row, a
metrics.jsonl that is a folder, Infinity steps and integers beyond float64."""

import json
import math

import pytest

from llm import runs


def _run(tmp_path, lines: list[str], name="run"):
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(lines))
    return run


ROW = json.dumps({"step": 1, "examples_seen": 4, "phase": "sft", "probe": "chosen", "statistic": "logp_sum",
                  "value": -3.0}) + "\n"


def test_string_verdicts_are_read_not_truthy(tmp_path):
    (tmp_path / "claims.json").write_text(json.dumps([{"name": "a", "passed": "false"}, {"name": "b", "passed": "true"},
                                                      {"name": "c", "passed": None}, {"name": "d", "passed": False}]))
    table = runs.read_claims(tmp_path)
    assert list(table["passed"]) == [False, True, None, False]
    assert runs.claims_score(table) == (1, 3)


def test_an_unreadable_verdict_names_the_file_and_claim(tmp_path):
    (tmp_path / "claims.json").write_text(json.dumps([{"name": "a", "passed": "maybe"}]))
    with pytest.raises(ValueError, match=r"claims\.json: claim 0: passed: expected true, false or null"):
        runs.read_claims(tmp_path)


def test_a_killed_runs_cut_last_line_is_skipped(tmp_path):
    run = _run(tmp_path, [ROW, ROW, ROW[: len(ROW) // 2]])
    assert len(runs.read_run_metrics(run)) == 2
    broken = _run(tmp_path, [ROW, ROW[:10] + "\n", ROW], name="broken")  # a bad line in the middle is an error
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: invalid JSON"):
        runs.read_run_metrics(broken)


def test_a_metrics_folder_is_not_a_run(tmp_path):
    (tmp_path / "fake" / "metrics.jsonl").mkdir(parents=True)
    real = _run(tmp_path, [ROW])
    assert runs.list_run_dirs(tmp_path) == [real]
    with pytest.raises(ValueError, match=r"metrics\.jsonl is not a file"):
        runs.read_run_metrics(tmp_path / "fake")


def test_an_infinite_step_is_refused_with_its_line(tmp_path):
    run = _run(tmp_path, [ROW, ROW.replace('"step": 1', '"step": Infinity')])
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: step: expected a whole number"):
        runs.read_run_metrics(run)


def test_a_value_beyond_float64_is_shown_as_infinite(tmp_path):
    run = _run(tmp_path, [ROW.replace("-3.0", "1" + "0" * 400), ROW.replace("-3.0", "-1" + "0" * 400)])
    values = list(runs.read_run_metrics(run)["value"])
    assert values == [math.inf, -math.inf]
