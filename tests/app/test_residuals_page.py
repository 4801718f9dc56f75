"""The loss-residuals page: every algorithm side by side; controls change the result; bad settings."""

from tests.app.harness import assert_charts_labelled, assert_no_exception, chart_data, run_page
from toykit.experiments import loss_residuals

PAGE = "pages/3_Loss_residuals.py"


def test_default_shows_every_algorithm_on_one_distribution():
    at = run_page(PAGE)
    assert_no_exception(at)
    expected = loss_residuals.run(loss_residuals.Config()).summary
    table = at.dataframe[0].value
    assert table.index.tolist() == list(expected["algorithms"])
    assert table.loc["dpo_offpolicy", "delta_pi_chosen"] == expected["algorithms"]["dpo_offpolicy"]["delta_pi_chosen"]
    assert {m.label: m.value for m in at.metric}[f"dataset y- = {expected['dataset_rejected']}"] == \
        f"pi = {expected['initial_pi_rejected']:.3g}"
    assert not at.get("image")  # interactive charts, not one 40-panel figure
    assert_charts_labelled(at)
    prompt = chart_data(at, "-G at prompt")
    result = loss_residuals.run(loss_residuals.Config())
    rec = result.records["dpo_offpolicy"]
    drawn = prompt[prompt["algorithm"] == "dpo_offpolicy"].sort_values("rank")
    order = (-rec.pi_before[0]).argsort(kind="stable")
    assert drawn["token"].tolist() == order.tolist() and drawn["minus_G"].tolist() == (-rec.G_shared[order]).tolist()


def test_an_empty_residual_panel_is_explained():
    at = run_page(PAGE, detail="sft")
    assert_no_exception(at)
    assert any("its G there is 0" in i.value for i in at.info)
    at.selectbox(key="detail").set_value("dpo_offpolicy").run()
    assert not any("its G there is 0" in i.value for i in at.info)


def test_moving_the_rejected_response_out_of_the_valley_changes_it():
    at = run_page(PAGE, algorithms=["sft", "dpo_offpolicy"])
    before = {m.label for m in at.metric}
    at.slider(key="valley_quantile").set_value(0.5).run()
    assert_no_exception(at)
    expected = loss_residuals.run(loss_residuals.Config(algorithms=("sft", "dpo_offpolicy"),
                                                        valley_quantile=0.5)).summary
    assert f"dataset y- = {expected['dataset_rejected']}" in {m.label for m in at.metric} - before
    assert at.dataframe[0].value.index.tolist() == ["sft", "dpo_offpolicy"]


def test_no_algorithm_shows_an_error_not_a_trace():
    at = run_page(PAGE, algorithms=[])
    assert_no_exception(at)
    assert [e.value for e in at.error] == ["Choose at least one algorithm."]
