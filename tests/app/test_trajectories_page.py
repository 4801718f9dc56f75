"""The trajectories and phase-diagram page: defaults show the DPO squeeze; controls change the result."""

import numpy as np

from tests.app.harness import assert_charts_labelled, assert_no_exception, chart_data, chart_specs, run_page
from toykit.experiments import phase_diagram, trajectories

PAGE = "pages/4_Trajectories_and_phase_diagram.py"


def _table(at, first_column):
    """The page's data frame whose first column is ``first_column``."""
    for frame in at.dataframe:
        if frame.value.columns[0] == first_column:
            return frame.value
    raise AssertionError(f"no table starting with {first_column!r}")


def test_defaults_show_trajectories_and_the_phase_diagram():
    at = run_page(PAGE)
    assert_no_exception(at)
    assert not at.error
    assert not at.get("image")  # interactive charts, not blurry figures
    assert_charts_labelled(at)
    titles = [spec.get("title") for spec in chart_specs(at)]
    assert "peaky/valley: pi(y-) at x-" in titles and "dpo: change of log pi(y+ | x+)" in titles
    drawn = chart_data(at, "peaky/valley: pi(y-) at x-")
    result = trajectories.run(trajectories.Config(algorithms=("sft", "dpo", "dpop"), steps=100))
    k = result.config.algorithms.index("dpo")
    expected = np.exp(result.records["logp_rejected"][:, trajectories.STARTS.index("peaky/valley"), k, 1])
    np.testing.assert_allclose(drawn[drawn["algorithm"] == "dpo"].sort_values("step")["value"], expected)
    claims = _table(at, "holds")
    assert claims.columns.tolist()[:3] == ["holds", "claim", "measured"]
    assert not claims["measured"].str.contains("{", regex=False).any()  # readable text, not JSON
    runs = _table(at, "start/algorithm")
    assert set(runs["start/algorithm"]) == {f"{s}/{a}" for s in trajectories.STARTS for a in ("sft", "dpo", "dpop")}
    expected = trajectories.run(trajectories.Config(algorithms=("sft", "dpo", "dpop"), steps=100)).summary["runs"]
    row = runs.set_index("start/algorithm").loc["peaky/valley/dpo"]
    assert row["delta_pi_argmax_at_rejected_ctx"] == expected["peaky/valley/dpo"]["delta_pi_argmax_at_rejected_ctx"]
    per_alg = _table(at, "algorithm")
    assert per_alg["algorithm"].tolist() == ["dpo", "dpop"]
    eta = trajectories.Config().eta
    grid = phase_diagram.run(phase_diagram.Config(algorithms=("dpo", "dpop"), steps=100, etas=(eta,),
                                                  vocab_sizes=(50,))).summary["per_algorithm"]
    assert per_alg["fell_fraction"].tolist() == [grid["dpo"]["fell_fraction"], grid["dpop"]["fell_fraction"]]


def test_changing_the_algorithms_changes_the_tables():
    at = run_page(PAGE)
    at.multiselect(key="traj_algorithms").set_value(["dpo", "ipo"]).run()
    assert_no_exception(at)
    assert set(_table(at, "start/algorithm")["start/algorithm"]) == {
        f"{s}/{a}" for s in trajectories.STARTS for a in ("dpo", "ipo")}


def test_no_algorithm_shows_an_error_not_a_trace():
    at = run_page(PAGE, traj_algorithms=[], phase_algorithms=[])
    assert_no_exception(at)
    assert [e.value for e in at.error] == ["Choose at least one algorithm.", "Choose at least one algorithm."]


def test_ipo_saturating_pi_rejected_is_explained():
    at = run_page(PAGE, traj_algorithms=["dpo", "ipo"])
    assert_no_exception(at)
    assert any("IPO: pi(y-) at x- jumps to about 1" in i.value for i in at.info)
    drawn = chart_data(at, "peaky/valley: pi(y-) at x-")
    ipo = drawn[drawn["algorithm"] == "ipo"].sort_values("step")
    assert ipo["value"].iloc[1] > 0.9  # what the note says: saturated at the first recorded step
    at.multiselect(key="traj_algorithms").set_value(["dpo"]).run()
    assert not any("IPO" in i.value for i in at.info)
