"""The LLM runs page: curves of runs in a folder, the reduction toggle, comparison, claims, the paper's curves."""

from tests.app.harness import assert_charts_labelled, assert_no_exception, chart_data, chart_specs, run_page

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
    import json

    totals = [json.loads((results / name / "claims.json").read_text())["total"] for name in ("cpu", "gpu")]
    assert len(held) == 2 and all(v.endswith(f"of {t}") for v, t in zip(held, totals))


def _paper_log(path, evaluations=5, steps=None, probes=("chosen", "rejected", "chosen_gptsemantic")):
    """A metrics log in the paper's format; ``steps`` adds a step key per line (a fall = an appended restart)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(evaluations):
        row = {f"logps_eval_prob_train/{p}": -50.0 - k - 2.0 * i for k, p in enumerate(probes)}
        row["argmax_prob_logits"] = -20.0 + i
        if steps is not None:
            row["step"] = steps[i]
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def _chart(at, title):
    return next(spec for spec in chart_specs(at) if spec.get("title") == title)


def test_a_fresh_clone_opens_on_the_committed_results(tmp_path, monkeypatch):
    from tests.app.harness import write_tidy_run

    write_tidy_run(tmp_path / "results" / "cpu", decay=1.0, with_claims=True)
    monkeypatch.chdir(tmp_path)  # no runs/ yet, as on a fresh clone
    at = run_page(PAGE)
    assert_no_exception(at)
    assert at.text_input(key="folder").value == "results" and not at.error
    assert at.multiselect(key="runs").value == ["cpu"]


def test_toy_experiment_folders_are_not_listed_as_llm_runs(run_folder):
    toy = run_folder / "toy-trajectories"
    toy.mkdir()
    (toy / "metrics.jsonl").write_text('{"step": 0, "probe": "flat/sft", "metric": "logp_chosen", "value": -1.0}\n')
    at = run_page(PAGE, folder=str(run_folder))
    assert at.multiselect(key="runs").options == ["baseline", "extend"]


def test_the_probe_chart_shows_every_legend_entry_with_distinct_colours(tmp_path):
    import json

    from llm.data import PROBE_TYPES

    run = tmp_path / "runs" / "many"
    run.mkdir(parents=True)
    rows = [{"step": s, "examples_seen": 4 * s, "phase": "dpo", "probe": p, "statistic": "logp_sum", "value": -k - s}
            for s in range(3) for k, p in enumerate([*PROBE_TYPES, "argmax_teacher_forced", "greedy"])]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    at = run_page(PAGE, folder=str(tmp_path / "runs"))
    assert_no_exception(at)
    spec = _chart(at, "phase: dpo")
    color = spec["encoding"]["color"]
    assert color["scale"]["scheme"] == "category20"  # 14 probes: the default 10 colours would repeat
    for channel in ("color", "strokeDash"):
        legend = spec["encoding"][channel]["legend"]
        assert legend["orient"] == "bottom" and legend["labelLimit"] == 0 and legend["symbolLimit"] == 0
    assert spec["encoding"]["strokeDash"]["title"].startswith("run")
    assert spec["height"] >= 400


def test_report_images_are_shown_from_the_run_folder(run_folder):
    import base64

    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    (run_folder / "extend" / "curves.png").write_bytes(png)
    (run_folder / "extend" / "report.md").write_text("# Report\n\n![curves](curves.png)\n\nAfter the figure.\n"
                                                     "![gone](missing.png)\n")
    at = run_page(PAGE, folder=str(run_folder))
    assert_no_exception(at)
    assert len(at.get("image")) == 1
    texts = " ".join(m.value for m in at.markdown)
    assert "](curves.png)" not in texts and "After the figure." in texts and "missing.png is missing" in texts


def test_the_paper_section_works_without_any_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = _paper_log(tmp_path / "base_dpo_run" / "prob_train_metrics.jsonl")
    at = run_page(PAGE)
    assert any("does not exist" in e.value for e in at.error), [e.value for e in at.error]  # no runs/, results/
    at.text_input(key="paper_path").set_value(str(log)).run()
    assert_no_exception(at)
    data = chart_data(at, "paper: base_dpo_run")  # titled by the folder, not "prob_train_metrics"
    assert any("y+_gpts" in p for p in set(data["probe"]))  # a probe type no local run has is shown
    assert data["examples_seen"].max() == 4 * 1000
    at.select_slider(key="paper_eval_every").set_value(100).run()
    assert chart_data(at, "paper: base_dpo_run")["examples_seen"].max() == 4 * 100


def test_appended_restarts_are_split_and_said(tmp_path):
    log = _paper_log(tmp_path / "restarted.jsonl", evaluations=6, steps=[0, 1, 2, 0, 1, 2])
    at = run_page(PAGE, folder=str(tmp_path), paper_path=str(log))
    assert_no_exception(at)
    assert any("2 runs appended" in i.value for i in at.info)
    runs_drawn = set(chart_data(at, "paper: restarted")["run"])
    assert runs_drawn == {"restarted", "restarted (restart 2)"}


def test_a_numpy_file_names_the_file_and_the_formats_read(tmp_path):
    bad = tmp_path / "curves.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}")
    at = run_page(PAGE, folder=str(tmp_path), paper_path=str(bad))
    assert_no_exception(at)
    assert any("curves.npy" in e.value and "JSON lines" in e.value for e in at.error)


def test_an_explained_run_is_said_and_linked_to_the_explain_page(tmp_path):
    from urllib.parse import parse_qs

    from streamlit.testing.v1 import AppTest

    from llm.config import TrainConfig
    from llm.training import train
    from tests.app.harness import PAGE_TIMEOUT_S, page_path, write_tidy_run

    folder = tmp_path / "runs"
    write_tidy_run(folder / "plain", decay=1.0)
    train(TrainConfig(loss="dpo", num_synthetic=12, held_out=4, num_probes=2, tiny_hidden=32, tiny_vocab_size=300,
                      max_prompt_tokens=32, max_response_tokens=16, lr=1e-4, progress=False, save_model=False,
                      checkpoint_at_end=False, explain_prompts=2, out_dir=str(folder / "explained")))
    at = AppTest.from_file(page_path("Home.py"), default_timeout=PAGE_TIMEOUT_S)  # the app: its pages are known
    at.switch_page(PAGE).run()
    at.text_input(key="folder").set_value(str(folder)).run()
    at.multiselect(key="runs").set_value(["explained", "plain"]).run()
    assert_no_exception(at)
    said = [m.value for m in at.markdown if m.value.startswith("**explained**")]
    assert len(said) == 1 and "dpo with AdamW" in said[0] and "chosen " in said[0] and "rejected " in said[0]
    links = at.get("page_link")
    assert [link.proto.label for link in links] == ["Explain explained"]  # the plain run has no record: no link
    query = parse_qs(links[0].proto.query_string)
    assert links[0].proto.page_script_hash and query == {"folder": [str(folder)], "run": [str(folder / "explained")]}
    at.multiselect(key="runs").set_value(["plain"]).run()
    assert not at.get("page_link") and not [m for m in at.markdown if "attribution" in m.value]


def test_the_explain_page_opens_on_the_run_a_link_names(tmp_path):
    from llm.config import TrainConfig
    from llm.training import train

    kw = dict(loss="dpo", num_synthetic=12, held_out=4, num_probes=2, tiny_hidden=32, tiny_vocab_size=300,
              max_prompt_tokens=32, max_response_tokens=16, lr=1e-4, progress=False, save_model=False,
              checkpoint_at_end=False, explain_prompts=2)
    for name in ("a", "b"):
        train(TrainConfig(out_dir=str(tmp_path / "runs" / name), **kw))
    from streamlit.testing.v1 import AppTest

    from tests.app.harness import PAGE_TIMEOUT_S, page_path

    at = AppTest.from_file(page_path("pages/7_Explain_a_run.py"), default_timeout=PAGE_TIMEOUT_S)
    at.query_params["folder"], at.query_params["run"] = str(tmp_path / "runs"), str(tmp_path / "runs" / "b")
    at.run()
    assert_no_exception(at)
    assert at.selectbox(key="run").value == str(tmp_path / "runs" / "b")
