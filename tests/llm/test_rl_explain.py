"""Online RL explained (llm.rl_explain + llm.rl's hooks): the GRPO family's terms, their sum along the real update,
the per-step fit at a small lr, and a run with the hooks on that is bit-identical to one without."""

import json

import numpy as np
import pytest
import torch

from llm.cli import main
from llm.explain import AttributionHook
from llm.linearize import directional_changes
from llm.rl import completion_batch, completion_logps, train_rl
from llm.rl_explain import KL, PULL, PUSH, group_term_backward, group_term_weights, group_terms
from llm.training import train
from tests.llm.test_explain import _AlongUpdate
from tests.llm.test_rl import _cfg, _digits
from toykit.group_losses import compute_group_loss, group_loss_names
from toykit.runs import read_metrics


def _grad(name, logps, old, adv, mask, ref, hp):
    leaf = logps.clone().requires_grad_(True)
    return torch.autograd.grad(compute_group_loss(name, leaf, old, adv, mask, ref, **hp), leaf)[0]


@pytest.mark.parametrize("loss", group_loss_names())
def test_the_term_weights_are_the_loss_restricted_to_each_term(loss):
    """Two implementations: the split of dL/dl by advantage sign vs the loss with the other advantages zeroed."""
    gen = torch.Generator().manual_seed(0)
    B, T = 6, 5
    logps = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    old = logps + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)  # rho off 1: some tokens clipped
    ref = logps + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[0, 3:], mask[4, 1:] = 0, 0
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.5, 0.7], dtype=torch.float64)
    hp = {"beta": 0.2} if loss != "rloo" else {}  # RLOO's KL lives in the reward (TRL): no KL term
    w = group_term_weights(loss, logps, old, adv, mask, ref, hp)
    assert tuple(w) == group_terms(hp) == ((PULL, PUSH) if loss == "rloo" else (PULL, PUSH, KL))
    no_kl = {**hp, "beta": 0.0}
    torch.testing.assert_close(w[PULL], _grad(loss, logps, old, adv * (adv > 0), mask, ref, no_kl))
    torch.testing.assert_close(w[PUSH], _grad(loss, logps, old, adv * (adv < 0), mask, ref, no_kl))
    if KL in w:
        torch.testing.assert_close(w[KL], _grad(loss, logps, old, torch.zeros_like(adv), mask, ref, hp))
    torch.testing.assert_close(sum(w.values()), _grad(loss, logps, old, adv, mask, ref, hp))
    assert bool((w[PULL][adv <= 0] == 0).all()) and bool((w[PUSH][adv >= 0] == 0).all())
    assert bool((w[PULL][adv > 0][mask[adv > 0].bool()] <= 0).all())  # the pull raises its tokens (w <= 0)


def test_the_term_gradients_are_the_gradients_of_the_loss_restricted_to_each_term(tmp_path):
    """Two implementations on a tiny LM: group_term_backward's split vs a fresh backward of each restricted loss."""
    model = train(_cfg(tmp_path / "sft", loss="sft", max_examples=2, dtype="float64")).model
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    prompts, comps = [[5, 6, 7]] * 4, [[8, 9, 10], [8, 11], [12, 9, 10, 13], [14]]
    batch = completion_batch(prompts, comps, 0)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)

    def loss_of(advantages, beta):
        logps, mask, _ = completion_logps(model, *batch)
        ref = logps.detach() - 0.3  # pi has moved off pi_ref: the KL term is non-zero
        return compute_group_loss("grpo", logps, logps.detach(), advantages, mask, ref, beta=beta), logps, mask, ref

    def grads_of(advantages, beta):
        model.zero_grad(set_to_none=True)
        loss_of(advantages, beta)[0].backward()
        return {n: p.grad.clone() for n, p in named.items() if p.grad is not None}

    want = {PULL: grads_of(adv * (adv > 0), 0.0), PUSH: grads_of(adv * (adv < 0), 0.0),
            KL: grads_of(torch.zeros_like(adv), 0.2)}
    whole = grads_of(adv, 0.2)
    model.zero_grad(set_to_none=True)
    loss, logps, mask, ref = loss_of(adv, 0.2)
    weights = group_term_weights("grpo", logps, logps.detach(), adv, mask, ref, {"beta": 0.2})
    got = group_term_backward(loss, logps, weights, named)
    assert list(got) == [PULL, PUSH, KL]
    for name, p in named.items():
        if p.grad is None:
            continue
        torch.testing.assert_close(p.grad, whole[name], rtol=0, atol=0)  # the run's own gradient, bit for bit
        torch.testing.assert_close(sum(got[t][name] for t in got), p.grad, rtol=1e-12, atol=1e-14)
        for term in got:
            torch.testing.assert_close(got[term].get(name, torch.zeros_like(p)), want[term][name], rtol=1e-9,
                                       atol=1e-12)


