"""The squeezing explorer page: default shows the squeeze; controls change the result; bad settings show errors."""

from tests.app.harness import assert_charts_labelled, assert_no_exception, chart_specs, run_page
from toykit.experiments import squeeze_explorer

PAGE = "pages/1_Squeezing_explorer.py"


def _metrics(at):
    return {m.label: m.value for m in at.metric}


def test_default_shows_the_squeeze_and_the_claims():
    at = run_page(PAGE)
    assert_no_exception(at)
    expected = squeeze_explorer.run(squeeze_explorer.Config()).summary
    metrics = _metrics(at)
    assert metrics["labels that rose"] == f"{expected['num_rose']} of 50"
    assert metrics[f"mass moved to y* = {expected['y_star']}"] == f"{expected['mass_to_ystar']:+.4f}"
    claims = at.dataframe[0].value
    assert len(claims) == expected["claims"] and claims["holds"].all()
    assert_charts_labelled(at)
    assert [spec["title"] for spec in chart_specs(at)] == ["pi before and after (linear scale)",
                                                           "pi before and after (log scale)"]


def test_pushing_the_peak_instead_of_a_valley_changes_the_result():
    at = run_page(PAGE)
    before = _metrics(at)
    at.radio(key="negative").set_value("peak").run()
    assert_no_exception(at)
    after = _metrics(at)
    expected = squeeze_explorer.run(squeeze_explorer.Config(negative="peak")).summary
    assert after != before
    assert after["labels that rose"] == f"{expected['num_rose']} of 50"


def test_more_steps_add_the_trajectory_chart_and_a_positive_label_is_shown():
    at = run_page(PAGE)
    charts = len(at.get("vega_lite_chart"))
    at.slider(key="steps").set_value(5)
    at.radio(key="positive").set_value("peak")
    at.run()
    assert_no_exception(at)
    assert len(at.get("vega_lite_chart")) == charts + 1
    assert any(c.value.startswith("pi(y+ = ") for c in at.caption)


def test_bad_settings_show_an_error_not_a_trace():
    at = run_page(PAGE, negative="none", positive="none")
    assert_no_exception(at)
    assert any("both 'none'" in e.value for e in at.error)
    at = run_page(PAGE, negative="index")
    at.number_input(key="negative_index").set_value(120).run()
    assert_no_exception(at)
    assert any("label index" in e.value for e in at.error)


def test_the_intro_describes_the_default_start_and_result():
    from toykit.experiments import squeeze_explorer

    at = run_page(PAGE)
    intro = at.markdown[0].value
    cfg = squeeze_explorer.Config()
    assert cfg.start == "temperature" and f"T = {cfg.temperature}" in intro
    summary = squeeze_explorer.run(cfg).summary
    assert "only the few labels above the threshold rise" in intro and 0 < summary["num_rose"] <= 3
