"""Online RL on a toy policy: the GRPO family on sampled groups, lazy likelihood displacement and its softening."""

import io
import json

import pandas as pd
import streamlit as st

from llm.token_view import TOKEN_VIEW_FILE, load_token_view, token_view_rows
from toykit.experiments import group_rl

st.set_page_config(page_title="Online RL: groups and lazy likelihood displacement", layout="wide")
st.title("Online RL: groups, advantages and lazy likelihood displacement")
st.markdown(
    "Each prompt samples a **group** of responses from a toy policy (logits per position, EOS ends a response); "
    "a rule rewards responses that contain the prompt's target token. Each variant of the GRPO family turns the "
    "rewards into advantages and takes a step with its residual G = w (e_y - pi) (PAPER.md section 10). "
    "A negative advantage pushes down **every** token of an incorrect response, including the tokens it shares with "
    "correct ones: those correct responses gain little or lose (**lazy likelihood displacement**, Deng, Ren, "
    "Sutherland et al. 2025). `grpo+nthr` spares the negative tokens a correct response shares."
)

DEFAULTS = group_rl.Config()
LRS = sorted({0.5, 1.0, DEFAULTS.lr, 4.0})


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


@st.cache_data(show_spinner="Sampling groups and training each variant ...")
def _run(variants, steps, lr, peakiness, group_size, nthr_weight, seed):
    cfg = group_rl.Config(variants=variants, steps=steps, lr=lr, peakiness=peakiness, group_size=group_size,
                          nthr_weight=nthr_weight, seed=seed)
    result = group_rl.run(cfg)
    tables = {v: pd.DataFrame(group_rl.group_table(result, v)) for v in variants}
    per_variant = pd.DataFrame([{"variant": v, **values} for v, values in result.summary["variants"].items()])
    return per_variant, result.summary["claims"], tables, _png(group_rl.plot(result))


with st.sidebar:
    st.header("Settings")
    variants = st.multiselect("Variants", list(group_rl.VARIANTS), default=["grpo", "dr_grpo", "rloo", "grpo+nthr"],
                              key="variants")
    steps = st.slider("Sampling steps", 2, 60, DEFAULTS.steps, 1, key="steps")
    lr = st.select_slider("Learning rate eta", LRS, value=DEFAULTS.lr, key="lr")
    peakiness = st.slider("Start peakiness s (Zipf)", 0.0, 4.0, DEFAULTS.peakiness, 0.25, key="peakiness")
    group_size = st.select_slider("Group size G", [2, 4, 8, 16], value=DEFAULTS.group_size, key="group_size")
    nthr_weight = st.slider("grpo+nthr: weight of shared negative tokens", 0.0, 1.0, DEFAULTS.nthr_weight, 0.1,
                            key="nthr_weight")
    seed = st.number_input("Seed", min_value=0, value=DEFAULTS.seed, step=1, key="seed")

if not variants:
    st.error("Choose at least one variant.")
else:
    try:
        per_variant, claims, tables, figure = _run(tuple(variants), steps, lr, peakiness, group_size, nthr_weight,
                                                   int(seed))
    except ValueError as err:
        st.error(f"Cannot run this setting: {err}")
    else:
        st.image(figure, caption="Mean over prompts per step. Log-probs are summed over a response's tokens; the "
                                 "greedy response is the free-running argmax (equal to the teacher-forced one here).")
        st.subheader("Claims checked in this run (pass rules fixed in toykit/experiments/group_rl.py)")
        st.dataframe(pd.DataFrame([{**c, "measured": json.dumps(c["measured"])} for c in claims]), hide_index=True,
                     width="stretch")
        st.subheader("Per variant: where the mass goes")
        st.caption("p_correct, greedy_logp, entropy, seen_mass (probability of the group's distinct responses): at "
                   "the last step. delta_*: mean per-step change of a response's summed log pi (correct with "
                   "overlap >= 0.5 / < 0.5 = sharing most / few tokens with incorrect responses). clip_ratio: "
                   "fraction of tokens whose gradient the clip removed.")
        st.dataframe(per_variant, hide_index=True, width="stretch")
        st.subheader("Token view: the first group of prompt 0")
        shown = st.selectbox("Variant", variants, key="token_variant")
        st.caption("Per-token change of log pi over that step (summed over the inner updates). Tokens: the "
                   "target in [brackets], EOS ends a response, '-' after the end.")
        st.dataframe(tables[shown], hide_index=True, width="stretch")

st.header("Token view of an LLM run")
st.markdown("Runs trained with `--token-view N` (`python -m llm train --loss grpo --token-view 4`, or any SFT / DPO "
            "run) save, for the first N y+ probes, each token's change of log pi over the run and the tokens that "
            "gained the most probability at that position.")
run_folder = st.text_input("Run folder", value="", key="token_view_run")
if run_folder:
    view = load_token_view(run_folder)
    if view is None:
        st.error(f"No {TOKEN_VIEW_FILE} in {run_folder}: train with --token-view N.")
    else:
        labels = {f"probe {p['probe']}: {p['prompt'].strip()[:60]}": p["probe"] for p in view["probes"]}
        chosen = st.selectbox("Probe", list(labels), key="token_view_probe")
        st.caption(f"Probe type {view['probe_type']}; log pi per token (teacher forcing), before and after the run; "
                   f"top {view['top_k']} gainers: largest pi_after(v) - pi_before(v) at that position.")
        st.dataframe(pd.DataFrame(token_view_rows(view, labels[chosen])), hide_index=True, width="stretch")