class _TermDirections:
    """Records each term's own JVP along -lr g_k (plain SGD: the term's update) from the loop's term gradients."""

    def __init__(self, attribution):
        self.attribution, self.per_term = attribution, []

    def on_step(self, ctx):
        a = self.attribution
        dirs = [{n: -ctx.lr * ctx.response_gradients[t].get(n, torch.zeros_like(p)) for n, p in
                 ctx.params_before.items()} for t in a.terms]
        self.per_term.append(directional_changes(ctx.model, ctx.params_before, a.observed, dirs, a.argmax)[1]
                             .double().numpy())


def test_with_plain_sgd_each_term_is_its_own_gradient_step(tmp_path):
    hook = AttributionHook(num_prompts=3, terms=group_terms({"beta": 0.1}), diagnose_pairs=False)
    check = _TermDirections(hook)
    cfg = _cfg(tmp_path / "sgd", optimizer="sgd", lr=1e-2, max_grad_norm=0.0, dtype="float64", beta=0.1,
               max_examples=4, num_iterations=2)
    train_rl(cfg, _digits, hooks=[hook, check])
    saved = np.load(tmp_path / "sgd" / "explain" / "attribution.npz")
    np.testing.assert_allclose(saved["contributions"], np.stack(check.per_term), rtol=1e-8, atol=1e-12)


def _explained(tmp_path, name, model=None, tokenizer=None, **kw):
    hook = AttributionHook(num_prompts=3, terms=group_terms({"beta": kw.get("beta") or 0.0}), diagnose_pairs=False)
    check = _AlongUpdate(hook)
    result = train_rl(_cfg(tmp_path / name, **kw), _digits, model=model, tokenizer=tokenizer, hooks=[hook, check])
    folder = result.run_dir / "explain"
    return result, check, np.load(folder / "attribution.npz"), json.loads((folder / "meta.json").read_text())


@pytest.mark.parametrize("optimizer,extra", [("adamw", {"lr": 1e-3}), ("sgd", {"momentum": 0.9, "lr": 1e-2})])
def test_the_terms_sum_to_the_prediction_along_the_real_update(tmp_path, optimizer, extra):
    _, check, saved, meta = _explained(tmp_path, optimizer, optimizer=optimizer, dtype="float64", beta=0.1,
                                       weight_decay=0.1, max_examples=4, num_iterations=2, **extra)
    contrib = saved["contributions"]  # (S, K, N_o): 2 steps x 2 updates
    assert meta["terms"] == [PULL, PUSH, KL, "weight decay"] and meta["loss"] == "grpo"
    assert contrib.shape == (4, 4, len(meta["probe_types"])) and "group_best" in meta["probe_types"]
    np.testing.assert_allclose(contrib.sum(axis=1), np.stack(check.along), rtol=1e-9, atol=1e-12)
    assert meta["max_remainder_norm"] < 1e-9  # the per-term momentum buffers rebuild the optimizer's update
    for k in range(3):  # pull, push and the KL (from the second update on, where pi has left pi_ref) all move
        assert np.abs(contrib[:, k]).max() > 0, meta["terms"][k]


def test_prediction_tracks_the_measured_change_per_step_with_adamw_at_a_small_lr(tmp_path):
    # RL starts from an SFT model, as in the validation: on the near-uniform random-init policy the teacher-forced
    # argmax probe switches tokens at the first step (a jump no first-order prediction has; r 0.98 there).
    sft = train(_cfg(tmp_path / "sft", loss="sft", epochs=3, lr=3e-3, eval_every=1000))
    _, _, saved, meta = _explained(tmp_path, "small", optimizer="adamw", lr=1e-4, max_examples=12,
                                   model=sft.model, tokenizer=sft.tokenizer)
    measured, predicted = np.diff(saved["values"], axis=0), saved["contributions"].sum(axis=1)
    assert measured.shape == predicted.shape == (6, len(meta["probe_types"]))
    assert min(meta["per_step_correlation"]) > 0.99, meta["per_step_correlation"]
    assert np.abs(measured).max() > 1e-3 and meta["relative_error"] < 0.1


