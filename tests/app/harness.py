"""Helpers for the app tests: run a page with AppTest, find widgets by key, write a tiny llm run folder."""

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP_DIR = Path(__file__).resolve().parents[2] / "app"
PAGE_TIMEOUT_S = 120  # the first run of a toy page trains a small model on 2 shared CPU cores


def page_path(name: str) -> str:
    """Path of ``app/<name>`` (``Home.py`` or ``pages/...``)."""
    path = APP_DIR / name
    assert path.exists(), f"missing page {path}"
    return str(path)


def run_page(name: str, **widgets) -> AppTest:
    """Run a page once with defaults, then again with ``key=value`` widget settings when given."""
    at = AppTest.from_file(page_path(name), default_timeout=PAGE_TIMEOUT_S)
    at.run()
    if widgets:
        for key, value in widgets.items():
            widget_by_key(at, key).set_value(value)
        at.run()
    return at


def widget_by_key(at: AppTest, key: str):
    """Return the widget with ``key`` whatever its kind (AppTest indexes widgets by kind)."""
    for kind in ("text_input", "number_input", "slider", "select_slider", "selectbox", "radio", "multiselect",
                 "checkbox", "toggle"):
        try:
            return getattr(at, kind)(key=key)
        except KeyError:
            continue
    raise KeyError(f"no widget with key {key!r}")


def assert_no_exception(at: AppTest) -> None:
    """Fail with the page's own trace when it raised."""
    assert not at.exception, "page raised:\n" + "\n".join(e.message + "\n" + "\n".join(e.stack_trace)
                                                         for e in at.exception)


def write_tidy_run(run_dir: Path, decay: float, with_claims: bool = False) -> Path:
    """Write a small llm run: config.json, env.json and metrics.jsonl with tidy probe rows and TRL training rows.

    Probe log-probs fall linearly by ``decay`` per evaluation (summed = 10 x per-token mean), so two runs differ.
    """
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"loss": "dpo", "decay": decay}))
    (run_dir / "env.json").write_text(json.dumps({"python": "3"}))
    rows = []
    for phase in ("sft", "dpo"):
        for step in range(4):
            for k, probe in enumerate(("chosen", "rejected", "irr_train", "random_permute")):
                mean = -1.0 - k - decay * step
                rows.append({"step": step, "examples_seen": 8 * step, "phase": phase, "probe": probe,
                             "statistic": "logp_sum", "value": 10 * mean})
                rows.append({"step": step, "examples_seen": 8 * step, "phase": phase, "probe": probe,
                             "statistic": "logp_mean", "value": mean})
            rows.append({"step": step, "examples_seen": 8 * step, "phase": phase, "loss": 0.69 - 0.1 * step,
                         "rewards/margins": 0.2 * step})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if with_claims:
        claims = [{"name": "sft: y+ rises", "passed": True, "measured": 3.2, "rule": "change > 0"},
                  {"name": "dpo: y+ eventually falls", "passed": False, "measured": 0.4, "rule": "change < 0"},
                  {"name": "dpo: argmax rises", "passed": True, "measured": 1.1, "rule": "change > 0"}]
        (run_dir / "claims.json").write_text(json.dumps({"claims": claims}))
        (run_dir / "report.md").write_text("# Validation report\n\nTwo of three claims held.\n")
    return run_dir


def chart_specs(at: AppTest) -> list[dict]:
    """The Vega-Lite specs of the page's Altair charts, in page order."""
    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def assert_charts_labelled(at: AppTest) -> None:
    """Every Altair chart on the page titles its x and y axes and its colour legend."""
    specs = chart_specs(at)
    assert specs, "the page shows no chart"
    for spec in specs:
        encoding = spec["encoding"]
        for channel in ("x", "y", "color"):
            assert encoding.get(channel, {}).get("title"), f"chart {spec.get('title')!r}: {channel} has no title"


def chart_data(at: AppTest, title: str):
    """The data (a pandas DataFrame) drawn by the page's Altair chart titled ``title``."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    for chart in at.get("vega_lite_chart"):
        if json.loads(chart.proto.spec).get("title") == title:
            blobs = [d.data.data for d in chart.proto.datasets] or [chart.proto.data.data]
            return convert_arrow_bytes_to_pandas_df(blobs[0])
    raise KeyError(f"no chart titled {title!r}; titles: {[json.loads(c.proto.spec).get('title') for c in at.get('vega_lite_chart')]}")
