"""llm.runs: reading run directories, tidy metrics, claims and the paper's metric logs."""

import json
import math

import pandas as pd
import pytest

from llm import runs


def _write_run(run_dir, rows, claims=None):
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"loss": "dpo"}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if claims is not None:
        (run_dir / "claims.json").write_text(json.dumps(claims))
    return run_dir


def _probe_rows(phase, values_by_probe, stat="logp_sum", every=4):
    return [{"step": i, "examples_seen": i * every, "phase": phase, "probe": probe, "statistic": stat, "value": v}
            for probe, values in values_by_probe.items() for i, v in enumerate(values)]


def test_tidy_rows_are_read_and_trl_rows_melted(tmp_path):
    rows = _probe_rows("sft", {"chosen": [-9.0, -7.0, -4.0], "rejected": [-8.0, -8.5, -9.5]})
    rows += _probe_rows("sft", {"chosen": [-3.0, -2.0, -1.0]}, stat="logp_mean")
    rows.append({"step": 2, "examples_seen": 8, "phase": "sft", "loss": 0.5, "rewards/margins": 1.25})
    table = runs.read_run_metrics(_write_run(tmp_path / "r1", rows))
    assert list(table.columns) == list(runs.TIDY_COLUMNS)
    assert set(table["run"]) == {"r1"}
    assert len(table) == len(rows) - 1 + 2  # the TRL row becomes one tidy row per metric
    train = runs.training_curves(table)
    assert dict(zip(train["statistic"], train["value"])) == {"loss": 0.5, "rewards/margins": 1.25}
    summed = runs.probe_curves(table, "summed")
    assert summed[summed["probe"] == "chosen"]["value"].tolist() == [-9.0, -7.0, -4.0]
    assert summed[summed["probe"] == "chosen"]["examples_seen"].tolist() == [0, 4, 8]
    mean = runs.probe_curves(table, "mean")
    assert set(mean["probe"]) == {"chosen"} and mean["value"].tolist() == [-3.0, -2.0, -1.0]


def test_curve_summary_is_last_minus_first(tmp_path):
    rows = _probe_rows("dpo", {"chosen": [-5.0, -6.0, -8.0], "rejected": [-7.0, -10.0, -20.0]})
    table = runs.read_runs([_write_run(tmp_path / "a" / "run", rows), _write_run(tmp_path / "b" / "run", rows)])
    assert set(table["run"]) == {"a/run", "b/run"}  # equal names are told apart by their parent
    summary = runs.curve_summary(runs.probe_curves(table, "summed")).set_index(["run", "probe"])
    assert summary.loc[("a/run", "rejected"), "change"] == pytest.approx(-13.0)
    assert summary.loc[("b/run", "chosen"), "start"] == -5.0 and summary.loc[("b/run", "chosen"), "end"] == -8.0


def test_malformed_metrics_line_names_file_and_line(tmp_path):
    run_dir = _write_run(tmp_path / "bad", _probe_rows("sft", {"chosen": [1.0, 2.0]}))
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 3, "probe": "chosen", "statistic": "logp_sum", "value": \n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3: invalid JSON"):
        runs.read_run_metrics(run_dir)


