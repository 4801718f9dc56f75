"""The online-RL groups page: defaults show the claims and the token view; controls change the result."""

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
