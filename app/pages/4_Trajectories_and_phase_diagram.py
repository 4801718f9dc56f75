"""Trajectories and the phase diagram: many steps of each loss on a toy softmax, and where DPO lowers y+."""

import itertools

import pandas as pd
import streamlit as st

from app.charts import heatmap, line_chart
from toykit.experiments import phase_diagram, trajectories

st.set_page_config(page_title="Trajectories and the phase diagram", layout="wide")
st.title("Trajectories and the phase diagram")
st.markdown(
    "**Trajectories:** many SGD steps of each loss on a toy policy (a softmax at the chosen context x+ and one at the "
    "rejected context x-, coupled by K = rho I), from a flat or a peaky start with y- in a valley or on the peak. "
    "Off-policy DPO from a peaky start squeezes: pi(y-) falls, the argmax gains, and even pi(y+) can fall "
    "(Section 5, Figure 4). **Phase diagram:** the same simulation over a grid of peakiness and rank of y-, marking "
    "where y+ fell; DPOP, RPO, IPO and on-policy sampling shrink that region."
)

ALGORITHMS = ["sft", "dpo", "ipo", "dpop", "rpo", "simpo", "slic", "dpo@on_policy"]
DEFAULTS = trajectories.Config()
ETAS = sorted({0.1, 0.3, 1.0, DEFAULTS.eta})
STEPS = 100  # the page opens at 100 SGD steps (seconds on a CPU); the experiments' defaults run longer


@st.cache_data(show_spinner="Simulating the trajectories: every start x algorithm, step by step ...")
def _trajectories(algorithms, steps, eta, rho, seed):
    cfg = trajectories.Config(algorithms=algorithms, steps=steps, eta=eta, rho=rho, seed=seed)
    result = trajectories.run(cfg)
    runs = [{"start/algorithm": name, **values} for name, values in result.summary["runs"].items()]
    return pd.json_normalize(runs), result.summary["claims"], pd.DataFrame(trajectories.panel_table(result))


@st.cache_data(show_spinner="Simulating the phase-diagram grid (peakiness x rank of y-, per algorithm) ...")
def _phase(algorithms, steps, eta, vocab, rho, seed):
    cfg = phase_diagram.Config(algorithms=algorithms, steps=steps, etas=(eta,), vocab_sizes=(vocab,), rho=rho,
                               seed=seed)
    result = phase_diagram.run(cfg)
    per_alg = [{"algorithm": name, **values} for name, values in result.summary["per_algorithm"].items()]
    return pd.json_normalize(per_alg), result.summary["claims"], pd.DataFrame(phase_diagram.cell_table(result))


def _measured_text(measured) -> str:
    if not isinstance(measured, dict):
        return str(measured)
    return ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in measured.items())


def _claims_table(claims) -> pd.DataFrame:
    """Verdict first, then the claim and its measured values as text (not JSON), then the paper's reference."""
    return pd.DataFrame([{"holds": "yes" if c.get("held") else "no", "claim": c["claim"],
                          "measured": _measured_text(c.get("measured")), "reference": c.get("reference", "")}
                         for c in claims])


def _show_claims(claims, title: str) -> None:
    st.subheader(title)
    st.dataframe(_claims_table(claims), hide_index=True, width="stretch",
                 column_config={"holds": st.column_config.TextColumn("holds", width="small"),
                                "claim": st.column_config.TextColumn("claim", width="large"),
                                "measured": st.column_config.TextColumn("measured", width="large")})


with st.sidebar:
    st.header("Shared settings")
    steps = st.slider("SGD steps T", 20, 300, STEPS, 10, key="steps")
    eta = st.select_slider("Learning rate eta", ETAS, value=DEFAULTS.eta, key="eta")
    rho = st.slider("Coupling rho of x+ and x- (K = rho I)", 0.0, 1.0, DEFAULTS.rho, 0.05, key="rho")
    seed = st.number_input("Seed (on-policy draws)", min_value=0, value=DEFAULTS.seed, step=1, key="seed")

traj_tab, phase_tab = st.tabs(["Trajectories", "Phase diagram"])
with traj_tab:
    algorithms = st.multiselect("Algorithms", ALGORITHMS, default=["sft", "dpo", "dpop"], key="traj_algorithms")
    if not algorithms:
        st.error("Choose at least one algorithm.")
    else:
        try:
            runs, claims, figure = _trajectories(tuple(algorithms), steps, eta, rho, int(seed))
        except ValueError as err:
            st.error(f"Cannot run this setting: {err}")
        else:
            start = st.selectbox("Start", trajectories.STARTS, index=trajectories.STARTS.index("peaky/valley"),
                                 key="traj_start", help="flat or peaky start; y- in a valley or on the peak")
            shown = figure[figure["start"] == start]
            for column, panel in zip(itertools.cycle(st.columns(3)), dict.fromkeys(shown["panel"])):
                column.altair_chart(line_chart(
                    shown[shown["panel"] == panel], "step", "value", "algorithm", x_title="SGD step",
                    y_title=panel if "entropy" in panel else f"{panel} (per token, log scale)",
                    log_y="entropy" not in panel, color_title="algorithm", title=f"{start}: {panel}", height=240),
                    width="stretch")
            if "ipo" in algorithms:
                st.info(f"IPO: pi(y-) at x- jumps to about 1 within the first recorded steps here (step 5 at eta = "
                        f"{eta}, step 10 at eta = 0.1). IPO regresses the margin to its target 1/(2 beta) (beta = "
                        f"{DEFAULTS.beta} here) with a squared loss whose gradient grows with the gap, so "
                        f"on this small toy policy its first steps are large; that is the loss's step size, not the "
                        f"squeezing effect.")
            if claims:
                _show_claims(claims, "Claims checked in this run")
            st.subheader("Change from step 0 to T per start and algorithm")
            st.dataframe(runs, hide_index=True, width="stretch")

with phase_tab:
    phase_algorithms = st.multiselect("Algorithms", ALGORITHMS, default=["dpo", "dpop"],
                                      key="phase_algorithms")
    vocab = st.select_slider("Vocabulary size V", [10, 20, 50], value=50, key="vocab")
    if not phase_algorithms:
        st.error("Choose at least one algorithm.")
    else:
        try:
            per_alg, phase_claims, phase_figure = _phase(tuple(phase_algorithms), steps, eta, vocab, rho, int(seed))
        except ValueError as err:
            st.error(f"Cannot run this setting: {err}")
        else:
            columns = st.columns(len(phase_algorithms))
            for column, alg in zip(columns, phase_algorithms):
                column.altair_chart(heatmap(
                    phase_figure[phase_figure["algorithm"] == alg], "peakiness", "rejected_quantile",
                    "delta_logp_chosen", x_title="peakiness of the start", y_title="rank of y- (quantile)",
                    value_title="Delta log pi(y+|x+)", title=f"{alg}: change of log pi(y+ | x+)", size=260,
                    tooltip=("fell", "diverged")))
            st.caption(f"Change of log pi(y+|x+) (nats per token) after {steps} steps; red: y+ rose, blue: y+ fell "
                       f"(the hover says whether the cell counts as 'fell' or diverged).")
            if phase_claims:
                _show_claims(phase_claims, "Claims checked on this grid")
            st.subheader("Per algorithm: fraction of the grid where y+ fell")
            st.dataframe(per_alg, hide_index=True, width="stretch")
