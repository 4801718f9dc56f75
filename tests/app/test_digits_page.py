"""The digits-influence page: measured and predicted maps agree at the defaults; controls and bad paths."""

from tests.app.harness import assert_charts_labelled, assert_no_exception, chart_data, run_page
from toykit.experiments import digits_influence

PAGE = "pages/5_Digits_influence.py"


def _metrics(at):
    return {m.label: m.value for m in at.metric}


def test_default_shows_the_maps_and_their_agreement():
    at = run_page(PAGE)
    assert_no_exception(at)
    expected = digits_influence.run(digits_influence.Config(models=("mlp",), steps=60)).summary
    metrics = _metrics(at)
    assert metrics["correlation of the maps, predicted vs measured"] == f"{expected['mlp']['map_pearson_pull']:.3f}"
    assert float(metrics["correlation of the maps, predicted vs measured"]) > 0.9  # Prop. 1 at a small eta
    assert not at.get("image")  # interactive heat maps, not a figure
    assert_charts_labelled(at)
    result = digits_influence.run(digits_influence.Config(models=("mlp",), steps=60))
    drawn = chart_data(at, "mlp: measured")
    pull = result.influence["mlp"].measured_pull
    cell = drawn[(drawn["x_u class"] == 3) & (drawn["x_o class"] == 5)]["value"].item()
    assert abs(cell - (pull[3, 5] - pull[3].mean())) < 1e-9  # row-centred, as in the experiment's figure
    assert at.dataframe[0].value["pair"].tolist() == [p["pair"] for p in expected["mlp"]["most_coupled_pairs"]]


def test_fewer_steps_change_the_result():
    at = run_page(PAGE)
    before = _metrics(at)
    at.select_slider(key="steps").set_value(30).run()
    assert_no_exception(at)
    assert _metrics(at) != before


def test_missing_mnist_folder_shows_an_error(tmp_path):
    at = run_page(PAGE, data_dir=str(tmp_path / "no-mnist-here"))
    assert_no_exception(at)
    assert any("no-mnist-here" in e.value for e in at.error)
