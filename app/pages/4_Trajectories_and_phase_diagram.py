"""Trajectories and the phase diagram: many steps of each loss on a toy softmax, and where DPO lowers y+."""

import io
import json

import pandas as pd
import streamlit as st

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


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


@st.cache_data(show_spinner="Simulating the trajectories ...")
def _trajectories(algorithms, steps, eta, rho, seed):
    cfg = trajectories.Config(algorithms=algorithms, steps=steps, eta=eta, rho=rho, seed=seed)
    result = trajectories.run(cfg)
    runs = [{"start/algorithm": name, **values} for name, values in result.summary["runs"].items()]
    return pd.json_normalize(runs), result.summary["claims"], _png(trajectories.plot(result))


@st.cache_data(show_spinner="Simulating the phase-diagram grid ...")
def _phase(algorithms, steps, eta, vocab, rho, seed):
    cfg = phase_diagram.Config(algorithms=algorithms, steps=steps, etas=(eta,), vocab_sizes=(vocab,), rho=rho,
                               seed=seed)
    result = phase_diagram.run(cfg)
    per_alg = [{"algorithm": name, **values} for name, values in result.summary["per_algorithm"].items()]
    return pd.json_normalize(per_alg), result.summary["claims"], _png(phase_diagram.plot(result))


def _claims_table(claims) -> pd.DataFrame:
    return pd.DataFrame([{**claim, "measured": json.dumps(claim["measured"])} for claim in claims])


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
            st.image(figure, caption="Rows: start (flat/peaky, y- in a valley or on the peak); lines: algorithms. "
                                     "Probabilities on a log scale.")
            if claims:
                st.subheader("Claims checked in this run")
                st.dataframe(_claims_table(claims), hide_index=True, width="stretch")
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
            st.image(phase_figure, caption="Change of log pi(y+|x+) after T steps over the start's peakiness "
                                           "(x axis) and the rank of y- (y axis); x marks cells where y+ fell.")
            if phase_claims:
                st.subheader("Claims checked on this grid")
                st.dataframe(_claims_table(phase_claims), hide_index=True, width="stretch")
            st.subheader("Per algorithm: fraction of the grid where y+ fell")
            st.dataframe(per_alg, hide_index=True, width="stretch")
