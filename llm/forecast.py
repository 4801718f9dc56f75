"""Forecast a run from the kernel at its start: train the model LINEARISED at theta_0 with the run's own recipe.

The logits are linearised in the parameters at the start, the softmax (and the loss) stay exact:

    z(x; theta) ~= z(x; theta_0) + J_z(x; theta_0) (theta - theta_0)      (frozen eNTK: K = J J^T never changes)

and the engine's loop trains this model with the same config: the same batch plan, optimizer, schedule, clipping,
reference and probes (``llm.training.train`` runs it unchanged), so the forecast's metrics.jsonl predicts every
probe's curve of the real run before it happens. Where the real run leaves the kernel regime the two part
(``python -m llm explain RUN --forecast FORECAST`` marks it).

Cost per forward pass: one forward-mode pass at theta_0 (the primal with its autograd graph, and the tangent
J (theta - theta_0)); the backward pass is the plain VJP J^T G at theta_0 through the primal's graph, never a
backward through the tangent computation. While theta = theta_0 exactly (the precomputed reference, the step-0
probes, the first step) the tangent is zero and the pass is the plain forward. The forward-mode pass carries the
tangent through every operation (two matmuls per matmul, plus the tangents of the norms, the attention and the
activations), so a linearised step costs about 2-3x a real step and a probe pass about 3-4x a real probe pass
(``benchmarks/bench_explain.py`` measures both): a forecast costs more than the run it predicts, and what it saves
is the run itself (a forecast answers before the real run is trained, and at every lr and schedule for the price
of one linearisation each). Free-running greedy decoding of a linearised model is not offered.

References: Jacot et al. 2018 (NTK); Lee et al. 2019 (wide networks evolve as linear models); Ren & Sutherland 2025,
PAPER.md section 2 (the eNTK K of Delta log pi = -eta A K G).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import types
import warnings
from typing import Collection

import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call

from llm.config import TrainConfig
from llm.inputs import build_inputs
from toykit.forward_ad import FORWARD_AD_LOCK
from toykit.runs import write_json

__all__ = ["LinearisedLM", "forecast", "format_cost", "forecast_overrides", "warn_overrides"]


class LinearisedLM(torch.nn.Module):
    """A causal LM linearised in its trainable parameters at their current values theta_0.

    Its parameters theta (same names as the base model's trainable ones, initialised at theta_0) are what an
    optimizer trains; its logits are z(theta_0) + J (theta - theta_0). The base model is kept frozen at theta_0.

    Args:
        model: the causal LM (anything returning ``.logits`` (N, L, V) from ``model(input_ids, attention_mask=...)``).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.base = [model.requires_grad_(False).eval()]  # a list: its parameters are not this module's
        named = [(n, p) for n, p in model.named_parameters()]
        self.names = [n for n, _ in named]
        self.theta0 = [p.detach().clone() for _, p in named]
        self.theta = torch.nn.ParameterList([torch.nn.Parameter(p.detach().clone()) for _, p in named])

    @property
    def config(self):
        """The base model's config (positions, vocabulary), for the engine's input checks."""
        return self.base[0].config

    def get_input_embeddings(self):
        return self.base[0].get_input_embeddings()

    def call(self, params: dict[str, torch.Tensor], inputs: dict) -> torch.Tensor:
        kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
        return functional_call(self.base[0], params, (inputs["input_ids"],), kwargs).logits

    def at_start(self) -> bool:
        """Whether theta equals theta_0 exactly (before the first step): the tangent J (theta - theta_0) is zero."""
        return all(torch.equal(t, t0) for t, t0 in zip(self.theta, self.theta0))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        """Return an object with ``.logits`` = z(theta_0) + J (theta - theta_0), (N, L, V) (or the last K columns)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        grad = torch.is_grad_enabled()
        # theta_0 + (theta - sg(theta)) has the value theta_0 and passes gradients to theta: the primal's backward
        # is the VJP J(theta_0)^T G (sg = stop-gradient); without gradients the primal is theta_0 itself.
        primal = {n: t0 + (t - t.detach()) if grad else t0 for n, t, t0 in zip(self.names, self.theta, self.theta0)}
        if self.at_start():  # z(theta_0) exactly (the reference, the step-0 probes, the first step): no tangent
            return types.SimpleNamespace(logits=self.call(primal, inputs))
        with FORWARD_AD_LOCK, fwAD.dual_level():  # one forward-mode pass: z(theta_0) and J (theta - theta_0)
            duals = {n: fwAD.make_dual(primal[n], (t - t0).detach()) for n, t, t0 in zip(self.names, self.theta,
                                                                                         self.theta0)}
            z0, dz = fwAD.unpack_dual(self.call(duals, inputs))
        return types.SimpleNamespace(logits=z0 + dz.detach())  # the tangent carries no gradient

    def __deepcopy__(self, memo):  # a per-step reference copy: a new linearisation at the same theta_0
        twin = LinearisedLM.__new__(LinearisedLM)
        torch.nn.Module.__init__(twin)
        twin.base, twin.names = self.base, self.names
        twin.theta0 = self.theta0
        twin.theta = torch.nn.ParameterList([torch.nn.Parameter(p.detach().clone()) for p in self.theta])
        return twin


def forecast(cfg: TrainConfig, model=None, tokenizer=None, pairs=None, probes=None, hooks=()):
    """Predict the run ``cfg`` describes by training its model linearised at the start; return the TrainResult.

    The run directory (phase ``forecast-<phase>``) holds the forecast's metrics.jsonl (the probes' predicted curves
    at the run's evaluation steps) and forecast.json (the cost: seconds in all, per step, and per probe pass).

    ``hooks`` (llm.hooks) are passed to the engine's loop (they see the linearised model). The probes run in full
    mode and prompts are not shared (``forecast_overrides``: the same values; forecast.json records it, and
    ``python -m llm forecast`` warns when the user asked for either).

    Raises:
        ValueError: greedy decoding asked for (a linearised model is not decoded), or explain asked for.
    """
    from llm.training import train  # the engine's loop, unchanged

    if cfg.greedy_max_new_tokens:
        raise ValueError("forecast does not decode the linearised model: set greedy_max_new_tokens 0")
    if cfg.explain_prompts:
        raise ValueError("forecast does not attribute (explain_prompts must be 0); explain the real run instead")
    t0 = time.perf_counter()
    inputs = build_inputs(cfg, model=model, tokenizer=tokenizer, pairs=pairs, probes=probes)
    lin = LinearisedLM(copy.deepcopy(inputs.model)).to(next(inputs.model.parameters()).device)
    fcfg = dataclasses.replace(cfg, phase=f"forecast-{cfg.phase_name}", save_model=False, checkpoint_at_end=False,
                               checkpoint_every=0, resume=False)
    overrides = forecast_overrides(cfg)
    fcfg = dataclasses.replace(fcfg, **{name: used for name, (_, used) in overrides.items()})
    result = train(fcfg, model=lin, tokenizer=inputs.tokenizer, pairs=pairs, probes=inputs.probes, hooks=hooks)
    seconds = time.perf_counter() - t0
    cost = {"kind": "logits linearised at the start (softmax exact), the run's recipe", "seconds": seconds,
            "overridden": {name: {"configured": asked, "used": used} for name, (asked, used) in overrides.items()},
            "train_seconds": result.summary.get("train_seconds"), "probe_seconds": result.summary.get("probe_seconds"),
            "steps": result.step, "seconds_per_step": (result.summary.get("train_seconds") or 0) / max(result.step, 1)}
    write_json(result.run_dir / "forecast.json", cost)
    result.summary["forecast"] = cost
    return result


def forecast_overrides(cfg: TrainConfig) -> dict[str, tuple[object, object]]:
    """Field -> (configured, used) for the fields of ``cfg`` a forecast cannot honour and replaces.

    A linearised model has no key/value cache to continue from, so its probes run one sequence per response
    (probe_mode full) and y+ and y- are scored as separate sequences (share_prompts off): the same values.
    """
    out: dict[str, tuple[object, object]] = {}
    if cfg.probe_mode != "full":
        out["probe_mode"] = (cfg.probe_mode, "full")
    if cfg.share_prompts:
        out["share_prompts"] = (True, False)
    return out


def warn_overrides(cfg: TrainConfig, given: Collection[str]) -> list[str]:
    """Warn (RuntimeWarning) for every field in ``given`` (set by the user) that a forecast overrides; return them.

    Used by ``python -m llm forecast`` for the flags (or --config keys) the user passed, so that asking for
    ``--probe-mode shared`` or ``--share-prompts true`` is never silently ignored.
    """
    named = [name for name in forecast_overrides(cfg) if name in given]
    for name in named:
        asked, used = forecast_overrides(cfg)[name]
        flag = "--" + name.replace("_", "-")
        warnings.warn(f"forecast: {flag} {str(asked).lower()} is not available for the linearised model (it has no "
                      f"key/value cache to continue from); the forecast runs {flag} {str(used).lower()} "
                      f"(the same values, one sequence per response)", RuntimeWarning, stacklevel=2)
    return named


def format_cost(cost: dict) -> str:
    """One line: the forecast's seconds in all, in training steps and in probe passes."""
    return (f"forecast: {cost['steps']} steps in {cost['seconds']:.1f} s ({cost['seconds_per_step']:.3f} s per step, "
            f"{cost['probe_seconds']:.1f} s of probe passes)")
