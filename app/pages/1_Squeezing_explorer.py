"""Squeezing explorer: a negative gradient on one label of a softmax, and where its probability mass goes."""

import pandas as pd
import streamlit as st

from app.charts import bar_chart, line_chart, point_chart
from toykit.experiments import squeeze_explorer

st.set_page_config(page_title="Squeezing explorer", layout="wide")
st.title("Squeezing explorer")
st.markdown(
    "One exact gradient step on a linear softmax pushes the label **ybar** down (a negative gradient, as DPO does to "
    "the rejected response) and/or pulls **y+** up. The paper's squeezing effect (Section 4, claims 1-5): pi(ybar) "
    "falls, the mass goes to the most likely label y*, only labels above the threshold (1/c) log Z rise, and the "
    "effect is strongest when pi is peaky and ybar sits in a valley. The page opens on pi = Softmax(g / T) with "
    f"T = {squeeze_explorer.Config().temperature} (a fairly peaky start; 'peaky' in the sidebar is the notebook's "
    "sharper one) and the least likely label pushed down: only the few labels above the threshold rise, y* first, "
    "and every other label falls."
)

DEFAULTS = squeeze_explorer.Config()
LABEL_CHOICES = ["valley", "peak", "index", "none"]
LABEL_HELP = "valley = the least likely label, peak = the most likely, index = a label you type, none = no step"


@st.cache_data(show_spinner=False)
def _run(num_classes, start, temperature, negative, positive, eta, steps, seed):
    cfg = squeeze_explorer.Config(num_classes=num_classes, start=start, temperature=temperature, negative=negative,
                                  positive=positive, eta=eta, steps=steps, seed=seed)
    result = squeeze_explorer.run(cfg)
    return (result.summary, result.claims, squeeze_explorer.distribution_table(result),
            squeeze_explorer.trajectory_table(result))


def _label_widget(title: str, default: str, key: str) -> str:
    choice = st.radio(title, LABEL_CHOICES, index=LABEL_CHOICES.index(default), key=key, horizontal=True,
                      help=LABEL_HELP)
    if choice != "index":
        return choice
    return str(st.number_input(f"{title}: index", min_value=0, value=0, step=1, key=f"{key}_index"))


with st.sidebar:
    num_classes = st.slider("Vocabulary size V", 2, 200, DEFAULTS.num_classes, key="num_classes")
    start = st.radio("Start distribution", squeeze_explorer.STARTS, key="start",
                     help="temperature: Softmax(g / T), g ~ N(0, I); uniform: 1/V; peaky: the paper notebook's "
                          "peaky pi (one GD step toward a multi-hot target)")
    temperature = st.slider("Temperature T (small = peaky)", 0.05, 5.0, DEFAULTS.temperature, 0.05, key="temperature",
                            disabled=start != "temperature")
    negative = _label_widget("Negative gradient on ybar", DEFAULTS.negative, "negative")
    positive = _label_widget("Positive gradient on y+", DEFAULTS.positive, "positive")
    eta = st.slider("Step size c = eta ||x||^2", 0.05, 5.0, DEFAULTS.eta, 0.05, key="eta")
    steps = st.slider("Number of steps", 1, 50, DEFAULTS.steps, key="steps")
    seed = st.number_input("Seed", min_value=0, value=DEFAULTS.seed, step=1, key="seed")

try:
    summary, claims, table, trajectory = _run(num_classes, start, temperature, negative, positive, eta, steps,
                                              int(seed))
except ValueError as err:
    st.error(f"Cannot run this setting: {err}")
    st.stop()

cols = st.columns(4)
cols[0].metric("labels that rose", f"{summary['num_rose']} of {num_classes}")
cols[1].metric(f"mass moved to y* = {summary['y_star']}", f"{summary['mass_to_ystar']:+.4f}")
if summary["pi_ybar"] is not None:
    cols[2].metric(f"pi(ybar = {summary['ybar']})", f"{summary['pi_ybar'][1]:.3g}",
                   help=f"before: {summary['pi_ybar'][0]:.3g}")
    cols[3].metric("rise threshold (1/c) log Z (first step)", f"{summary['threshold_first_step']:.4g}")
if summary["pi_y_plus"] is not None:
    st.caption(f"pi(y+ = {summary['y_plus']}): {summary['pi_y_plus'][0]:.4g} -> {summary['pi_y_plus'][1]:.4g}")
st.markdown(f"**Labels that rose:** {', '.join(map(str, summary['labels_rose'])) or 'none'}")

frame = pd.DataFrame(table)
left, right = st.columns(2)
left.altair_chart(bar_chart(frame, "label", "pi", "when", offset="when", x_title="label", y_title="pi(label)",
                            color_title="distribution", title="pi before and after (linear scale)"), width="stretch")
right.altair_chart(point_chart(frame, "label", "pi", "when", x_title="label", y_title="pi(label), log scale",
                               color_title="distribution", log_y=True, title="pi before and after (log scale)"),
                   width="stretch")
if steps > 1:
    st.altair_chart(line_chart(pd.DataFrame(trajectory), "step", "pi", "probability", x_title="step",
                               y_title="probability", color_title="label", title="pi over the steps"),
                    width="stretch")

st.subheader(f"Claims checked on the first step: {summary['claims_held']} of {summary['claims']} hold")
st.dataframe(pd.DataFrame(claims), hide_index=True, width="stretch")
