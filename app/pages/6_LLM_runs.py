"""LLM runs: probe curves of real finetuning runs, run comparison, the claims scoreboard, the paper's curves."""

from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from app.charts import PROBE_LABELS, line_chart
from app.paths import resolve_under_roots
from llm import explain_report, runs

st.set_page_config(page_title="LLM runs", layout="wide")
st.title("LLM runs: probe log-probs over finetuning")
st.markdown(
    "Each curve is the mean log-probability of one probe response type (y+, y-, rephrases, other prompts' answers, "
    "shuffled text, ...) over training, as written by `python -m llm` runs. It tests the paper's Section 5 claims on "
    "real language models: during SFT y+ and other prompts' answers rise while shuffled text falls; during off-policy "
    "DPO almost everything falls, y- fastest, while the argmax rises (the squeezing effect); extend-SFT softens that. "
    "The page opens on your `runs/` folder when it holds llm runs, else on the committed `results/` (the CPU and GPU "
    "validations)."
)

REDUCTION_LABELS = {"summed": "summed over tokens (nats)", "mean": "per-token mean (nats / token)"}
PAPER_RUNS = Path("..", "shared", "data", "paper_runs")  # the paper's logs, when a shared checkout is beside
CHART_HEIGHT = 420
EXPLAIN_PAGE = "pages/7_Explain_a_run.py"  # relative to the app's entry point, Home.py


@st.cache_data(ttl=10, show_spinner=False)
def _run_dirs(folder: str, cwd: str) -> list[str]:  # cwd: a relative folder is cached per working directory
    return [str(p) for p in runs.list_run_dirs(Path(cwd, folder), llm_only=True)]


@st.cache_data(ttl=10, show_spinner=False)
def _default_folder(cwd: str) -> str:
    return runs.default_run_folder([Path(cwd, "runs"), Path(cwd, "results")]).removeprefix(f"{cwd}/")


@st.cache_data(ttl=10, show_spinner=False)
def _metrics(run_dirs: tuple[str, ...]):
    return runs.read_runs(run_dirs)


@st.cache_data(show_spinner="Reading the paper's metrics log ...")
def _paper(path: str, eval_every: int):
    table = runs.read_paper_metrics(path, eval_every=eval_every)
    return table, table.attrs.get("segments", 1)


@st.cache_data(ttl=10, show_spinner=False)
def _explained(run_dir: str) -> list[tuple[str, str]]:
    """(run directory, one-line summary or the reading error) of every attribution record under ``run_dir``."""
    out = []
    for found in explain_report.list_explained_runs(run_dir):
        try:
            out.append((str(found), explain_report.summary_line(explain_report.load_explanation(found))))
        except (ValueError, KeyError, OSError) as err:
            out.append((str(found), f"cannot read it: {err}"))
    return out


def _labelled(frame):
    return frame.assign(probe=frame["probe"].map(lambda p: PROBE_LABELS.get(p, p)))


with st.sidebar:
    folder = st.text_input("Run folder", value=_default_folder(str(Path.cwd())), key="folder",
                           help="A folder holding run directories written by `python -m llm` (searched recursively; "
                                "toy-experiment folders are skipped).")
table = chosen = curves = None
reduction, probes = "summed", []
try:
    found = _run_dirs(str(resolve_under_roots(folder, "run folder")), str(Path.cwd()))
except ValueError as err:
    st.error(f"{err}. Type another folder in the sidebar (`results` holds the committed validations), or make a run "
             f"with `python -m llm sft` (seconds) or `python -m llm validate --preset cpu` (minutes).")
    found = None
if found is not None and not found:
    st.error(f"No run directories of llm runs (folders with a metrics.jsonl written by `python -m llm`) under "
             f"{folder!r}. "
             f"Make one with `python -m llm sft`, or type `results` in the sidebar for the committed validations.")

if found:
    root = Path(Path.cwd(), folder)
    names = {str(Path(d).relative_to(root)) if Path(d) != root else Path(d).name: d for d in found}
    if st.session_state.get("runs_folder") != folder:  # a new folder: start from its default selections
        st.session_state["runs_folder"] = folder
        for key in ("runs", "phase", "probes"):
            st.session_state.pop(key, None)
    with st.sidebar:
        chosen = st.multiselect("Runs to show (several to compare)", list(names), default=list(names)[:2],
                                key="runs")
        reduction = st.radio("Log-prob of a response", list(REDUCTION_LABELS), key="reduction",
                             format_func=REDUCTION_LABELS.get,
                             help="Summed log-probs are length-confounded; per-token means compare responses of "
                                  "different lengths.")
    if not chosen:
        st.error("Choose at least one run in the sidebar.")
    else:
        try:
            table = _metrics(tuple(names[n] for n in chosen))
        except ValueError as err:
            st.error(f"Cannot read the metrics of the chosen runs: {err}")

