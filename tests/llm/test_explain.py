"""llm.explain: the per-term attribution along the real optimizer update (sums, fit, the SGD Prop. 1 case)."""

import json

import numpy as np
import pytest

from llm.config import TrainConfig
from llm.encoding import collate
from llm.explain import AttributionHook
from llm.linearize import directional_changes
from llm.training import train
from llm.validation.prop1 import loss_gradient, predicted_change


def _cfg(tmp_path, name="run", **kw):
    base = dict(num_synthetic=20, held_out=4, num_probes=4, tiny_hidden=32, tiny_vocab_size=300, batch_size=4,
                max_prompt_tokens=32, max_response_tokens=16, share_prompts_min_tokens=0, lr=1e-4, loss="dpo", progress=False, save_model=False,
                checkpoint_at_end=False, eval_every=1000, out_dir=str(tmp_path / name))
    base.update(kw)
    return TrainConfig(**base)


class _AlongUpdate:
    """Computes, independently of the split, the JVP of the attributed probes along the whole real update."""

    def __init__(self, attribution: AttributionHook):
        self.attribution, self.along, self.steps = attribution, [], []

    def on_train_begin(self, run):
        self.run = run

    def on_step(self, ctx):
        a = self.attribution
        _, change = directional_changes(ctx.model, ctx.params_before, a.observed, [ctx.update()], a.argmax)
        self.along.append(change[0].double().numpy())
        self.steps.append((ctx.params_before, list(ctx.indices), ctx.lr))


def _run(tmp_path, **kw):
    hook = AttributionHook(num_prompts=4)
    check = _AlongUpdate(hook)
    result = train(_cfg(tmp_path, **kw), hooks=[hook, check])
    saved = np.load(result.run_dir / "explain" / "attribution.npz")
    meta = json.loads((result.run_dir / "explain" / "meta.json").read_text())
    return result, hook, check, saved, meta


@pytest.mark.parametrize("optimizer,extra", [("adamw", {"weight_decay": 0.1}),
                                             ("sgd", {"momentum": 0.9, "weight_decay": 0.1, "lr": 1e-2}),
                                             ("rmsprop", {"momentum": 0.5, "weight_decay": 0.1, "lr": 1e-5})])
def test_the_terms_sum_to_the_prediction_along_the_real_update(tmp_path, optimizer, extra):
    _, _, check, saved, meta = _run(tmp_path, optimizer=optimizer, dtype="float64", **extra)
    contrib = saved["contributions"]  # (S, K, N_o)
    assert contrib.shape == (4, len(meta["terms"]), len(meta["probe_types"]))
    assert meta["terms"][:2] == ["y+ pull", "y- push"] and "weight decay" in meta["terms"]
    np.testing.assert_allclose(contrib.sum(axis=1), np.stack(check.along), rtol=1e-9, atol=1e-12)
    # The per-term buffers rebuild the optimizer's own update: the remainder (folded into the last term) is rounding.
    assert meta["max_remainder_norm"] < 1e-9 and meta["remainder_folded_into"] == meta["terms"][-1]
    assert np.abs(contrib[:, 0]).max() > 0 and np.abs(contrib[:, 1]).max() > 0  # both terms move the probes


def test_prediction_tracks_the_measured_change_per_step_with_adamw_at_a_small_lr(tmp_path):
    _, _, _, saved, meta = _run(tmp_path, optimizer="adamw", lr=1e-4, epochs=2)
    measured = np.diff(saved["values"], axis=0)
    predicted = saved["contributions"].sum(axis=1)
    assert measured.shape == predicted.shape == (8, len(meta["probe_types"]))
    assert min(meta["per_step_correlation"]) > 0.99
    assert np.abs(measured).max() > 1e-3  # the steps really moved the probes
    assert meta["relative_error"] < 0.1


def test_with_sgd_the_real_step_prediction_is_the_existing_prop1_prediction(tmp_path):
    result, hook, check, saved, _ = _run(tmp_path, optimizer="sgd", lr=1e-2, max_grad_norm=0.0, dtype="float64")
    run = check.run
    params, idx, lr = check.steps[0]
    chosen = collate([run.chosen[i] for i in idx], run.tokenizer.pad_token_id)
    rejected = collate([run.rejected[i] for i in idx], run.tokenizer.pad_token_id)
    model = result.model  # its architecture; every computation below takes theta_0 explicitly
    g = loss_gradient(model, params, chosen, rejected, "dpo", (run.ref_chosen[idx], run.ref_rejected[idx]), beta=0.1)
    prop1 = predicted_change(model, params, hook.observed, g, lr).double().numpy()
    rows = ~hook.argmax.numpy()  # Prop. 1 scores the responses themselves, not the argmax
    np.testing.assert_allclose(saved["contributions"][0].sum(axis=0)[rows], prop1[rows], rtol=1e-8, atol=1e-12)


def test_a_resumed_attributed_run_records_what_an_uninterrupted_run_does(tmp_path):
    # 8 steps in windows of 3; killed at step 5, resumed from the checkpoint at step 4 (inside the window 4-6)
    kw = dict(optimizer="adamw", weight_decay=0.1, epochs=2, checkpoint_every=2, explain_prompts=2, explain_every=3,
              dtype="float64", checkpoint_at_end=True)
    whole = train(_cfg(tmp_path, "whole", **kw))
    assert train(_cfg(tmp_path, "cut", stop_after_steps=5, **kw)).status == "stopped"
    resumed = train(_cfg(tmp_path, "cut", resume=True, **kw))
    assert resumed.status == "completed" and resumed.step == whole.step == 8
    a, b = whole.run_dir / "explain", resumed.run_dir / "explain"
    saved_a, saved_b = np.load(a / "attribution.npz"), np.load(b / "attribution.npz")
    assert saved_a.files == saved_b.files
    for key in saved_a.files:  # the same record, bit for bit: buffers, open window and start diagnostics restored
        np.testing.assert_array_equal(saved_a[key], saved_b[key], err_msg=key)
    meta_a, meta_b = (json.loads((d / "meta.json").read_text()) for d in (a, b))
    for meta in (meta_a, meta_b):
        meta.pop("seconds"), meta.pop("pair_seconds")
    assert meta_a == meta_b and meta_a["windows"] == 3
    assert (a / "pairs.csv").read_text() == (b / "pairs.csv").read_text()
    summary = json.loads((b.parent / "summary.json").read_text())  # killed after the end checkpoint, before
    (b.parent / "summary.json").write_text(json.dumps({**summary, "status": "running"}))  # the summary's last write
    assert train(_cfg(tmp_path, "cut", resume=True, **kw)).status == "completed"
    again = np.load(b / "attribution.npz")
    for key in saved_a.files:  # the restored record is complete: written again as it was, no window added
        np.testing.assert_array_equal(saved_a[key], again[key], err_msg=key)


def test_a_checkpoint_without_the_attribution_s_state_is_refused_before_anything_is_written(tmp_path):
    plain = _cfg(tmp_path, "plain", epochs=2, checkpoint_every=2, stop_after_steps=3)
    train(plain)
    before = {p: p.stat().st_size for p in (tmp_path / "plain").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"holds no state for the hook\(s\) \['0:AttributionHook'\]"):
        train(TrainConfig(**{**plain.__dict__, "stop_after_steps": None, "resume": True}),
              hooks=[AttributionHook(num_prompts=2)])
    assert {p: p.stat().st_size for p in (tmp_path / "plain").rglob("*") if p.is_file()} == before
    assert train(TrainConfig(**{**plain.__dict__, "stop_after_steps": None, "resume": True})).status == "completed"
