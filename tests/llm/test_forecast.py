"""llm.forecast: the run linearised at its start equals the real run for a linear-softmax model, tracks a tiny LM."""

import types

import numpy as np
import pytest
import torch

from llm.config import TrainConfig
from llm.explain_report import forecast_comparison
from llm.forecast import LinearisedLM, forecast
from llm.training import train


class _LinearSoftmax(torch.nn.Module):
    """A causal 'LM' whose logits are linear in its parameters (a bigram table): linearisation is exact."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(0.5 * torch.randn(vocab, vocab, generator=gen, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.zeros(vocab, dtype=torch.float64))
        self.config = types.SimpleNamespace()

    def get_input_embeddings(self):
        return types.SimpleNamespace(num_embeddings=self.table.shape[0])

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0):
        logits = self.table[input_ids] + self.bias  # (N, L, V)
        return types.SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def _cfg(tmp_path, name, **kw):
    base = dict(num_synthetic=24, held_out=4, num_probes=6, tiny_hidden=32, tiny_vocab_size=300, batch_size=4,
                max_prompt_tokens=32, max_response_tokens=16, loss="dpo", optimizer="adamw", progress=False,
                save_model=False, checkpoint_at_end=False, eval_every=8, out_dir=str(tmp_path / name))
    base.update(kw)
    return TrainConfig(**base)


def _curves(run_dir):
    from llm.runs import read_run_metrics

    t = read_run_metrics(run_dir)
    t = t[(t["statistic"] == "logp_sum") & t["probe"].notna() & (t["probe"] != "train")]
    return t.groupby(["probe", "step"])["value"].mean()


@pytest.mark.parametrize("optimizer,loss", [("adamw", "dpo"), ("sgd", "sft")])
def test_the_forecast_is_the_real_run_when_the_model_is_linear_in_its_parameters(tmp_path, tokenizer, optimizer,
                                                                                 loss):
    kw = dict(dtype="float64", lr=0.05, epochs=2, optimizer=optimizer, loss=loss, weight_decay=0.01)
    real = train(_cfg(tmp_path, "real", **kw), model=_LinearSoftmax(len(tokenizer)), tokenizer=tokenizer)
    fc = forecast(_cfg(tmp_path, "fc", **kw), model=_LinearSoftmax(len(tokenizer)), tokenizer=tokenizer)
    a, b = _curves(real.run_dir), _curves(fc.run_dir)
    assert list(a.index) == list(b.index) and len(a) > 10
    assert float((a - a.groupby("probe").transform("first")).abs().max()) > 0.5  # the run moved the probes
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-9, atol=1e-9)
    assert (fc.run_dir / "forecast.json").exists() and fc.summary["forecast"]["steps"] == real.step


def test_the_linearised_lm_matches_its_model_at_the_start_and_to_first_order_after(tokenizer):
    from llm.models import tiny_model

    model = tiny_model("gpt2", len(tokenizer), seed=0, dtype="float64", hidden=32, layers=2, heads=2)
    theta0 = [p.detach().clone() for p in model.parameters()]
    lin = LinearisedLM(model)
    ids = torch.randint(0, len(tokenizer), (3, 12), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in theta0]
    with torch.no_grad():
        z0 = model(ids).logits
        torch.testing.assert_close(lin(ids).logits, z0)
    errors = []
    for scale in (4e-4, 1e-4):
        with torch.no_grad():
            for p, t0, d in zip(lin.theta, theta0, direction):
                p.copy_(t0 + scale * d)
        zl = lin(ids).logits  # the grad path (forward-mode tangent, primal graph)
        with torch.no_grad():
            torch.testing.assert_close(zl, lin(ids).logits)  # equals the no-grad path (one JVP)
            twin = tiny_model("gpt2", len(tokenizer), seed=0, dtype="float64", hidden=32, layers=2, heads=2)
            for p, t0, d in zip(twin.parameters(), theta0, direction):
                p.copy_(t0 + scale * d)
            z1 = twin(ids).logits
        errors.append(float((z1 - zl.detach()).abs().max()))
        assert errors[-1] < 0.05 * float((z1 - z0).abs().max())
    assert 10 < errors[0] / errors[1] < 22  # the remainder is second order: a quarter of the step, 1/16 the error
    zl.sum().backward()  # gradients reach theta through J(theta_0)^T
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in lin.theta)


def test_the_forecast_tracks_a_tiny_lm_at_a_small_lr(tmp_path):
    # Stated tolerance: at lr 1e-5 (AdamW, DPO, 24 steps) every probe's forecast change from step 0 stays within 5% of
    # the largest real movement of any probe; at lr 1e-3 the run leaves the kernel regime and the two part.
    kw = dict(lr=1e-5, epochs=3, num_synthetic=36)
    real, fc = train(_cfg(tmp_path, "real", **kw)), forecast(_cfg(tmp_path, "fc", **kw))
    comparison = forecast_comparison(real.run_dir, fc.run_dir, tolerance=0.05)
    assert comparison["step"].max() == real.step and not comparison["parted"].any()
    kw = dict(lr=1e-3, epochs=3, num_synthetic=36)
    real, fc = train(_cfg(tmp_path, "real_hi", **kw)), forecast(_cfg(tmp_path, "fc_hi", **kw))
    assert forecast_comparison(real.run_dir, fc.run_dir, tolerance=0.05)["parted"].any()


def test_the_forecast_is_compared_on_the_attributed_prompts_only(tmp_path):
    from llm.explain_report import load_explanation, plot_explanation

    # 6 probe prompts, the first 2 attributed: the forecast's and the real curves average those 2, as the attribution
    kw = dict(lr=1e-4, epochs=1, eval_every=8, dtype="float64")
    real = train(_cfg(tmp_path, "real", explain_prompts=2, **kw))
    fc = forecast(_cfg(tmp_path, "fc", **kw))
    expl = load_explanation(real.run_dir)
    comparison = forecast_comparison(real.run_dir, fc.run_dir)
    assert comparison.attrs["prompts"] == [0, 1] and set(comparison["probe"]) == set(expl.probe_types)
    for probe, rows in comparison.groupby("probe"):
        at = [list(expl.steps).index(s) for s in rows["step"]]
        np.testing.assert_allclose(rows["real"] - rows["real"].iloc[0], expl.measured[expl.probe_types.index(probe),
                                                                                       at], rtol=1e-7, atol=1e-9)
    every = forecast_comparison(real.run_dir, fc.run_dir, prompts=None)  # all 6 prompts: other means
    assert every.attrs["prompts"] is None and np.abs(every["real"] - comparison["real"]).max() > 1e-3
    with pytest.raises(ValueError, match="the attribution prompts"):
        plot_explanation(expl, every)


def test_the_forecast_overrides_are_recorded_and_warned_for_when_asked(tmp_path):
    import json
    import warnings

    from llm.forecast import forecast_overrides, warn_overrides

    cfg = _cfg(tmp_path, "x", probe_mode="shared", share_prompts=True)
    assert forecast_overrides(cfg) == {"probe_mode": ("shared", "full"), "share_prompts": (True, False)}
    assert forecast_overrides(_cfg(tmp_path, "y", probe_mode="full", share_prompts=False)) == {}
    with pytest.warns(RuntimeWarning, match="--probe-mode shared is not available for the linearised model"):
        assert warn_overrides(cfg, {"probe_mode", "lr"}) == ["probe_mode"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_overrides(cfg, {"lr"}) == []  # the defaults, not asked for: no warning
    fc = forecast(_cfg(tmp_path, "fc", epochs=1))
    saved = json.loads((fc.run_dir / "forecast.json").read_text())
    assert saved["overridden"] == {"probe_mode": {"configured": "shared", "used": "full"},
                                   "share_prompts": {"configured": True, "used": False}}