if table is not None:
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
            _labelled(curves), "examples_seen", "value", "probe", dash="run", x_title="training examples seen",
            y_title=f"mean log pi(y | x), {REDUCTION_LABELS[reduction]}", color_title="probe",
            dash_title="run (line style)", title=f"phase: {phase}", height=CHART_HEIGHT), width="stretch")
        st.caption("Change of each curve over the phase (last minus first evaluation):")
        st.dataframe(runs.curve_summary(curves), hide_index=True, width="stretch")

    training = runs.training_curves(table)
    if not training.empty:
        with st.expander("Training metrics (TRL names: loss, rewards/margins, ...)"):
            stats = sorted(set(training["statistic"]))
            stat = st.selectbox("Training metric", stats, key="train_stat")
            st.altair_chart(line_chart(training[training["statistic"] == stat], "step", "value", "run", dash="phase",
                                       x_title="optimizer step", y_title=stat, color_title="run",
                                       dash_title="phase (line style)"), width="stretch")

    records = [(name, found, line) for name in chosen for found, line in _explained(names[name])]
    if records:
        st.header("What moved the probes: the attribution")
        st.markdown("These runs were trained with `--explain-prompts N`: every probe's change along the real "
                    "optimizer steps, split into the loss's terms. The Explain page draws it, term by term.")
        for name, found, line in records:
            label = str(Path(found).relative_to(root)) if Path(found) != root else name
            st.markdown(f"**{label}**: {line}")
            try:
                st.page_link(EXPLAIN_PAGE, label=f"Explain {label}", icon=":material/query_stats:",
                             query_params={"folder": str(Path(found).parent), "run": found})
            except StreamlitPageNotFoundError:  # this page run on its own, outside the app (Home.py)
                st.caption(f"Open the app's 'Explain a run' page on the folder {Path(found).parent} to see it.")

    st.header("Claims scoreboard")
    any_claims = False
    for name in chosen:
        try:
            claims = runs.read_claims(names[name])
        except ValueError as err:
            if runs.read_report(names[name]) is not None or Path(names[name], "claims.json").exists():
                st.error(f"{name}: {err}")
            continue
        any_claims = True
        held, total = runs.claims_score(claims)
        st.subheader(name)
        st.metric("claims that held", f"{held} of {total}")
        st.dataframe(claims, hide_index=True, width="stretch")
        parts = runs.read_report_parts(names[name])
        if parts:
            with st.expander("report.md"):
                for kind, content in parts:
                    if kind == "image":
                        st.image(content)
                    else:
                        st.markdown(content)
    if not any_claims:
        st.info("None of the chosen runs is a validation run (no claims.json); `python -m llm validate` writes one.")

st.header("The paper's published curves")
known = sorted(str(p) for p in PAPER_RUNS.glob("*.jsonl")) if PAPER_RUNS.is_dir() else []
st.markdown("The paper's code logged the summed log-prob of every probe type, one JSON line per evaluation. Its "
            "logs come from the paper's repository (Joshua-Ren/Learning_dynamics_LLM); a checkout of this project "
            "with `../shared/data/paper_runs` beside it lists four of them below.")
picked = st.selectbox("A paper log found in ../shared/data/paper_runs", ["(none)", *known], key="paper_pick",
                      disabled=not known) if known else "(none)"
paper_path = st.text_input("or any metrics file in the paper's format (one JSON line per evaluation)", value="",
                           key="paper_path", help="e.g. <paper repo>/<run>/prob_train_metrics.jsonl")
paper_eval_every = st.select_slider("Training examples per evaluation of that run", runs.PAPER_EVAL_CHOICES,
                                    value=runs.PAPER_EVAL_EVERY, key="paper_eval_every",
                                    help="The paper's runs evaluated every 100, 500 or 1,000 examples; the log "
                                         "does not record which, so say it here to place the curve.")
source = paper_path.strip() or (picked if picked != "(none)" else "")
if source:
    try:
        paper, segments = _paper(str(resolve_under_roots(source, "paper metrics file")), paper_eval_every)
    except ValueError as err:
        st.error(f"Cannot read the paper's metrics: {err}")
        st.stop()
    if segments > 1:
        st.info(f"This log holds {segments} runs appended one after the other (its step count restarts); each is "
                f"drawn as its own curve, labelled '(restart k)'.")
    paper_all = sorted(set(runs.select_reduction(paper, "summed")["probe"]))
    paper_probes = st.multiselect("Probe types of the paper's log", paper_all, default=paper_all, key="paper_probes",
                                  format_func=lambda p: PROBE_LABELS.get(p, p))
    paper_curves = runs.probe_curves(paper, "summed", probes=paper_probes)
    label = paper["run"].iloc[0]
    st.altair_chart(line_chart(
        _labelled(paper_curves), "examples_seen", "value", "probe", dash="run" if segments > 1 else None,
        x_title=f"training examples seen ({paper_eval_every} per evaluation)",
        y_title="mean log pi(y | x), summed over tokens (nats)", color_title="probe", dash_title="segment",
        title=f"paper: {label}", height=CHART_HEIGHT), width="stretch")
    if curves is not None and reduction == "summed" and not curves.empty:
        overlay = runs.overlay_with_paper(curves, paper)
        if overlay.empty:
            st.info("The runs and the paper's file share no probe names, so there is nothing to overlay.")
        else:
            st.altair_chart(line_chart(
                _labelled(overlay), "progress", "value", "probe", dash="source",
                x_title="fraction of the phase's training examples",
                y_title="mean log pi(y | x), summed over tokens (nats)", color_title="probe",
                dash_title="source (line style)", title="overlay: this run vs the paper", height=CHART_HEIGHT),
                width="stretch")
    elif curves is not None and reduction == "mean":
        st.info("The paper's code logged summed log-probs only: switch to 'summed' to overlay them on the runs.")
    elif curves is None:
        st.caption("Choose llm runs above to overlay them on the paper's curves.")
