"""Loss residuals (Figure 2): the residual G = dL/dz of many algorithms on the same distribution, side by side."""

import io

import pandas as pd
import streamlit as st

from toykit.experiments import loss_residuals

st.set_page_config(page_title="Loss residuals", layout="wide")
st.title("Loss residuals (Figure 2)")
st.markdown(
    "Every algorithm moves the model through its residual G = dL/dz, the only factor of -eta A K G that the loss "
    "controls. On one toy response space (responses share attributes, so learning one moves similar ones) this page "
    "draws G and the distribution after a few steps for SFT, off-policy DPO (y- in a valley), on-policy DPO/IPO, "
    "SPIN, SPPO, SLiC, DPOP, SimPO and RPO. Responses are two tokens, as in a language model: the second token is "
    "predicted at a context set by the first, so y+ and y- are scored at different contexts. It illustrates Section 3 "
    "and Figure 2: a negative gradient on a valley y- squeezes mass into the argmax of y-'s own context, while "
    "on-policy negatives land on likely responses."
)

ALGORITHM_NAMES = list(loss_residuals.ALGORITHMS)
DEFAULTS = loss_residuals.Config()  # the page opens on the experiment's own defaults


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


@st.cache_data(show_spinner="Running every algorithm on the toy response space ...")
def _run(algorithms, peakiness, valley_quantile, eta, steps, beta, seed):
    cfg = loss_residuals.Config(algorithms=algorithms, peakiness=peakiness, valley_quantile=valley_quantile, eta=eta,
                                steps=steps, beta=beta, seed=seed)
    result = loss_residuals.run(cfg)
    table = pd.DataFrame.from_dict(result.summary["algorithms"], orient="index")
    start = {key: value for key, value in result.summary.items() if key != "algorithms"}
    return start, table, _png(loss_residuals.plot(result))


with st.sidebar:
    algorithms = st.multiselect("Algorithms", ALGORITHM_NAMES, default=list(DEFAULTS.algorithms), key="algorithms",
                                format_func=lambda name: loss_residuals.ALGORITHMS[name].label)
    peakiness = st.slider("Peakiness of the initial pi", 0.25, 5.0, DEFAULTS.peakiness, 0.25, key="peakiness")
    valley_quantile = st.slider("Rank of the off-policy y- (quantile; 1 = deepest valley)", 0.0, 1.0,
                                DEFAULTS.valley_quantile, 0.05, key="valley_quantile")
    eta = st.select_slider("Learning rate eta", sorted({0.1, 0.5, 1.0, 2.0, 5.0, DEFAULTS.eta}), value=DEFAULTS.eta,
                           key="eta")
    steps = st.slider("SGD steps", 1, 50, DEFAULTS.steps, key="steps")
    beta = st.select_slider("beta", sorted({0.01, 0.05, 0.1, 0.5, 1.0, DEFAULTS.beta}), value=DEFAULTS.beta,
                            key="beta")
    seed = st.number_input("Seed", min_value=0, value=0, step=1, key="seed")

if not algorithms:
    st.error("Choose at least one algorithm.")
    st.stop()
try:
    start, table, figure = _run(tuple(algorithms), peakiness, valley_quantile, eta, steps, beta, int(seed))
except ValueError as err:
    st.error(f"Cannot run this setting: {err}")
    st.stop()

cols = st.columns(4)
cols[0].metric(f"tokens V = {start['vocab']}", f"{start['num_responses']} responses of {start['length']} tokens")
cols[1].metric(f"initial argmax = {start['initial_argmax']}", f"pi = {start['initial_pi_argmax']:.3f}")
cols[2].metric(f"dataset y+ = {start['dataset_chosen']}", f"pi = {start['initial_pi_chosen']:.3g}")
cols[3].metric(f"dataset y- = {start['dataset_rejected']}", f"pi = {start['initial_pi_rejected']:.3g}")
st.image(figure, caption="One column per algorithm: G at the first step and pi before vs after the steps, at the shared "
                         "prompt context and at y-'s own second-token context.")
st.subheader(f"After {steps} step(s): where the mass went")
st.caption(start.get("note", ""))
st.dataframe(table, width="stretch")
