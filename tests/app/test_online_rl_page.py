"""The online-RL groups page: defaults show the claims and the token view; controls change the result."""

import json

from tests.app.harness import assert_no_exception, run_page
from toykit.experiments import group_rl

PAGE = "pages/8_Online_RL_groups.py"


def _table(at, first_column):
    for frame in at.dataframe:
        if frame.value.columns[0] == first_column:
            return frame.value
    raise AssertionError(f"no table starting with {first_column!r}")


def test_defaults_show_claims_variants_and_the_token_view():
    at = run_page(PAGE)
    assert_no_exception(at)
    assert not at.error and len(at.get("image")) == 1
    variants = _table(at, "variant")
    assert variants["variant"].tolist() == ["grpo", "dr_grpo", "rloo", "grpo+nthr"]
    expected = group_rl.run(group_rl.Config(variants=("grpo", "dr_grpo", "rloo", "grpo+nthr"))).summary
    assert variants.set_index("variant").loc["grpo", "p_correct"] == expected["variants"]["grpo"]["p_correct"]
    claims = _table(at, "claim")
    assert len(claims) == len(expected["claims"])
    tokens = _table(at, "response")
    assert len(tokens) == group_rl.Config().group_size


def test_changing_controls_changes_the_result():
    at = run_page(PAGE)
    before = _table(at, "variant").set_index("variant").loc["grpo", "p_correct"]
    at.slider(key="steps").set_value(5).run()
    assert_no_exception(at)
    assert _table(at, "variant").set_index("variant").loc["grpo", "p_correct"] != before
    at.selectbox(key="token_variant").set_value("rloo").run()
    assert_no_exception(at)
    at.multiselect(key="variants").set_value([]).run()
    assert [e.value for e in at.error] == ["Choose at least one variant."]


def test_token_view_of_a_run_folder(tmp_path):
    view = {"probe_type": "chosen", "top_k": 2, "probes": [
        {"probe": 0, "prompt": "Human: 1 + 1?", "response": " 2", "positions": [
            {"token": " 2", "logp_before": -3.0, "logp_after": -1.0, "delta_logp": 2.0,
             "top_gainers": [{"token": " 2", "delta_p": 0.3}, {"token": " 3", "delta_p": 0.01}]}]}]}
    (tmp_path / "token_view.json").write_text(json.dumps(view))
    at = run_page(PAGE, token_view_run=str(tmp_path))
    assert_no_exception(at)
    table = _table(at, "position")
    assert table["delta_logp"].tolist() == [2.0] and "' 3' +0.010" in table["top_gainers"][0]
    at.text_input(key="token_view_run").set_value(str(tmp_path / "missing")).run()
    assert any("No token_view.json" in e.value for e in at.error)
