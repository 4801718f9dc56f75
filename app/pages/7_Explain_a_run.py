"""Explain a run: what moved every probe, term by term, along the real optimizer steps; and its forecast."""

from pathlib import Path

import streamlit as st

from llm import explain_report

st.set_page_config(page_title="Explain a run", layout="wide")
st.title("Explain a run: which term of the loss moved each probe")
st.markdown(
    "A run trained with `--explain-prompts N` records, at every optimizer step, the first-order change "
    "<grad log pi(y_o), Delta theta> of every probe response along the **real** update (SGD, AdamW or RMSprop, "
    "momentum included), split into the loss's terms: the **y+ pull** (gradient through log pi(y+)), the **y- push** "
    "(through log pi(y-)), for rpo and orpo their **y+ (NLL)** term on its own, and weight decay; the optimizer's "
    "rounding (~1e-7 of the update) is added to the last term. Black: the measured change of the summed "
    "log-prob from step 0; dashed: the sum of the terms; bands: each term. A forecast (`python -m llm forecast`, the "
    "model linearised at the start and trained with the same recipe) is overlaid in red, with a line where it parts "
    "from the real run; both are averaged over the attributed prompts."
)


def _fail(message: str) -> None:
    st.error(message)
    st.stop()


@st.cache_data(ttl=10, show_spinner=False)
def _runs(folder: str) -> tuple[list[str], list[str]]:
    return ([str(p) for p in explain_report.list_explained_runs(folder)],
            [str(p) for p in explain_report.list_forecast_runs(folder)])


@st.cache_data(ttl=10, show_spinner="Reading the attribution ...")
def _explain(run_dir: str, forecast_dir: str, tolerance: float):
    expl = explain_report.load_explanation(run_dir)
    comparison = explain_report.forecast_comparison(run_dir, forecast_dir, tolerance) if forecast_dir else None
    figure = explain_report.plot_explanation(expl, comparison)
    return (explain_report.format_explanation(expl), explain_report.explanation_table(expl), comparison, figure,
            explain_report.pair_tables(run_dir), explain_report.cost_report(run_dir, forecast_dir or None))


with st.sidebar:
    folder = st.text_input("Run folder", value=st.query_params.get("folder", "runs"), key="folder",
                           help="A folder holding run directories (searched recursively for explain/ records).")
try:
    explained, forecasts = _runs(folder)
except ValueError as err:
    _fail(str(err))
if not explained:
    _fail(f"No run with an attribution under {folder!r}. Record one with `python -m llm dpo --explain-prompts 16 "
          f"--out-dir runs/d`, or type another folder in the sidebar.")
with st.sidebar:
    asked = st.query_params.get("run")  # the LLM runs page links here with ?folder=...&run=...
    run = st.selectbox("Run", explained, key="run", format_func=lambda p: Path(p).name,
                       index=explained.index(asked) if asked in explained else 0)
    forecast = st.selectbox("Forecast to overlay", ["", *forecasts], key="forecast",
                            format_func=lambda p: Path(p).name if p else "none")
    tolerance = st.slider("Forecast parts at a gap of (x the largest movement)", 0.05, 0.5, 0.15, 0.05,
                          key="tolerance")
try:
    text, table, comparison, figure, pairs, cost = _explain(run, forecast, tolerance)
except (ValueError, FileNotFoundError, KeyError) as err:
    _fail(str(err))

st.pyplot(figure)
st.subheader("Change of the summed log-prob from step 0, by term (nats, mean over the attributed prompts)")
st.dataframe(table, hide_index=True)
st.code(text, language=None)
if comparison is not None:
    st.subheader("Forecast vs the real run (probe means at each evaluation)")
    st.dataframe(comparison, hide_index=True)
if pairs is not None:
    st.subheader("Pair diagnostics at the start: CHES, its variants and the eNTK's one-step change of y+")
    st.dataframe(pairs[0], hide_index=True)
    st.caption("Spearman rank correlations across pairs")
    st.dataframe(pairs[1])
st.caption("Cost (seconds, and multiples of the plain run): " + ", ".join(f"{k} {v:.2f}" for k, v in cost.items()))
