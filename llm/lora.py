"""LoRA adapters (the ``peft`` library, optional extra ``lora``): wrap a model, its adapter-free reference, its params.

A LoRA run trains only the adapter matrices (B initialised to zero, so the adapted model equals the base at step 0).
The reference of DPO-style losses is the base with the adapters disabled (TRL's convention: no second copy of the
model), scored once before training or every step. ``trainable_parameters`` is the parameter set of the kernel
such a run actually has: Prop. 1's eNTK and gradients restricted to it (with every parameter trainable it is the
full set, so nothing changes for a full finetune).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["apply_lora", "load_adapter", "is_peft_model", "trainable_parameters", "adapters_disabled", "AdapterFreeReference"]


def is_peft_model(model) -> bool:
    """True when ``model`` carries PEFT adapters (without importing peft when it is not installed)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def apply_lora(model, *, r: int, alpha: float, dropout: float = 0.0, target_modules: str = "all-linear"):
    """Return ``model`` wrapped with fresh LoRA adapters of rank ``r`` (only the adapters train).

    Args:
        r: adapter rank (>= 1).
        alpha: LoRA scaling numerator (the update is alpha / r * B A).
        dropout: dropout on the adapter input (0 keeps training deterministic).
        target_modules: "all-linear" or comma-separated module names (e.g. "q_proj,v_proj" or "c_attn").
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("--lora-r needs the peft library: pip install -e '.[lora]'") from None
    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}")
    targets = target_modules if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")
                                                                      if t.strip()]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # no module matched target_modules
        raise ValueError(f"--lora-target-modules {target_modules!r}: {str(err).splitlines()[0]}") from None


def load_adapter(model, adapter_dir: str):
    """Return ``model`` with the LoRA adapters saved in ``adapter_dir`` (a run's adapter/), trainable."""
    from pathlib import Path

    try:
        from peft import PeftModel
    except ImportError:
        raise ValueError("--lora-adapter needs the peft library: pip install -e '.[lora]'") from None
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ValueError(f"--lora-adapter {adapter_dir}: no adapter_config.json there (expected a run's adapter/)")
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return detached clones of the parameters that train (requires_grad), by name: the run's kernel's parameters."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[None]:
    """Run the base model inside (adapters off) when ``model`` has adapters; a no-op otherwise."""
    if is_peft_model(model):
        with model.disable_adapter():
            yield
    else:
        yield


class AdapterFreeReference:
    """The reference model of a LoRA run: the policy's own base weights, called with its adapters disabled.

    It owns no weights (the base is frozen inside the policy), so a per-step reference costs one forward pass and
    no memory; the engine treats it like a frozen model (``parameters()``, ``eval()``, call).
    """

    def __init__(self, policy):
        if not is_peft_model(policy):
            raise ValueError("AdapterFreeReference needs a model with PEFT adapters")
        self.policy = policy

    def parameters(self):
        return self.policy.parameters()

    def eval(self) -> "AdapterFreeReference":
        return self

    def __call__(self, *args, **kwargs):
        was_training = self.policy.training
        self.policy.eval()  # a reference forward has no dropout, whatever mode the policy trains in
        try:
            with self.policy.disable_adapter():
                return self.policy(*args, **kwargs)
        finally:
            self.policy.train(was_training)
