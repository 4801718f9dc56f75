"""Loss residuals (Figure 2): the residual G = dL/dz of many algorithms on the same distribution, side by side."""

import pandas as pd
import streamlit as st

from app.charts import bar_chart, line_chart
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


@st.cache_data(show_spinner="Running the chosen algorithms' SGD steps on the toy response space ...")
def _run(algorithms, peakiness, valley_quantile, eta, steps, beta, seed):
    cfg = loss_residuals.Config(algorithms=algorithms, peakiness=peakiness, valley_quantile=valley_quantile, eta=eta,
                                steps=steps, beta=beta, seed=seed)
    result = loss_residuals.run(cfg)
    table = pd.DataFrame.from_dict(result.summary["algorithms"], orient="index")
    start = {key: value for key, value in result.summary.items() if key != "algorithms"}
    return start, table, pd.DataFrame(loss_residuals.panel_table(result))


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
    start, table, panels = _run(tuple(algorithms), peakiness, valley_quantile, eta, steps, beta, int(seed))
except ValueError as err:
    st.error(f"Cannot run this setting: {err}")
    st.stop()

cols = st.columns(4)
cols[0].metric(f"responses of {start['length']} tokens (V = {start['vocab']} tokens)", f"{start['num_responses']}")
cols[1].metric(f"initial argmax = {start['initial_argmax']}", f"pi = {start['initial_pi_argmax']:.3f}")
cols[2].metric(f"dataset y+ = {start['dataset_chosen']}", f"pi = {start['initial_pi_chosen']:.3g}")
cols[3].metric(f"dataset y- = {start['dataset_rejected']}", f"pi = {start['initial_pi_rejected']:.3g}")

st.subheader("G of every algorithm at the first step")
contexts = list(dict.fromkeys(panels["context"]))
left, right = st.columns(2)
for column, context in zip((left, right), contexts):
    column.altair_chart(line_chart(
        panels[panels["context"] == context], "rank", "minus_G", "label", x_title=f"token, by initial rank at {context}",
        y_title="-G = -dL/dz (first step)", color_title="algorithm", title=f"-G at {context}", height=300),
        width="stretch")
st.caption("-G is the direction each algorithm pushes the logits (Proposition 1: Delta z = -eta K G). At the prompt "
           "every algorithm pushes y+'s first token up; at y-'s own second-token context only the losses with a "
           "negative response push (SFT and the other single-response losses leave it at 0, a flat line).")

st.subheader("One algorithm in detail: G and pi before vs after the steps")
shown = st.selectbox("Algorithm", algorithms, key="detail", index=algorithms.index("dpo_offpolicy")
                     if "dpo_offpolicy" in algorithms else 0,
                     format_func=lambda name: loss_residuals.ALGORITHMS[name].label)
detail = panels[panels["algorithm"] == shown]
columns = st.columns(len(contexts))
for column, context in zip(columns, contexts):
    part = detail[detail["context"] == context]
    column.altair_chart(bar_chart(part, "rank", "minus_G", "role", x_title=f"token, by initial rank at {context}",
                                  y_title="-G (first step)", color_title="token", title=f"-G at {context}"),
                        width="stretch")
    column.altair_chart(line_chart(
        part.melt(id_vars=["rank", "role"], value_vars=["pi_before", "pi_after"], var_name="when", value_name="pi"),
        "rank", "pi", "when", x_title=f"token, by initial rank at {context}", y_title="pi(token)",
        color_title="distribution", title=f"pi at {context}: before vs after {steps} step(s)", height=260),
        width="stretch")
if float(table.loc[shown, "G_norm_context"]) == 0.0 and len(contexts) > 1:
    st.info(f"{loss_residuals.ALGORITHMS[shown].label} scores no response at y-'s context, so its G there is 0 and "
            f"the -G panel is empty: nothing is pushed down, and pi there moves only through the shared features.")

st.subheader(f"After {steps} step(s): where the mass went")
st.caption(start.get("note", ""))
st.dataframe(table, width="stretch")
