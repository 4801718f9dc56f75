"""llm.explain's terms of mixed losses: rpo's and orpo's NLL term on y+ is its own term ("y+ (NLL)"), split out of
y+'s gradient, and the terms still sum exactly to the prediction along the real update."""

import json

import numpy as np
import pytest
import torch

from llm.encoding import collate
from llm.explain import NLL_TERM, AttributionHook, term_gradients
from llm.objective import NLL_PART as NLL
from llm.logps import encoded_logps
from llm.training import train
from tests.llm.test_explain import _AlongUpdate, _cfg
from toykit.losses import compute_loss, compute_nll_term


def test_the_registry_nll_term_is_the_part_of_the_loss_beyond_its_preference_term():
    g = torch.Generator().manual_seed(0)
    lp_c, lp_r = -5 - 3 * torch.rand(6, generator=g, dtype=torch.float64), -5 - 3 * torch.rand(6, generator=g,
                                                                                             dtype=torch.float64)
    ref_c, ref_r = lp_c + 0.3 * torch.randn(6, generator=g, dtype=torch.float64), lp_r - 0.2
    lengths = torch.tensor([3, 4, 5, 6, 7, 8])
    kw = dict(chosen_logps=lp_c, rejected_logps=lp_r, ref_chosen_logps=ref_c, ref_rejected_logps=ref_r,
              chosen_lengths=lengths, rejected_lengths=lengths + 1)
    rpo = compute_loss("rpo", **kw, alpha=0.7) - compute_nll_term("rpo", **kw, alpha=0.7)
    torch.testing.assert_close(rpo, compute_loss("dpo", **kw))  # rpo = dpo + its NLL term
    batch = compute_loss("rpo_batch", **kw, alpha=0.7) - compute_nll_term("rpo_batch", **kw, alpha=0.7)
    torch.testing.assert_close(batch, compute_loss("rpo_batch", **kw, alpha=0.0))
    torch.testing.assert_close(compute_nll_term("orpo", **kw), -lp_c / lengths)  # ORPO's per-token NLL
    assert compute_nll_term("dpo", **kw) is None and compute_nll_term("sft", chosen_logps=lp_c) is None


@pytest.mark.parametrize("loss,extra", [("rpo", {"alpha": 0.5}), ("orpo", {})])
def test_the_nll_term_is_its_own_and_the_terms_sum_to_the_prediction_along_the_real_update(tmp_path, loss, extra):
    hook = AttributionHook(num_prompts=4)
    check = _AlongUpdate(hook)
    result = train(_cfg(tmp_path, loss=loss, optimizer="adamw", weight_decay=0.1, dtype="float64", **extra),
                   hooks=[hook, check])
    saved = np.load(result.run_dir / "explain" / "attribution.npz")
    meta = json.loads((result.run_dir / "explain" / "meta.json").read_text())
    assert meta["terms"] == ["y+ pull", "y- push", NLL_TERM, "weight decay"]
    contrib = saved["contributions"]  # (S, K, N_o)
    np.testing.assert_allclose(contrib.sum(axis=1), np.stack(check.along), rtol=1e-9, atol=1e-12)
    assert meta["max_remainder_norm"] < 1e-9
    assert all(np.abs(contrib[:, k]).max() > 1e-6 for k in range(3))  # pull, push and the NLL term all move


class _Split:
    """The engine's split at step 1 (theta_0) and, independently, the NLL term's gradient at theta_0."""

    wants_response_gradients = True

    def __init__(self, alpha: float):
        self.alpha = alpha

    def on_train_begin(self, run):
        self.run = run

    def on_step(self, ctx):
        if ctx.step != 1:
            return
        self.parts, run = ctx.response_gradients, self.run
        model = ctx.model
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        now = {n: p.detach().clone() for n, p in named.items()}
        with torch.no_grad():  # the model back at theta_0 for one plain autograd pass
            for n, p in named.items():
                p.copy_(ctx.params_before[n])
        model.eval()
        lp = encoded_logps(model, collate([run.chosen[i] for i in ctx.indices], run.tokenizer.pad_token_id))
        nll = (-self.alpha * lp.summed / lp.lengths).sum() / len(ctx.indices)  # alpha x the per-token NLL of y+
        self.nll = dict(zip(named, torch.autograd.grad(nll, list(named.values()))))
        self.recomputed = term_gradients(model, ctx.params_before, run, ctx.indices)
        model.train()
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(now[n])


