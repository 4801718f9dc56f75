"""The one-step experiment: its measured change equals a hand-made SGD step; its prediction obeys the eta^2 law."""

import copy
import json

import numpy as np
import pytest
import torch

from toykit.experiments import get_experiment, one_step
from toykit.losses import compute_loss, get_loss


def _manual_step(cfg: one_step.Config, y_rejected: int) -> np.ndarray:
    """Delta log pi on x_o after one plain SGD step written out with autograd, independent of decompose()."""
    model, x_o, x_u = one_step._problem(cfg)
    stepped = copy.deepcopy(model)
    with torch.no_grad():
        before = torch.log_softmax(model(x_o), dim=-1)  # (N_o, V)
    logp = torch.log_softmax(stepped(x_u[None]), dim=-1)[0]  # (V,)
    kwargs = {"chosen_logps": logp[cfg.y_u][None]}
    spec = get_loss(cfg.loss)
    if spec.paired:
        kwargs["rejected_logps"] = logp[y_rejected][None]
    if spec.uses_reference:
        kwargs["ref_chosen_logps"] = before[0, cfg.y_u][None]
        if spec.paired:
            kwargs["ref_rejected_logps"] = before[0, y_rejected][None]
    hparams = {"beta": cfg.beta} if "beta" in spec.defaults else {}
    compute_loss(cfg.loss, **kwargs, **hparams).sum().backward()
    with torch.no_grad():
        for p in stepped.parameters():
            p -= cfg.eta * p.grad
        return (torch.log_softmax(stepped(x_o), dim=-1) - before).numpy()


@pytest.mark.parametrize("model, loss", [("linear", "sft"), ("mlp", "sft"), ("mlp", "dpo"), ("linear", "ipo")])
def test_actual_change_is_a_real_sgd_step_and_prediction_is_first_order(model, loss):
    cfg = one_step.Config(model=model, loss=loss, num_classes=5, num_observed=3, eta=0.002, eta_min=1e-4, eta_max=1e-2,
                          num_etas=4)
    result = one_step.run(cfg)
    np.testing.assert_allclose(result.actual, _manual_step(cfg, result.y_rejected), rtol=1e-9, atol=1e-12)
    expected = -cfg.eta * np.einsum("nvw,nwk,k->nv", result.A, result.K, result.G)  # (N_o, V)
    np.testing.assert_allclose(result.predicted, expected, rtol=1e-10, atol=1e-14)
    assert 1.8 <= result.slope <= 2.2
    assert result.summary["relative_error"] < 0.1 and result.summary["correlation"] > 0.99


def test_paired_loss_rejects_the_least_likely_other_label():
    result = one_step.run(one_step.Config(loss="dpo", y_u=2, num_etas=3))
    order = [int(v) for v in np.argsort(result.pi[0]) if v != 2]
    assert result.y_rejected == order[0]
    assert one_step.run(one_step.Config(loss="dpo", y_u=2, y_rejected=1, num_etas=3)).y_rejected == 1
    assert one_step.run(one_step.Config(loss="sft", num_etas=3)).y_rejected == -1


def test_tables_for_plotting():
    result = one_step.run(one_step.Config(num_classes=4, num_observed=2, num_etas=3))
    a = one_step.matrix_table(result.A[1])
    assert len(a) == 16 and a[6] == {"row": 1, "column": 2, "value": float(result.A[1, 1, 2])}
    change = one_step.change_table(result)
    assert len(change) == 8 and change[0]["observed"] == "x_o[0] = x_u"
    sweep = one_step.sweep_table(result)
    reference = [r for r in sweep if r["series"].startswith("C eta^2")]
    assert reference[0]["error"] == pytest.approx(float(result.errors[0]))
    slope = np.polyfit(np.log([r["eta"] for r in reference]), np.log([r["error"] for r in reference]), 1)[0]
    assert slope == pytest.approx(2.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1}, "num_classes"), ({"eta": -0.1}, "eta"), ({"loss": "nope"}, "unknown loss"),
    ({"model": "cnn"}, "model"), ({"y_u": 9}, "y_u"), ({"y_rejected": 0}, "y_rejected"),
    ({"eta_min": 1.0, "eta_max": 0.1}, "eta_min"), ({"num_etas": 1}, "num_etas"),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        one_step.Config(**kwargs)


def test_registered_and_saved_deterministically(tmp_path, undrawn_figures):
    assert get_experiment("one-step") is one_step
    cfg = one_step.Config(model="linear", num_classes=3, num_observed=2, num_etas=3)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        one_step.save(one_step.run(cfg), tmp_path / name)
        undrawn_figures(one_step)  # run b: the numbers only
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["loss"] == "sft"
    assert (tmp_path / "a" / "one_step.png").exists()
