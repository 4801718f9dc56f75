"""llm.hooks: the engine's per-step hook sees theta_t, the real update Delta theta_t and the run's inputs."""

import dataclasses

import pytest
import torch

from llm.config import TrainConfig
from llm.training import train


class _Recorder:
    def __init__(self):
        self.begun, self.ended, self.steps = None, None, []

    def on_train_begin(self, run):
        self.begun = run

    def on_step(self, ctx):
        grads = {n: p.grad.detach().clone() for n, p in ctx.model.named_parameters() if p.grad is not None}
        self.steps.append((ctx.step, list(ctx.indices), ctx.lr, ctx.update(), grads))

    def on_train_end(self, run):
        self.ended = run


def _cfg(tmp_path, **kw):
    base = dict(num_synthetic=16, held_out=4, num_probes=4, tiny_hidden=32, tiny_vocab_size=300, batch_size=4,
                max_prompt_tokens=32, max_response_tokens=16, share_prompts_min_tokens=0, lr=1e-2, progress=False, save_model=False,
                checkpoint_at_end=False, eval_every=100, out_dir=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig(**base)


def test_hook_sees_every_step_and_the_real_sgd_update(tmp_path):
    rec = _Recorder()
    result = train(_cfg(tmp_path, loss="dpo", optimizer="sgd", epochs=2, max_grad_norm=0.0), hooks=[rec])
    assert rec.begun is not None and rec.ended is rec.begun and len(rec.begun.chosen) == 12
    assert [s[0] for s in rec.steps] == list(range(1, result.step + 1)) == [1, 2, 3, 4, 5, 6]
    assert sorted(i for s in rec.steps[:3] for i in s[1]) == list(range(12))  # one epoch covers every pair once
    for _, _, lr, update, grads in rec.steps:  # plain SGD: Delta theta = -lr g, exactly the update the hook saw
        assert lr == pytest.approx(1e-2)
        for name, delta in update.items():
            torch.testing.assert_close(delta, -lr * grads[name], rtol=1e-4, atol=1e-7)
    assert any(float(d.abs().max()) > 0 for d in rec.steps[0][3].values())


def test_a_run_without_hooks_is_unchanged_by_the_hook_machinery(tmp_path):
    a = train(_cfg(tmp_path, loss="sft", out_dir=str(tmp_path / "a")))
    b = train(_cfg(tmp_path, loss="sft", out_dir=str(tmp_path / "b")), hooks=[_Recorder()])
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


def test_a_run_with_the_attribution_trains_the_very_same_model(tmp_path):
    kw = dict(loss="dpo", optimizer="adamw", lr=1e-3, epochs=2)
    a = train(_cfg(tmp_path, **kw, out_dir=str(tmp_path / "plain")))
    b = train(_cfg(tmp_path, **kw, out_dir=str(tmp_path / "explained"), explain_prompts=2, explain_every=2))
    assert (b.run_dir / "explain" / "meta.json").exists() and a.summary["share_prompts"]
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert na == nb and torch.equal(pa, pb)  # the split adds a backward pass, never changes the run's own


def test_a_stateful_hook_without_a_state_dict_is_refused_on_resume(tmp_path):
    # A hook that says it is not resumable and keeps no state_dict cannot be restored: resuming with it from a
    # checkpoint is refused before anything is rewound (the attribution saves its state and resumes, test_explain).
    class _Stateless(_Recorder):
        resumable = False

    cfg = _cfg(tmp_path, optimizer="sgd", checkpoint_every=1)
    assert train(dataclasses.replace(cfg, stop_after_steps=2), hooks=[_Stateless()]).status == "stopped"
    with pytest.raises(ValueError, match=r"hook\(s\) \['_Stateless'\]: they are not resumable"):
        train(dataclasses.replace(cfg, resume=True), hooks=[_Stateless()])
    assert train(dataclasses.replace(cfg, resume=True), hooks=[_Recorder()]).status == "completed"