@pytest.mark.parametrize("row, message", [
    ({"probe": "chosen", "statistic": "logp_sum", "value": 1.0}, "no 'step'"),
    ({"step": 0, "probe": "chosen", "value": 1.0}, "no 'statistic'"),
    ({"step": 0, "probe": "chosen", "statistic": "logp_sum", "value": "high"}, "expected a number"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_rows_are_refused(tmp_path, row, message):
    run_dir = _write_run(tmp_path / "bad", [row])
    with pytest.raises(ValueError, match=message):
        runs.read_run_metrics(run_dir)


def test_empty_or_missing_runs(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        runs.list_run_dirs(tmp_path / "nowhere")
    assert runs.list_run_dirs(tmp_path) == []
    with pytest.raises(ValueError, match="does not exist"):
        runs.read_run_metrics(tmp_path)
    empty = _write_run(tmp_path / "empty", [])
    with pytest.raises(ValueError, match="no metric rows"):
        runs.read_run_metrics(empty)
    nested = _write_run(tmp_path / "group" / "deep", _probe_rows("sft", {"chosen": [0.0]}))
    assert runs.list_run_dirs(tmp_path) == sorted([empty, nested])


def test_paper_metrics_match_the_published_numbers(shared_data):
    path = shared_data / "paper_runs" / "base_dpo_qwen_ep6.jsonl"
    lines = path.read_text().splitlines()
    table = runs.read_paper_metrics(path)
    assert table["step"].nunique() == len(lines)
    assert table["examples_seen"].max() == (len(lines) - 1) * runs.PAPER_EVAL_EVERY
    # An independent parse of the first and last lines against the tidy table.
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    summary = runs.curve_summary(runs.probe_curves(table, "summed")).set_index("probe")
    assert summary.loc["chosen", "start"] == first["logps_eval_prob_train/chosen"]
    assert summary.loc["rejected", "end"] == last["logps_eval_prob_train/rejected"]
    assert summary.loc["argmax_teacher_forced", "end"] == last["argmax_prob_logits"]
    # PAPER.md section 8: DPO after SFT, y+ -54.4 -> -113.3, y- -106.5 -> -325.3, argmax -30.0 -> -15.4.
    assert summary.loc["chosen", ["start", "end"]].tolist() == pytest.approx([-54.4, -113.3], abs=0.06)
    assert summary.loc["rejected", ["start", "end"]].tolist() == pytest.approx([-106.5, -325.3], abs=0.06)
    assert summary.loc["argmax_teacher_forced", ["start", "end"]].tolist() == pytest.approx([-30.0, -15.4], abs=0.06)
    broken = table[table["probe"] == "except_argmax"]["value"]
    assert len(broken) == len(lines) and all(math.isnan(v) for v in broken)  # the paper code's NaN bug, kept
    norms = table[table["statistic"] == "A_norm"]
    assert set(norms["probe"]) >= {"chosen", "rejected", "irr_hum"}


def test_malformed_paper_file_names_the_line(tmp_path, shared_data):
    good = (shared_data / "paper_runs" / "base_sft_qwen18_ep8.jsonl").read_text().splitlines()
    path = tmp_path / "paper.jsonl"
    path.write_text("\n".join(good[:2] + ['{"logps_eval_prob_train/chosen": -1.0,'] + good[2:4]) + "\n")
    with pytest.raises(ValueError, match=r"paper\.jsonl:3: invalid JSON"):
        runs.read_paper_metrics(path)
    with pytest.raises(ValueError, match="does not exist"):
        runs.read_paper_metrics(tmp_path / "missing.jsonl")


def test_overlay_puts_both_sources_on_training_progress(tmp_path, shared_data):
    rows = _probe_rows("dpo", {"chosen": [-5.0, -6.0, -8.0], "y_custom": [1.0, 2.0, 3.0]}, every=10)
    curves = runs.probe_curves(runs.read_run_metrics(_write_run(tmp_path / "r", rows)), "summed")
    paper = runs.read_paper_metrics(shared_data / "paper_runs" / "extend_dpo_qwen18_ep6.jsonl")
    overlay = runs.overlay_with_paper(curves, paper)
    assert set(overlay["probe"]) == {"chosen"}  # only probes both sources have
    for source, group in overlay.groupby("source"):
        assert group["progress"].min() == 0.0 and group["progress"].max() == 1.0, source
    ours = overlay[overlay["source"] == "r (dpo)"]
    assert ours["progress"].tolist() == [0.0, 0.5, 1.0] and ours["value"].tolist() == [-5.0, -6.0, -8.0]


@pytest.mark.parametrize("claims", [
    [{"name": "sft/y+ up", "passed": True, "value": 3.0}, {"name": "dpo/y+ down", "passed": False, "value": 0.2}],
    {"claims": [{"claim": "sft/y+ up", "holds": True}, {"claim": "dpo/y+ down", "holds": False}]},
    {"sft/y+ up": {"passed": True}, "dpo/y+ down": {"passed": False}},
])
def test_claims_in_several_layouts(tmp_path, claims):
    run_dir = _write_run(tmp_path / "v", _probe_rows("sft", {"chosen": [0.0]}), claims=claims)
    table = runs.read_claims(run_dir)
    assert list(table.columns[:2]) == ["name", "passed"]
    assert table["name"].tolist() == ["sft/y+ up", "dpo/y+ down"]
    assert runs.claims_score(table) == (1, 2)


def test_unmeasured_claims_are_not_failures(tmp_path):
    # The validation pipeline's layout: totals next to the claims; passed None = not measured.
    doc = {"held": 1, "total": 2, "preset": "cpu", "claims": [
        {"name": "sft/y+ up", "claim": "y+ rises", "passed": True, "verdict": "holds"},
        {"name": "dpo/y+ down", "claim": "y+ falls", "passed": False, "verdict": "fails"},
        {"name": "win rate", "claim": "extend wins", "passed": None, "verdict": "not measured"}]}
    table = runs.read_claims(_write_run(tmp_path / "v", _probe_rows("sft", {"chosen": [0.0]}), claims=doc))
    assert table["passed"].tolist() == [True, False, None]
    assert runs.claims_score(table) == (1, 2)


def test_bad_claims_are_refused(tmp_path):
    run_dir = _write_run(tmp_path / "v", _probe_rows("sft", {"chosen": [0.0]}))
    with pytest.raises(ValueError, match="not a validation run"):
        runs.read_claims(run_dir)
    (run_dir / "claims.json").write_text('{"claims": [1, 2]')
    with pytest.raises(ValueError, match=r"claims\.json:1: invalid JSON"):
        runs.read_claims(run_dir)
    (run_dir / "claims.json").write_text("[]")
    with pytest.raises(ValueError, match="lists no claims"):
        runs.read_claims(run_dir)


def test_select_reduction_rejects_unknown():
    with pytest.raises(ValueError, match="reduction must be one of"):
        runs.select_reduction(pd.DataFrame(columns=list(runs.TIDY_COLUMNS)), "median")