def test_with_the_hooks_on_the_run_is_bit_identical(tmp_path):
    kw = dict(max_examples=6, num_iterations=2, beta=0.05, checkpoint_every=0)
    plain = train_rl(_cfg(tmp_path / "plain", **kw), _digits)
    explained = train_rl(_cfg(tmp_path / "explained", explain_prompts=2, **kw), _digits)
    assert (explained.run_dir / "explain" / "attribution.npz").exists()
    assert not (plain.run_dir / "explain").exists()
    assert read_metrics(plain.run_dir / "metrics.jsonl") == read_metrics(explained.run_dir / "metrics.jsonl")
    for (ka, va), (kb, vb) in zip(plain.model.state_dict().items(), explained.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_an_rloo_run_has_no_kl_term_and_the_explain_command_reads_it(tmp_path, capsys):
    run = train_rl(_cfg(tmp_path / "rloo", loss="rloo", max_examples=4, explain_prompts=2), _digits).run_dir
    meta = json.loads((run / "explain" / "meta.json").read_text())
    assert meta["terms"] == [PULL, PUSH] and meta["loss"] == "rloo" and meta["steps"] == 2  # its KL is in the reward
    capsys.readouterr()
    assert main(["explain", str(run)]) == 0
    out = capsys.readouterr().out
    assert "rloo with AdamW" in out and PUSH in out and "group_worst" in out


def test_the_validation_rl_phase_records_its_attribution_like_the_other_phases(tmp_path):
    import dataclasses
    from types import SimpleNamespace

    from llm.data import probe_set_from_pairs, synthetic_pairs
    from llm.validation.pipeline import PRESETS, _probe_rows
    from llm.validation.rl_claims import RL_PHASE, run_rl_phase

    sft = train(_cfg(tmp_path / "sft", loss="sft", epochs=3, lr=3e-3, eval_every=1000))
    pairs = synthetic_pairs(16)
    preset = dataclasses.replace(PRESETS["test"], rl_steps=2, rl_prompts=2, rl_generations=4, greedy_max_new_tokens=6)
    phases = SimpleNamespace(preset=preset, model_name="tiny-gpt2", probes=probe_set_from_pairs(pairs[:3], pairs[12:]),
                             seed=0, device="cpu", progress=False, dir=tmp_path / "seed0", tok=sft.tokenizer,
                             rows=[], probe_mode="shared", explain_prompts=2, explain_every=1, attribution={})
    curves = run_rl_phase(phases, _digits, sft.model, pairs[:12], _probe_rows)
    assert len(curves["reward"]) == 2 and (tmp_path / "seed0" / RL_PHASE / "explain" / "meta.json").exists()
    out = phases.attribution[RL_PHASE]
    assert out["terms"] == [PULL, PUSH] and out["objective"]["beta"] == 0.0  # GRPO at TRL's beta 0
    assert {"chosen", "group_best", "group_worst", "argmax_teacher_forced"} <= set(out["by_probe"])
    chosen = out["by_probe"]["chosen"]
    assert chosen["predicted"] == pytest.approx(chosen[PULL] + chosen[PUSH], abs=1e-9)
    assert any(s.startswith("group_worst ") and ("A<0 push" in s or "A>0 pull" in s) for s in out["sentences"])
    assert out["median_step_correlation"] > 0.9


def test_resuming_an_explained_rl_run_from_a_checkpoint_is_refused(tmp_path):
    kw = dict(max_examples=8, checkpoint_every=2, explain_prompts=2)
    cut = train_rl(_cfg(tmp_path / "cut", stop_after_steps=3, **kw), _digits)
    assert cut.status == "stopped"
    with pytest.raises(ValueError, match="cannot resume .* with the attribution"):
        train_rl(_cfg(tmp_path / "cut", resume=True, **kw), _digits)
