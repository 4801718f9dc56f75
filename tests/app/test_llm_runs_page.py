"""The LLM runs page: curves of runs in a folder, the reduction toggle, comparison, claims, the paper's curves."""

from tests.app.harness import assert_charts_labelled, assert_no_exception, chart_specs, run_page

PAGE = "pages/6_LLM_runs.py"


def _summary(at):
    """The page's table of curve changes as {(run, phase, probe): (start, end)}."""
    table = at.dataframe[0].value
    return {(r.run, r.phase, r.probe): (r.start, r.end) for r in table.itertuples()}


def test_default_folder_missing_shows_an_error_not_a_trace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default folder "runs" does not exist here
    at = run_page(PAGE)
    assert_no_exception(at)
    assert any("does not exist" in e.value for e in at.error)


def test_empty_run_folder_shows_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    at = run_page(PAGE, folder=str(tmp_path / "empty"))
    assert_no_exception(at)
    assert any("No run directories" in e.value for e in at.error)


def test_runs_load_and_the_reduction_toggle_changes_the_curves(run_folder):
    at = run_page(PAGE, folder=str(run_folder))
    assert_no_exception(at)
    assert not at.error
    assert at.multiselect(key="runs").value == ["baseline", "extend"]
    assert_charts_labelled(at)
    summed = _summary(at)
    # Written by the fixture: chosen starts at 10 x (-1) and falls by 10 x decay per evaluation (3 evaluations).
    assert summed[("baseline", "sft", "chosen")] == (-10.0, -40.0)
    assert summed[("extend", "sft", "chosen")] == (-10.0, -25.0)
    at.radio(key="reduction").set_value("mean").run()
    assert_no_exception(at)
    assert _summary(at)[("baseline", "sft", "chosen")] == (-1.0, -4.0)


def test_phase_and_run_selection_change_the_table(run_folder):
    at = run_page(PAGE, folder=str(run_folder))
    at.selectbox(key="phase").set_value("dpo")
    at.multiselect(key="runs").set_value(["extend"])
    at.run()
    assert_no_exception(at)
    assert {key[:2] for key in _summary(at)} == {("extend", "dpo")}


def test_claims_scoreboard_of_a_validation_run(run_folder):
    at = run_page(PAGE, folder=str(run_folder))
    assert [m.value for m in at.metric] == ["2 of 3"]
    claims = at.dataframe[1].value
    assert claims["name"].tolist()[1] == "dpo: y+ eventually falls" and not claims["passed"].tolist()[1]
    at.multiselect(key="runs").set_value(["baseline"]).run()
    assert not at.metric and any("not a validation run" in i.value or "no claims.json" in i.value for i in at.info)


def test_malformed_metrics_file_shows_the_line(run_folder):
    with (run_folder / "extend" / "metrics.jsonl").open("a") as fh:
        fh.write("{not json\n")
    at = run_page(PAGE, folder=str(run_folder))
    assert_no_exception(at)
    assert any("metrics.jsonl:" in e.value and "invalid JSON" in e.value for e in at.error)


def test_paper_curves_overlay_and_bad_paper_file(run_folder, shared_data, tmp_path):
    paper = shared_data / "paper_runs" / "base_dpo_qwen_ep6.jsonl"
    at = run_page(PAGE, folder=str(run_folder))
    titles_before = [spec.get("title") for spec in chart_specs(at)]
    at.text_input(key="paper_path").set_value(str(paper)).run()
    assert_no_exception(at)
    assert not at.error
    # The paper's curve and the overlay (the fixture runs share the probe names chosen, rejected, ...) are added.
    titles = [spec.get("title") for spec in chart_specs(at)]
    assert titles == titles_before + ["paper: base_dpo_qwen_ep6", "overlay: this run vs the paper"]
    assert_charts_labelled(at)
    at.radio(key="reduction").set_value("mean").run()
    assert any("summed log-probs only" in i.value for i in at.info)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(paper.read_text().splitlines()[0] + "\n{broken\n")
    at.text_input(key="paper_path").set_value(str(bad)).run()
    assert_no_exception(at)
    assert any("bad.jsonl:2" in e.value for e in at.error)


def test_changing_the_folder_selects_that_folders_runs(run_folder, tmp_path):
    from tests.app.harness import write_tidy_run

    other = tmp_path / "other"
    write_tidy_run(other / "only", decay=1.0)
    at = run_page(PAGE, folder=str(run_folder))  # the default folder first, then this one, as a user would
    assert at.multiselect(key="runs").value == ["baseline", "extend"] and not at.error
    at.text_input(key="folder").set_value(str(other)).run()
    assert at.multiselect(key="runs").value == ["only"] and not at.error


def test_the_committed_validation_results_open_in_the_page():
    from pathlib import Path

    results = Path(__file__).resolve().parents[2] / "results"
    at = run_page(PAGE, folder=str(results))
    assert_no_exception(at)
    assert not at.error
    assert at.multiselect(key="runs").value == ["cpu", "gpu"]
    held = [m.value for m in at.metric if m.label == "claims that held"]
    assert len(held) == 2 and all(v.endswith("of 23") for v in held)
