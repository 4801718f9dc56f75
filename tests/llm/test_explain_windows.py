"""llm.explain windows and the engine's per-response gradient split: stride 1 is the per-step attribution, a window's
terms sum to the prediction along the window's real update and track the measured change, the split is the step's
gradient."""

import json

import numpy as np
import pytest
import torch

from llm.config import TrainConfig
from llm.explain import AttributionHook, UpdateSplit, term_gradients, term_names
from llm.explain_report import format_explanation, load_explanation
from llm.linearize import directional_changes
from llm.training import train
from tests.llm.test_explain import _cfg  # the same tiny DPO run


class _PerStepReference:
    """The per-step attribution computed independently of the hook: term gradients recomputed at theta_t (a forward
    and one backward per term), its own per-term buffers, one JVP per direction and per step, the remainder kept."""

    def __init__(self, attribution: AttributionHook):
        self.attribution, self.contributions, self.windows = attribution, [], []

    def on_train_begin(self, run):
        self.run, self.split = run, UpdateSplit(run.optimizer, term_names(run.objective))

    def on_step(self, ctx):
        a, run = self.attribution, self.run
        ctx.model.eval()
        grads = term_gradients(ctx.model, ctx.params_before, run, ctx.indices)
        clip = min(1.0, run.cfg.max_grad_norm / (ctx.grad_norm + 1e-6)) if run.cfg.max_grad_norm else 1.0
        dirs = self.split.directions(ctx, grads, clip)
        update = ctx.update()
        remainder = {n: update[n] - sum(dirs[t][n] for t in dirs) for n in update}
        _, change = directional_changes(ctx.model, ctx.params_before, a.observed, [*dirs.values(), remainder],
                                        a.argmax)
        _, along = directional_changes(ctx.model, ctx.params_before, a.observed, [update], a.argmax)
        ctx.model.train()
        self.contributions.append(change.double().numpy())  # (K + 1, N_o): the terms, then the remainder
        self.windows.append(along[0].double().numpy())


class _WindowReference:
    """JVP at every window's start theta_t0 along the window's whole real update theta_t0+W - theta_t0."""

    def __init__(self, attribution: AttributionHook, every: int):
        self.attribution, self.every, self.along, self.start = attribution, every, [], None

    def on_step(self, ctx):
        if self.start is None:
            self.start = ctx.params_before
        if ctx.step % self.every == 0:
            a = self.attribution
            now = dict(ctx.model.named_parameters())
            update = {n: now[n].detach() - t for n, t in self.start.items()}
            ctx.model.eval()
            _, change = directional_changes(ctx.model, self.start, a.observed, [update], a.argmax)
            ctx.model.train()
            self.along.append(change[0].double().numpy())
            self.start = None


def _saved(result):
    saved = np.load(result.run_dir / "explain" / "attribution.npz")
    return saved, json.loads((result.run_dir / "explain" / "meta.json").read_text())


@pytest.mark.parametrize("optimizer,extra", [("adamw", {"weight_decay": 0.1}),
                                             ("sgd", {"momentum": 0.9, "weight_decay": 0.1, "lr": 1e-2})])
def test_stride_one_is_the_per_step_attribution_recomputed_independently(tmp_path, optimizer, extra):
    hook = AttributionHook(num_prompts=4, every=1)
    ref = _PerStepReference(hook)
    result = train(_cfg(tmp_path, optimizer=optimizer, dtype="float64", epochs=2, **extra), hooks=[hook, ref])
    saved, meta = _saved(result)
    contrib, expected = saved["contributions"], np.stack(ref.contributions)  # (S, K, N_o), (S, K + 1, N_o)
    assert meta["explain_every"] == 1 and meta["windows"] == meta["steps"] == result.step == 8
    assert meta["terms"] == ["y+ pull", "y- push", "weight decay"]
    np.testing.assert_array_equal(saved["steps"], np.arange(1, 9))
    scale = np.abs(expected).max()
    # Every term equals the recomputed one; the last carries the remainder (rounding: ~1e-12 of the terms here).
    np.testing.assert_allclose(contrib[:, :-1], expected[:, :-2], rtol=1e-7, atol=1e-10 * scale)
    np.testing.assert_allclose(contrib[:, -1], expected[:, -2] + expected[:, -1], rtol=1e-7, atol=1e-10 * scale)
    assert np.abs(expected[:, -1]).max() < 1e-8 * scale
    np.testing.assert_allclose(contrib.sum(axis=1), np.stack(ref.windows), rtol=1e-9, atol=1e-12 * scale)


