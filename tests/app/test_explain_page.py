"""The explain page: an explained run shows its figure, table and pair diagnostics; a forecast overlays; errors."""

import pytest

from llm.config import TrainConfig
from llm.forecast import forecast
from llm.training import train
from tests.app.harness import assert_no_exception, run_page, widget_by_key

PAGE = "pages/7_Explain_a_run.py"


@pytest.fixture(scope="module")
def explained_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("explained")
    kw = dict(loss="dpo", num_synthetic=16, held_out=4, num_probes=3, tiny_hidden=32, tiny_vocab_size=300,
              max_prompt_tokens=32, max_response_tokens=16, lr=1e-5, eval_every=4, progress=False,
              save_model=False, checkpoint_at_end=False)
    train(TrainConfig(out_dir=str(root / "dpo_run"), explain_prompts=3, **kw))
    forecast(TrainConfig(out_dir=str(root / "dpo_forecast"), **kw))
    return root


def test_an_explained_run_shows_the_attribution_and_the_forecast(explained_folder):
    at = run_page(PAGE, folder=str(explained_folder))
    assert_no_exception(at)
    assert not at.error and len(at.get("image")) == 1  # the figure
    tables = [frame.value for frame in at.dataframe]
    terms = tables[0]
    assert terms["probe"].tolist()[:2] == ["chosen", "rejected"] and {"y+ pull", "y- push"} <= set(terms.columns)
    assert any("ches" in t.columns for t in tables)  # the pair diagnostics
    widget_by_key(at, "forecast").set_value(str(explained_folder / "dpo_forecast"))
    at.run()
    assert_no_exception(at)
    assert any("parted" in frame.value.columns for frame in at.dataframe)


def test_a_folder_without_explained_runs_says_how_to_record_one(tmp_path):
    at = run_page(PAGE, folder=str(tmp_path))
    assert at.error and "--explain-prompts" in at.error[0].value