def test_rpo_splits_into_dpo_s_pull_and_push_plus_its_nll_term_and_trains_the_same_model(tmp_path):
    kw = dict(optimizer="sgd", lr=1e-2, max_grad_norm=0.0, dtype="float64", epochs=1)
    rpo, dpo = _Split(0.5), _Split(0.5)
    a = train(_cfg(tmp_path, "rpo", loss="rpo", alpha=0.5, **kw), hooks=[rpo])
    train(_cfg(tmp_path, "dpo", loss="dpo", **kw), hooks=[dpo])
    plain = train(_cfg(tmp_path, "plain", loss="rpo", alpha=0.5, **kw))
    assert set(rpo.parts) == {"chosen", "rejected", NLL} and set(dpo.parts) == {"chosen", "rejected"}
    for name, g in rpo.nll.items():
        # same theta_0, pairs and reference: rpo's pull and push are dpo's, the rest of its gradient the NLL term's
        torch.testing.assert_close(rpo.parts["chosen"][name], dpo.parts["chosen"][name], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(rpo.parts["rejected"][name], dpo.parts["rejected"][name], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(rpo.parts[NLL][name], g, rtol=1e-9, atol=1e-12)
        for term, key in (("y+ pull", "chosen"), ("y- push", "rejected"), (NLL_TERM, NLL)):  # the recomputed path
            torch.testing.assert_close(rpo.recomputed[term][name], rpo.parts[key][name], rtol=1e-9, atol=1e-12)
    assert max(float(g.abs().max()) for g in rpo.nll.values()) > 0
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), plain.model.named_parameters()):
        assert na == nb and torch.equal(pa, pb)  # the extra NLL pass never changes the run's own backward


def test_the_two_graph_split_has_the_nll_term_too(tmp_path):
    from llm.hooks import ResponseSplit
    from llm.objective import batch_loss, make_pair_batch

    class _TwoGraphs:
        def on_train_begin(self, run):
            model, idx = run.model, [0, 1, 2]
            model.eval()
            named = {n: p for n, p in model.named_parameters() if p.requires_grad}
            batch = make_pair_batch(idx, run.chosen, run.rejected, run.tokenizer.pad_token_id)
            refs = dict(ref_chosen=run.ref_chosen[idx], ref_rejected=run.ref_rejected[idx])
            loss, _ = batch_loss(model, batch, run.objective, **refs)
            self.plain = dict(zip(named, torch.autograd.grad(loss.sum() / 3, list(named.values()))))
            ones = ResponseSplit(named, separate_graphs=False)
            ones.backward(*batch_loss(model, batch, run.objective, **refs), 3)
            self.one = ones.result()
            model.zero_grad(set_to_none=True)
            twos = ResponseSplit(named, separate_graphs=True)
            twos.backward(*batch_loss(model, batch, run.objective, **refs, separate=True), 3)
            self.two, self.grad = twos.result(), {n: p.grad.clone() for n, p in named.items()}
            model.zero_grad(set_to_none=True)
            model.train()

    check = _TwoGraphs()
    train(_cfg(tmp_path, loss="rpo", dtype="float64", stop_after_steps=1), hooks=[check])
    for name, g in check.plain.items():
        torch.testing.assert_close(check.grad[name], g, rtol=1e-9, atol=1e-12)  # p.grad: the whole gradient
        total = sum(check.two[k][name] for k in ("chosen", "rejected", NLL))
        torch.testing.assert_close(total, g, rtol=1e-9, atol=1e-12)
        for key in ("chosen", "rejected", NLL):
            torch.testing.assert_close(check.two[key][name], check.one[key][name], rtol=1e-9, atol=1e-12)