def test_a_window_sums_its_terms_to_the_prediction_along_its_real_update_and_tracks_the_change(tmp_path):
    every = 4
    hook = AttributionHook(num_prompts=4, every=every)
    ref = _WindowReference(hook, every)
    result = train(_cfg(tmp_path, optimizer="adamw", lr=1e-4, epochs=4, num_synthetic=36), hooks=[hook, ref])
    saved, meta = _saved(result)
    assert result.step == 32 and meta["windows"] == 8 and meta["explain_every"] == every
    np.testing.assert_array_equal(saved["steps"], np.arange(every, 33, every))
    contrib = saved["contributions"]  # (W, K, N_o)
    np.testing.assert_allclose(contrib.sum(axis=1), np.stack(ref.along), rtol=1e-4,
                               atol=1e-6 * np.abs(contrib).max())
    measured = np.diff(saved["values"], axis=0)  # (W, N_o) over each window
    assert np.abs(measured).max() > 1e-3 and min(meta["per_step_correlation"]) > 0.99
    assert meta["relative_error"] < 0.1
    assert np.abs(contrib[:, 0]).max() > 0 and np.abs(contrib[:, 1]).max() > 0
    expl = load_explanation(result.run_dir)  # the report reads the windows' steps and says the window
    np.testing.assert_array_equal(expl.steps, np.arange(0, 33, every))
    np.testing.assert_allclose(expl.measured[:, -1], [measured[:, np.asarray(meta["probe_types"]) == t].sum(0).mean()
                                                      for t in expl.probe_types], rtol=1e-9)
    assert "per-window (8 windows of 4 steps)" in format_explanation(expl)


def test_a_run_that_stops_inside_a_window_closes_it(tmp_path):
    hook = AttributionHook(num_prompts=2, every=4)
    result = train(_cfg(tmp_path, epochs=3, stop_after_steps=6), hooks=[hook])  # 9 planned steps, stopped at 6
    saved, meta = _saved(result)
    np.testing.assert_array_equal(saved["steps"], [4, 6])
    np.testing.assert_array_equal(saved["window_starts"], [0, 4])
    assert saved["values"].shape[0] == 3 and meta["steps"] == 6 and len(saved["learning_rates"]) == 6


class _SplitRecorder:
    wants_response_gradients = True

    def __init__(self):
        self.split, self.grads = [], []

    def on_train_begin(self, run):
        self.run = run

    def on_step(self, ctx):
        self.split.append(ctx.response_gradients)
        self.grads.append({n: p.grad.detach().clone() for n, p in ctx.model.named_parameters() if p.grad is not None})
        if ctx.step == 1:
            self.recomputed = term_gradients(ctx.model, ctx.params_before, self.run, ctx.indices)


class _GradRecorder:
    def __init__(self):
        self.grads = []

    def on_step(self, ctx):
        self.grads.append({n: p.grad.detach().clone() for n, p in ctx.model.named_parameters() if p.grad is not None})


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_the_engine_split_by_response_is_the_step_gradient(tmp_path, grad_accum):
    kw = dict(optimizer="sgd", lr=1e-2, max_grad_norm=0.0, dtype="float64", batch_size=2, grad_accum=grad_accum)
    split, plain = _SplitRecorder(), _GradRecorder()
    a = train(_cfg(tmp_path, "split", **kw), hooks=[split])
    b = train(_cfg(tmp_path, "plain", **kw), hooks=[plain])  # the engine's own single backward (prompts shared)
    assert a.summary["share_prompts"] and b.summary["share_prompts"]
    parts, grad, ref = split.split[0], split.grads[0], plain.grads[0]  # step 1: both at theta_0
    assert set(parts) == {"chosen", "rejected"} and set(grad) == set(ref)
    for name in grad:
        total = parts["chosen"][name] + parts["rejected"][name]
        torch.testing.assert_close(total, grad[name], rtol=1e-12, atol=1e-15)  # the split sums to p.grad
        assert torch.equal(grad[name], ref[name])  # which is the plain step's gradient, bit for bit
        torch.testing.assert_close(parts["chosen"][name], split.recomputed["y+ pull"][name], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(parts["rejected"][name], split.recomputed["y- push"][name], rtol=1e-9,
                                   atol=1e-12)
    assert max(float(g.abs().max()) for g in parts["rejected"].values()) > 0
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb)  # on a CPU the engine's own backward runs unchanged: the very same run


