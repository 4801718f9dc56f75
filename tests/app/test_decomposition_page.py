"""The one-step decomposition page: the defaults show Proposition 1 holding; controls change the result."""

from tests.app.harness import assert_charts_labelled, assert_no_exception, chart_specs, run_page
from toykit.experiments import one_step

PAGE = "pages/2_One_step_decomposition.py"


def _metrics(at):
    return {m.label: m.value for m in at.metric}


def test_default_shows_prediction_matching_the_real_step():
    at = run_page(PAGE)
    assert_no_exception(at)
    expected = one_step.run(one_step.Config()).summary
    metrics = _metrics(at)
    assert metrics["correlation, predicted vs actual"] == f"{expected['correlation']:.4f}"
    assert metrics["log-log slope of the error vs eta"] == f"{expected['slope']:.2f}"
    assert 1.8 <= float(metrics["log-log slope of the error vs eta"]) <= 2.2
    assert_charts_labelled(at)
    titles = [spec.get("title") for spec in chart_specs(at)]
    assert "error of Proposition 1 vs eta (log-log)" in titles and "K(x_o, x_u), the eNTK" in titles


def test_changing_the_loss_and_eta_changes_the_result():
    at = run_page(PAGE)
    before = _metrics(at)
    at.selectbox(key="loss").set_value("dpo")
    at.select_slider(key="eta").set_value(0.01)
    at.run()
    assert_no_exception(at)
    expected = one_step.run(one_step.Config(loss="dpo", eta=0.01)).summary
    after = _metrics(at)
    assert after != before
    assert after["Delta log pi(y_u | x_u)"] == f"{expected['delta_log_pi_chosen_self']:+.4f}"
    assert any(f"y- = {expected['y_rejected']}" in c.value for c in at.caption)


def test_bad_label_shows_an_error_not_a_trace():
    at = run_page(PAGE, y_u=40)
    assert_no_exception(at)
    assert any("y_u must be a label" in e.value for e in at.error)
