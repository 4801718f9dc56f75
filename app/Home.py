"""Home page of the app: what the toolkit shows and where each page is (run: ``streamlit run app/Home.py``)."""

import streamlit as st

st.set_page_config(page_title="Learning dynamics of LLM finetuning", layout="wide")
st.title("Learning dynamics of LLM finetuning")
st.markdown(
    "An interactive companion to Ren & Sutherland, *Learning Dynamics of LLM Finetuning* (ICLR 2025). "
    "One step of gradient descent on an example (x_u, y_u) changes the model's log-probabilities on any other input "
    "x_o by **Delta log pi(y | x_o) = -eta A(x_o) K(x_o, x_u) G(x_u, y_u)** (Proposition 1): A = I - 1 pi^T depends "
    "only on the current prediction, K is the empirical neural tangent kernel, and G = dL/dz is set by the loss. "
    "A negative gradient on an unlikely response (off-policy DPO) *squeezes* probability mass into the most likely "
    "label. Each page below lets you change the setting and see these effects recomputed by the toolkit."
)

PAGES = [
    ("pages/1_Squeezing_explorer.py", "Squeezing explorer",
     "Push one label down on a softmax and watch the mass flow to the argmax (Section 4, claims 1-5)."),
    ("pages/2_One_step_decomposition.py", "One-step decomposition",
     "A, K and G of a toy model, the predicted vs the real one-step change, and the eta^2 error law (Prop. 1)."),
    ("pages/3_Loss_residuals.py", "Loss residuals",
     "The residual G of SFT, DPO, IPO, SLiC, DPOP, SimPO, ... on the same distribution (Figure 2)."),
    ("pages/4_Trajectories_and_phase_diagram.py", "Trajectories and the phase diagram",
     "Many steps of each loss, and where off-policy DPO drags down the chosen response."),
    ("pages/5_Digits_influence.py", "Digits influence",
     "How learning one digit moves the predictions on others, measured and predicted by A K G (Figure 1)."),
    ("pages/6_LLM_runs.py", "LLM runs",
     "Probe curves of real SFT/DPO runs, the claims scoreboard of a validation run, and the paper's curves."),
    ("pages/7_Explain_a_run.py", "Explain a run",
     "What moved every probe of a run, term by term along the real optimizer steps, and its kernel forecast."),
    ("pages/8_Online_RL_groups.py", "Online RL groups",
     "The GRPO family on sampled groups of a toy policy: lazy likelihood displacement and its softening."),
]

for path, label, blurb in PAGES:
    st.page_link(path, label=label)
    st.caption(blurb)

st.info("Everything here runs on a CPU with no downloads. The first page you open takes a few seconds (torch warms "
        "up once per server); after that a change is recomputed in about a second or less, and a spinner says what "
        "is being computed. The LLM page reads run directories written by `python -m llm ...` (folder `runs/`), and "
        "opens on the committed validations in `results/` until you have runs of your own.")
