"""llm.lora: a LoRA DPO run (adapters only, base-with-adapters-off reference), save/resume, Prop. 1 on its kernel."""

import dataclasses
import math

import pytest
import torch

from llm.config import TrainConfig
from llm.lora import AdapterFreeReference, apply_lora, trainable_parameters
from llm.models import tiny_model
from llm.training import train
from toykit.runs import read_metrics

peft = pytest.importorskip("peft")


def _cfg(tmp_path, name, **kw):
    base = dict(loss="dpo", num_synthetic=16, held_out=4, num_probes=4, tiny_hidden=32, tiny_vocab_size=300,
                batch_size=4, max_prompt_tokens=32, max_response_tokens=16, lr=1e-2, progress=False, epochs=2,
                eval_every=8, lora_r=4, lora_alpha=8.0, out_dir=str(tmp_path / name))
    return TrainConfig(**{**base, **kw})


def _rows(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_lora_dpo_trains_only_adapters_against_the_base(tmp_path):
    result = train(_cfg(tmp_path, "pre"))
    rows = _rows(result.run_dir)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # B = 0: adapted model == base at step 0
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    model = result.model
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    base = tiny_model("gpt2", len(result.tokenizer), seed=0, hidden=32, layers=2, heads=2, max_positions=48,
                      pad_token_id=result.tokenizer.pad_token_id, eos_token_id=result.tokenizer.eos_token_id)
    with model.disable_adapter():  # the frozen base is bit-for-bit the untrained model
        for (n, p), (_, q) in zip([(n, p) for n, p in model.named_parameters() if "lora_" not in n],
                                  base.named_parameters()):
            assert torch.equal(p.cpu(), q), n
    per_step = _rows(train(_cfg(tmp_path, "per", reference="per_step")).run_dir)
    for a, b in zip(rows, per_step):  # the adapters-off reference each step equals the precomputed one
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-4, abs=1e-6)
    assert (result.run_dir / "adapter" / "adapter_config.json").exists()
    merged = type(base).from_pretrained(result.run_dir / "model")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model.cpu()(ids).logits, rtol=1e-4, atol=1e-5)


def test_lora_resume_equals_an_uninterrupted_run(tmp_path):
    full = train(_cfg(tmp_path, "full", save_model=False))
    train(_cfg(tmp_path, "cut", save_model=False, checkpoint_every=2, stop_after_steps=3))
    resumed = train(_cfg(tmp_path, "cut", save_model=False, checkpoint_every=2, resume=True))
    a, b = _rows(full.run_dir), _rows(resumed.run_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-7)


def test_adapter_free_reference_is_the_base(tokenizer):
    model = apply_lora(tiny_model("gpt2", len(tokenizer), seed=1), r=2, alpha=4.0, target_modules="c_attn")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)  # move the adapters away from B = 0
    ids = torch.tensor([[3, 4, 5, 6]])
    ref = AdapterFreeReference(model)
    base = tiny_model("gpt2", len(tokenizer), seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ref(input_ids=ids).logits, base(input_ids=ids).logits)
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits)
    with pytest.raises(ValueError, match="target-modules"):
        apply_lora(tiny_model("gpt2", len(tokenizer)), r=2, alpha=4.0, target_modules="no_such_module")


def _prop1(model, tokenizer, pairs, trainable_only):
    from llm.encoding import TruncationPolicy
    from llm.validation.prop1 import Prop1Config, run_prop1

    recs = [dataclasses.asdict(p) for p in pairs[:3]]
    cfg = Prop1Config(loss="dpo", n_steps=2, target_change=0.05, trainable_only=trainable_only)
    return run_prop1(model, tokenizer, recs[:2], recs, ["chosen", "rejected"], cfg, TruncationPolicy(64, 32))


def test_prop1_on_trainable_parameters_equals_the_full_computation_when_all_train(tokenizer, pairs):
    model = tiny_model("gpt2", len(tokenizer), seed=0, hidden=16)
    restricted, full = _prop1(model, tokenizer, pairs, True), _prop1(model, tokenizer, pairs, False)
    assert restricted.predicted.shape == full.predicted.shape
    torch.testing.assert_close(torch.as_tensor(restricted.predicted), torch.as_tensor(full.predicted))
    torch.testing.assert_close(torch.as_tensor(restricted.measured), torch.as_tensor(full.measured))
    assert len(trainable_parameters(model)) == len(list(model.parameters()))


def test_prop1_on_a_lora_kernel_predicts_the_lora_step(tokenizer, pairs):
    lora = apply_lora(tiny_model("gpt2", len(tokenizer), seed=0, hidden=16), r=2, alpha=4.0)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # B != 0, so the LoRA gradients reach lora_A too
    result = _prop1(lora, tokenizer, pairs, True)
    assert result.relative_error < 0.05 and 1.7 < result.slope < 2.3  # first order in eta, remainder ~ eta^2
    full = _prop1(lora, tokenizer, pairs, False)  # the full-parameter kernel is a different prediction
    assert not torch.allclose(torch.as_tensor(full.predicted), torch.as_tensor(result.predicted), rtol=0.05)


def test_saved_adapters_continue_on_the_same_base(tmp_path):
    first = train(_cfg(tmp_path, "first"))
    second = train(_cfg(tmp_path, "second", lora_r=0, lora_adapter=str(first.run_dir / "adapter"), epochs=1))
    start = {(r["probe"], r["statistic"]): r["value"] for r in read_metrics(second.run_dir / "metrics.jsonl")
             if "probe" in r and r["step"] == 0}
    end = {(r["probe"], r["statistic"]): r["value"] for r in read_metrics(first.run_dir / "metrics.jsonl")
           if "probe" in r and r["step"] == first.step}
    assert start == pytest.approx(end, rel=1e-5, abs=1e-6)  # the second run starts where the first ended
    assert all("lora_" in n for n, p in second.model.named_parameters() if p.requires_grad)
    rows = _rows(second.run_dir)
    assert rows[0]["rewards/margins"] > 0  # its reference is the base (adapters off), not the loaded adapters
    with pytest.raises(ValueError, match="adapter_config.json"):  # refused before any run folder exists
        _cfg(tmp_path, "bad", lora_adapter=str(tmp_path))
    assert not (tmp_path / "bad").exists()
