"""One-step decomposition: A, K and G of a toy model, predicted vs actual Delta log pi, and the eta^2 law."""

import pandas as pd
import streamlit as st

from app.charts import bar_chart, heatmap, line_chart, point_chart
from toykit.experiments import one_step
from toykit.losses import loss_names

st.set_page_config(page_title="One-step decomposition", layout="wide")
st.title("One-step decomposition (Proposition 1)")
st.markdown(
    "A toy model takes one SGD step on (x_u, y_u). Proposition 1 predicts the change of log pi on every observed input "
    "as **Delta log pi(x_o) = -eta A(x_o) K(x_o, x_u) G(x_u)**: A = I - 1 pi^T from the current prediction, K the "
    "empirical NTK, G = dL/dz set by the loss. Below, the prediction is compared with the real step, and its error "
    "shrinks like eta^2 (slope 2 on the log-log plot), which is the claim of the proposition."
)

ETAS = [0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.3, 0.5, 1.0]


@st.cache_data(show_spinner="Computing A, K, G and the real step ...")
def _run(model, num_classes, num_observed, loss, y_u, eta, seed):
    cfg = one_step.Config(model=model, num_classes=num_classes, num_observed=num_observed, loss=loss, y_u=y_u,
                          eta=eta, seed=seed)
    result = one_step.run(cfg)
    observed = [one_step.matrix_table(a) for a in result.A], [one_step.matrix_table(k) for k in result.K]
    return (result.summary, observed, one_step.residual_table(result), one_step.change_table(result),
            one_step.sweep_table(result))


with st.sidebar:
    model = st.radio("Model", one_step.MODELS, index=1, key="model", help="linear softmax z = W x, or a tanh MLP")
    loss = st.selectbox("Loss", loss_names(), index=loss_names().index("sft"), key="loss")
    num_classes = st.slider("Number of classes V", 2, 12, 6, key="num_classes")
    num_observed = st.slider("Observed inputs N_o (x_o[0] = x_u)", 1, 8, 4, key="num_observed")
    y_u = st.number_input("Chosen label y_u", min_value=0, value=0, step=1, key="y_u")
    eta = st.select_slider("Learning rate eta", ETAS, value=0.05, key="eta")
    seed = st.number_input("Seed", min_value=0, value=0, step=1, key="seed")

try:
    summary, (a_tables, k_tables), residual, change, sweep = _run(model, num_classes, num_observed, loss, int(y_u),
                                                                  eta, int(seed))
except ValueError as err:
    st.error(f"Cannot run this setting: {err}")
    st.stop()

cols = st.columns(4)
cols[0].metric("correlation, predicted vs actual", f"{summary['correlation']:.4f}")
cols[1].metric("relative error ||pred - actual|| / ||actual||", f"{summary['relative_error']:.3g}")
cols[2].metric("log-log slope of the error vs eta", f"{summary['slope']:.2f}", help="2 means the error is O(eta^2)")
cols[3].metric("Delta log pi(y_u | x_u)", f"{summary['delta_log_pi_chosen_self']:+.4f}")
if summary["y_rejected"] >= 0:
    st.caption(f"Paired loss: the rejected label y- = {summary['y_rejected']} is the least likely label at x_u.")

observed = st.selectbox("Observed input for A and K", range(num_observed), key="observed",
                        format_func=lambda n: f"x_o[{n}] = x_u" if n == 0 else f"x_o[{n}]")
left, middle, right = st.columns(3)
left.altair_chart(heatmap(pd.DataFrame(a_tables[observed]), "column", "row", "value", x_title="label j (logit z_j)",
                          y_title="label i (log pi_i)", value_title="A[i, j]", title="A(x_o) = I - 1 pi^T"))
middle.altair_chart(heatmap(pd.DataFrame(k_tables[observed]), "column", "row", "value", x_title="logit at x_u",
                            y_title="logit at x_o", value_title="K", title="K(x_o, x_u), the eNTK"))
right.altair_chart(bar_chart(pd.DataFrame(residual), "label", "G", "role", x_title="label",
                             y_title="G = dL/dz at x_u", color_title="label role", title=f"G for {loss}"),
                   width="stretch")

left, right = st.columns(2)
left.altair_chart(point_chart(pd.DataFrame(change), "actual", "predicted", "observed",
                              x_title="actual Delta log pi (real step)", y_title="predicted -eta A K G",
                              color_title="observed input", title=f"predicted vs actual at eta = {eta}"),
                  width="stretch")
right.altair_chart(line_chart(pd.DataFrame(sweep), "eta", "error", "series", log_x=True, log_y=True,
                              x_title="learning rate eta", y_title="||prediction - actual||_F",
                              color_title="series", title="error of Proposition 1 vs eta (log-log)"),
                   width="stretch")