def test_explain_every_is_a_validated_config_field():
    assert TrainConfig(explain_every=8).explain_every == 8
    with pytest.raises(ValueError, match="explain_every must be >= 1"):
        TrainConfig(explain_every=0)


class _SeparateGraphs:
    """At theta_0: the per-response split from two graphs (``separate``) against the one-graph step gradient."""

    def on_train_begin(self, run):
        from llm.hooks import ResponseSplit
        from llm.objective import batch_loss, make_pair_batch

        model, idx = run.model, [0, 1, 2]
        model.eval()
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        batch = make_pair_batch(idx, run.chosen, run.rejected, run.tokenizer.pad_token_id, share_prompts=True)
        refs = dict(ref_chosen=run.ref_chosen[idx], ref_rejected=run.ref_rejected[idx])
        loss, _ = batch_loss(model, batch, run.objective, **refs)
        self.plain = dict(zip(named, torch.autograd.grad(loss.sum() / 4, list(named.values()))))
        loss, part = batch_loss(model, batch, run.objective, **refs, separate=True)
        split = ResponseSplit(named, separate_graphs=True)
        split.backward(loss, part, 4)
        self.split = split.result()
        self.grad = {n: p.grad.clone() for n, p in named.items()}
        model.zero_grad(set_to_none=True)
        model.train()


def test_the_split_from_two_graphs_is_the_one_graph_gradient(tmp_path):
    check = _SeparateGraphs()
    train(_cfg(tmp_path, dtype="float64", stop_after_steps=1), hooks=[check])
    assert set(check.split) == {"chosen", "rejected"}
    for name, g in check.plain.items():
        total = check.split["chosen"][name] + check.split["rejected"][name]
        torch.testing.assert_close(total, g, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(check.grad[name], g, rtol=1e-9, atol=1e-12)
    assert max(float(g.abs().max()) for g in check.split["chosen"].values()) > 0


def test_the_attribution_with_shared_prompts_equals_one_sequence_per_row(tmp_path):
    kw = dict(dtype="float64", epochs=1, optimizer="adamw", weight_decay=0.1)
    shared, full = AttributionHook(num_prompts=4, every=2), AttributionHook(num_prompts=4, every=2)
    a = train(_cfg(tmp_path, "shared", probe_mode="shared", **kw), hooks=[shared])
    b = train(_cfg(tmp_path, "full", probe_mode="full", **kw), hooks=[full])
    (sa, ma), (sb, mb) = _saved(a), _saved(b)
    assert ma["share_prompts"] and not mb["share_prompts"] and mb["prompt_sharing"] == "probe_mode full"
    assert len(ma["probe_types"]) == 28 and len(set(ma["prompts"])) == 4  # 7 rows share each prompt
    np.testing.assert_allclose(sa["values"], sb["values"], rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(sa["contributions"], sb["contributions"], rtol=1e-8,
                               atol=1e-10 * np.abs(sb["contributions"]).max())


class _RecomputingHook(AttributionHook):
    """The attribution without the engine's split: it recomputes each term's gradient at theta_t (term_gradients)."""

    wants_response_gradients = False


def test_the_engine_split_and_the_recomputed_term_gradients_give_the_same_attribution(tmp_path):
    kw = dict(dtype="float64", epochs=1, optimizer="adamw", weight_decay=0.1, max_grad_norm=1.0)
    split, recomputed = AttributionHook(num_prompts=3, every=2), _RecomputingHook(num_prompts=3, every=2)
    a = train(_cfg(tmp_path, "split", **kw), hooks=[split])
    b = train(_cfg(tmp_path, "recomputed", **kw), hooks=[recomputed])
    (sa, _), (sb, _) = _saved(a), _saved(b)
    np.testing.assert_allclose(sa["values"], sb["values"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sa["contributions"], sb["contributions"], rtol=1e-7,
                               atol=1e-9 * np.abs(sb["contributions"]).max())
