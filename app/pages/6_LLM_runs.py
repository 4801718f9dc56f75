"""LLM runs: probe curves of real finetuning runs, run comparison, the claims scoreboard, the paper's curves."""

from pathlib import Path

import streamlit as st

from app.charts import PROBE_LABELS, line_chart
from llm import runs

st.set_page_config(page_title="LLM runs", layout="wide")
st.title("LLM runs: probe log-probs over finetuning")
st.markdown(
    "Each curve is the mean log-probability of one probe response type (y+, y-, rephrases, other prompts' answers, "
    "shuffled text, ...) over training, as written by `python -m llm` runs. It tests the paper's Section 5 claims on "
    "real language models: during SFT y+ and other prompts' answers rise while shuffled text falls; during off-policy "
    "DPO almost everything falls, y- fastest, while the argmax rises (the squeezing effect); extend-SFT softens that."
)

REDUCTION_LABELS = {"summed": "summed over tokens (nats)", "mean": "per-token mean (nats / token)"}


@st.cache_data(ttl=10, show_spinner=False)
def _run_dirs(folder: str) -> list[str]:
    return [str(p) for p in runs.list_run_dirs(folder)]


@st.cache_data(ttl=10, show_spinner=False)
def _metrics(run_dirs: tuple[str, ...]):
    return runs.read_runs(run_dirs)


@st.cache_data(show_spinner=False)
def _paper(path: str):
    return runs.read_paper_metrics(path)


def _fail(message: str) -> None:
    st.error(message)
    st.stop()


with st.sidebar:
    folder = st.text_input("Run folder", value="runs", key="folder",
                           help="A folder holding run directories written by `python -m llm` (searched recursively).")
try:
    found = _run_dirs(folder)
except ValueError as err:
    _fail(str(err))
if not found:
    _fail(f"No run directories (folders with a metrics.jsonl) under {folder!r}. Train one with `python -m llm sft` "
          f"or `python -m llm validate --preset cpu`, or type another folder in the sidebar.")

names = {str(Path(d).relative_to(folder)) if Path(d) != Path(folder) else Path(d).name: d for d in found}
if st.session_state.get("runs_folder") != folder:  # a new folder: start from its default selections
    st.session_state["runs_folder"] = folder
    for key in ("runs", "phase", "probes"):
        st.session_state.pop(key, None)
with st.sidebar:
    chosen = st.multiselect("Runs to show (several to compare)", list(names), default=list(names)[:2], key="runs")
    reduction = st.radio("Log-prob of a response", list(REDUCTION_LABELS), key="reduction",
                         format_func=REDUCTION_LABELS.get,
                         help="Summed log-probs are length-confounded; per-token means compare responses of "
                              "different lengths.")
if not chosen:
    _fail("Choose at least one run in the sidebar.")

try:
    table = _metrics(tuple(names[n] for n in chosen))
except ValueError as err:
    _fail(f"Cannot read the metrics of the chosen runs: {err}")

phases = list(dict.fromkeys(table["phase"]))
all_probes = sorted(set(runs.select_reduction(table, reduction)["probe"]))
with st.sidebar:
    phase = st.selectbox("Phase", phases, key="phase") if len(phases) > 1 else (phases[0] if phases else None)
    probes = st.multiselect("Probes", all_probes, default=all_probes, key="probes",
                            format_func=lambda p: PROBE_LABELS.get(p, p))

st.header("Probe curves")
curves = runs.probe_curves(table, reduction, phase=phase, probes=probes)
if curves.empty:
    st.warning(f"The chosen runs have no {REDUCTION_LABELS[reduction]} probe log-probs for phase {phase!r}.")
else:
    st.altair_chart(line_chart(
        curves.assign(probe=curves["probe"].map(lambda p: PROBE_LABELS.get(p, p))),
        "examples_seen", "value", "probe", dash="run", x_title="training examples seen",
        y_title=f"mean log pi(y | x), {REDUCTION_LABELS[reduction]}", color_title="probe", dash_title="run",
        title=f"phase: {phase}"), width="stretch")
    st.caption("Change of each curve over the phase (last minus first evaluation):")
    st.dataframe(runs.curve_summary(curves), hide_index=True, width="stretch")

training = runs.training_curves(table)
if not training.empty:
    with st.expander("Training metrics (TRL names: loss, rewards/margins, ...)"):
        stats = sorted(set(training["statistic"]))
        stat = st.selectbox("Training metric", stats, key="train_stat")
        st.altair_chart(line_chart(training[training["statistic"] == stat], "step", "value", "run", dash="phase",
                                   x_title="optimizer step", y_title=stat, color_title="run", dash_title="phase"),
                        width="stretch")

st.header("Claims scoreboard")
any_claims = False
for name in chosen:
    report = runs.read_report(names[name])
    try:
        claims = runs.read_claims(names[name])
    except ValueError as err:
        if report is not None or Path(names[name], "claims.json").exists():
            st.error(f"{name}: {err}")
        continue
    any_claims = True
    held, total = runs.claims_score(claims)
    st.subheader(name)
    st.metric("claims that held", f"{held} of {total}")
    st.dataframe(claims, hide_index=True, width="stretch")
    if report is not None:
        with st.expander("report.md"):
            st.markdown(report)
if not any_claims:
    st.info("None of the chosen runs is a validation run (no claims.json); `python -m llm validate` writes one.")

st.header("The paper's published curves")
paper_path = st.text_input("Metrics file in the paper's format (one JSON line per evaluation)", value="",
                           key="paper_path",
                           help="e.g. a file from the paper repository's metric logs, such as "
                                "../shared/data/paper_runs/base_dpo_qwen_ep6.jsonl")
if paper_path.strip():
    try:
        paper = _paper(paper_path.strip())
    except ValueError as err:
        _fail(f"Cannot read the paper's metrics: {err}")
    paper_curves = runs.probe_curves(paper, "summed", probes=[*probes, "argmax_teacher_forced"])
    st.altair_chart(line_chart(
        paper_curves.assign(probe=paper_curves["probe"].map(lambda p: PROBE_LABELS.get(p, p))),
        "examples_seen", "value", "probe", x_title="training examples seen",
        y_title="mean log pi(y | x), summed over tokens (nats)", color_title="probe",
        title=f"paper: {paper['run'].iloc[0]}"), width="stretch")
    if reduction == "summed" and not curves.empty:
        overlay = runs.overlay_with_paper(curves, paper)
        if overlay.empty:
            st.info("The run and the paper's file share no probe names, so there is nothing to overlay.")
        else:
            st.altair_chart(line_chart(
                overlay.assign(probe=overlay["probe"].map(lambda p: PROBE_LABELS.get(p, p))),
                "progress", "value", "probe", dash="source", x_title="fraction of the phase's training examples",
                y_title="mean log pi(y | x), summed over tokens (nats)", color_title="probe", dash_title="source",
                title="overlay: this run vs the paper"), width="stretch")
    elif reduction == "mean":
        st.info("The paper's code logged summed log-probs only: switch to 'summed' to overlay them on the runs.")
