"""Which preference pairs will DPO push down y+ on? CHES scores next to the eNTK's own one-step prediction.

For a pair (x, y+, y-) with h_k the last hidden state (after the final norm) at the position that predicts token k,
H+ = sum_k h+_k and H- = sum_k h-_k:

- CHES (Razin et al. 2025, the centred hidden embedding similarity): <H+, H-> - ||H+||^2;
- length-normalised CHES: <H+, H-> / (|y+| |y-|) - ||H+||^2 / |y+|^2;
- token-level CHES (this toolkit's variant): max over y- tokens k' of <h-_k', H+ / |y+|> - ||H+ / |y+|||^2, the one
  y- token most aligned with y+ (a single shared token can drive the displacement);
- the cosine of the mean hidden states H+ / |y+| and H- / |y-|;
- eNTK one-step change: the first-order change of log pi(y+ | x) (summed over tokens) of one SGD step of unit
  learning rate on DPO of this pair alone, -<grad log pi(y+), grad L_DPO> (at the reference policy
  grad L_DPO = -(beta / 2)(grad log pi(y+) - grad log pi(y-)); one backward pass per response, two dot products).

High CHES predicts likelihood displacement (y+ falls); the eNTK change is the kernel's own answer. Their Spearman rank
correlations across pairs, and with the change of y+ measured over the run when the pairs are also probes, go in
the attribution's report.

References: Razin et al., ICLR 2025, "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization" (CHES, Def. 2 and its length-normalised form); Ren & Sutherland 2025, Prop. 1.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from llm.encoding import EncodedSequence, collate
from llm.linearize import summed_logps
from toykit.losses import compute_loss

__all__ = ["pair_diagnostics", "rank_correlations", "ches_scores", "response_hidden", "DIAGNOSTICS", "CHES_SCORES"]

#: the CHES family of ``ches_scores``, one value per pair.
CHES_SCORES = ("ches", "ln_ches", "token_ches", "cosine")
DIAGNOSTICS = ("ches", "ln_ches", "token_ches", "entk_delta_chosen")


@torch.no_grad()
def response_hidden(model, seqs: Sequence[EncodedSequence], pad_token_id: int, batch_size: int = 16
                    ) -> list[torch.Tensor]:
    """Per sequence, the (|y|, H) float64 last hidden states at the positions that predict its response tokens.

    Sequences run right-padded in batches of ``batch_size`` (padding never changes a real position's state).
    """
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(seqs), batch_size):
        part = seqs[start: start + batch_size]
        batch = collate(part, pad_token_id).to(device)
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       output_hidden_states=True).hidden_states[-1]  # (n, L, H)
        for row, seq in enumerate(part):
            first = len(seq.prompt_ids) - 1  # position l predicts token l + 1
            out.append(hidden[row, first: first + len(seq.response_ids)].double())
    return out


def ches_scores(model, chosen: Sequence[EncodedSequence], rejected: Sequence[EncodedSequence],
                pad_token_id: int) -> dict[str, torch.Tensor]:
    """The CHES family (CHES_SCORES, see the module docstring) of N pairs, each (N,) float64, in eval mode.

    Math: with H+- = sum_k h+-_k and m+- = H+- / |y+-|: ches = <H+, H-> - ||H+||^2,
        ln_ches = <m+, m-> - ||m+||^2, token_ches = max_k' <h-_k', m+> - ||m+||^2, cosine = <m+, m-> / (||m+|| ||m-||).
    """
    if len(chosen) != len(rejected):
        raise ValueError(f"ches_scores needs as many y- as y+ ({len(rejected)} vs {len(chosen)})")
    was_training = model.training
    model.eval()
    try:
        plus, minus = response_hidden(model, chosen, pad_token_id), response_hidden(model, rejected, pad_token_id)
    finally:
        model.train(was_training)
    rows = {k: [] for k in CHES_SCORES}
    for hp, hm in zip(plus, minus):  # (|y+|, H), (|y-|, H)
        sp, sm = hp.sum(0), hm.sum(0)
        mp, mm = sp / len(hp), sm / len(hm)
        rows["ches"].append(sp @ sm - sp @ sp)
        rows["ln_ches"].append(mp @ mm - mp @ mp)
        rows["token_ches"].append((hm @ mp).max() - mp @ mp)
        rows["cosine"].append(torch.nn.functional.cosine_similarity(mp, mm, dim=0))
    return {k: torch.stack(v) if v else torch.zeros(0, dtype=torch.float64) for k, v in rows.items()}


def pair_diagnostics(model, chosen: Sequence[EncodedSequence], rejected: Sequence[EncodedSequence],
                     pad_token_id: int, beta: float = 0.1) -> pd.DataFrame:
    """Return one row per pair: ches, ln_ches, token_ches and entk_delta_chosen (see the module docstring).

    Args:
        model: the policy at the start of DPO (the reference).
        chosen, rejected: the pairs' encoded (prompt, y+) and (prompt, y-) sequences, N each.
        beta: DPO's beta.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    scores = ches_scores(model, chosen, rejected, pad_token_id)
    rows = [{"pair": i, **{k: float(scores[k][i]) for k in ("ches", "ln_ches", "token_ches")}}
            for i in range(len(chosen))]
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    try:
        for i, (c, r) in enumerate(zip(chosen, rejected)):
            batch_c, batch_r = collate([c], pad_token_id).to(device), collate([r], pad_token_id).to(device)
            lp_c, lp_r = summed_logps(model, leaves, batch_c), summed_logps(model, leaves, batch_r)
            loss = compute_loss("dpo", chosen_logps=lp_c, rejected_logps=lp_r, ref_chosen_logps=lp_c.detach(),
                                ref_rejected_logps=lp_r.detach(), beta=beta).sum()
            w_c, w_r = torch.autograd.grad(loss, [lp_c, lp_r], retain_graph=True)  # dL/d lp, (1,) each
            # <grad lp+, grad L> with grad L = w+ grad lp+ + w- grad lp- (the chain rule through the two log-probs):
            # one backward pass per response and two dot products instead of a backward and a JVP.
            g_c = torch.autograd.grad(lp_c.sum(), list(leaves.values()), allow_unused=True)
            g_r = torch.autograd.grad(lp_r.sum(), list(leaves.values()), allow_unused=True)
            cc = sum(float((a.double() * a.double()).sum()) for a in g_c if a is not None)
            cr = sum(float((a.double() * b.double()).sum()) for a, b in zip(g_c, g_r)
                     if a is not None and b is not None)
            rows[i]["entk_delta_chosen"] = -(float(w_c[0]) * cc + float(w_r[0]) * cr)
    finally:
        model.train(was_training)
    return pd.DataFrame(rows)


def rank_correlations(table: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Spearman rank correlations across pairs between the diagnostics (and any measured column)."""
    cols = [c for c in (columns or table.columns) if c != "pair"]
    return table[cols].corr(method="spearman")
