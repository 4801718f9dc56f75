"""llm.training: DPO at step 0, SFT/DPO directions, reference modes, accumulation, epochs, every loss, every arch."""

import copy
import dataclasses
import json
import math

import pytest
import torch

from llm.config import TrainConfig
from llm.data import synthetic_pairs
from llm.models import TINY_ARCHS
from llm.training import NonFiniteLossError, epoch_order, train
from toykit.losses import loss_names
from toykit.runs import read_metrics


def _cfg(tmp_path, name="run", **kw):
    base = dict(num_synthetic=16, held_out=4, num_probes=4, tiny_hidden=32, tiny_vocab_size=300, batch_size=4,
                max_prompt_tokens=32, max_response_tokens=16, lr=3e-3, progress=False, save_model=False,
                out_dir=str(tmp_path / name))
    base.update(kw)
    return TrainConfig(**base)


def _train_rows(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def _probe(run_dir, probe, stat="logp_sum"):
    return [r["value"] for r in read_metrics(run_dir / "metrics.jsonl")
            if r.get("probe") == probe and r.get("statistic") == stat]


def test_dpo_at_step_0_is_log_2_and_the_margin_widens(tmp_path):
    result = train(_cfg(tmp_path, loss="dpo", epochs=3, eval_every=12))
    rows = _train_rows(result.run_dir)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference at the first step
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["rewards/margins"] > 0.2 and rows[-1]["loss"] < math.log(2)
    gap = [c - r for c, r in zip(_probe(result.run_dir, "chosen"), _probe(result.run_dir, "rejected"))]
    assert gap[-1] > gap[0] + 1.0  # log pi(y+) - log pi(y-) on the probes grew
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"} <= rows[0].keys()


def test_sft_raises_log_prob_of_chosen(tmp_path):
    result = train(_cfg(tmp_path, loss="sft", epochs=2, eval_every=100))
    chosen = _probe(result.run_dir, "chosen")
    assert len(chosen) == 2 and chosen[-1] > chosen[0] + 5.0  # step 0 and the final step
    assert result.summary["status"] == "completed" and result.examples_seen == 2 * 12


def test_precomputed_and_per_step_reference_give_the_same_losses(tmp_path):
    a = _train_rows(train(_cfg(tmp_path, "pre", loss="dpo", eval_every=100)).run_dir)
    b = _train_rows(train(_cfg(tmp_path, "per", loss="dpo", eval_every=100, reference="per_step")).run_dir)
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for key in ("loss", "rewards/margins", "logps/chosen"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    a = _train_rows(train(_cfg(tmp_path, "big", loss="ipo", batch_size=4, eval_every=100)).run_dir)
    b = _train_rows(train(_cfg(tmp_path, "acc", loss="ipo", batch_size=2, grad_accum=2, eval_every=100)).run_dir)
    assert [r["examples_seen"] for r in a] == [r["examples_seen"] for r in b] == [4, 8, 12]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)


def test_epochs_budget_and_seeded_order(tmp_path):
    assert epoch_order(12, 0, 0) == epoch_order(12, 0, 0) != epoch_order(12, 0, 1)
    assert epoch_order(12, 0, 0) != epoch_order(12, 1, 0)
    assert sorted(epoch_order(12, 5, 3)) == list(range(12))
    result = train(_cfg(tmp_path, epochs=3, max_examples=20, eval_every=100, batch_size=8))
    assert [r["examples_seen"] for r in _train_rows(result.run_dir)] == [8, 12, 20]  # partial last batch per epoch
    assert _train_rows(result.run_dir)[-1]["epoch"] == pytest.approx(20 / 12)


def test_warmup_and_clipping_are_applied(tmp_path):
    rows = _train_rows(train(_cfg(tmp_path, loss="sft", warmup_steps=3, max_grad_norm=1e-3, optimizer="sgd",
                                  eval_every=100)).run_dir)
    assert [r["learning_rate"] for r in rows] == pytest.approx([1e-3, 2e-3, 3e-3])
    assert all(r["grad_norm"] > 1e-3 for r in rows)  # the pre-clip norm is logged; the step used the clipped one


def test_clipping_bounds_the_sgd_step(tmp_path):
    # One SGD step from the same start with and without a clip: the clipped update has norm lr * max_grad_norm.
    first = train(_cfg(tmp_path, "start", max_examples=4, eval_every=100, optimizer="sgd", lr=1e-9))
    deltas = {}
    for name, clip in (("clip", 1e-3), ("free", 0.0)):
        start = copy.deepcopy(first.model)
        before = torch.cat([p.detach().flatten().clone() for p in start.parameters()])
        result = train(_cfg(tmp_path, name, max_examples=4, eval_every=100, optimizer="sgd", lr=3e-3,
                            max_grad_norm=clip), model=start, tokenizer=first.tokenizer)
        after = torch.cat([p.detach().flatten() for p in result.model.parameters()])
        deltas[name] = float((after - before).norm())
    assert deltas["clip"] == pytest.approx(3e-3 * 1e-3, rel=1e-3)
    assert deltas["free"] > 10 * deltas["clip"]


@pytest.mark.parametrize("loss", [*loss_names(), "extend"])
def test_every_registry_loss_trains_one_step(tmp_path, loss):
    cfg = _cfg(tmp_path, loss=loss, max_examples=4, eval_every=100, optimizer="rmsprop", num_synthetic=8,
               num_probes=2)
    result = train(cfg)
    [row] = _train_rows(result.run_dir)
    assert math.isfinite(row["loss"]) and row["grad_norm"] > 0
    assert ("rewards/margins" in row) == (loss not in ("sft", "extend", "slic", "simpo", "orpo"))  # no reference


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_one_sft_and_one_dpo_step_on_each_architecture(tmp_path, arch):
    pairs = synthetic_pairs(8, seed=1)
    sft = train(_cfg(tmp_path, "sft", model=f"tiny-{arch}", max_examples=4, eval_every=100, num_probes=2),
                pairs=pairs)
    before = {k: v.clone() for k, v in sft.model.state_dict().items()}
    dpo = train(_cfg(tmp_path, "dpo", model=f"tiny-{arch}", loss="dpo", max_examples=4, eval_every=100,
                     num_probes=2), model=sft.model, tokenizer=sft.tokenizer, pairs=pairs)
    [row] = _train_rows(dpo.run_dir)
    assert row["loss"] == pytest.approx(math.log(2), abs=1e-5)  # the SFT model is the DPO reference
    assert any(not torch.equal(before[k], v) for k, v in dpo.model.state_dict().items())


def test_nan_loss_stops_with_a_message_and_keeps_rows(tmp_path):
    first = train(_cfg(tmp_path, "ok", max_examples=4, eval_every=100))
    model = first.model
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"NaN or infinite.*stopped at optimizer step 1"):
        train(_cfg(tmp_path, "nan", max_examples=4, eval_every=100), model=model, tokenizer=first.tokenizer)
    run_dir = tmp_path / "nan"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "non_finite_loss"
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows and all(r["step"] == 0 for r in rows)  # the step-0 probe rows were kept


def test_run_directory_is_never_reused_and_arrays_keep_their_key_order(tmp_path):
    import numpy as np
    cfg = _cfg(tmp_path, max_examples=4, eval_every=100)
    result = train(cfg)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg)
    with pytest.raises(ValueError, match="already completed"):
        train(dataclasses.replace(cfg, resume=True))
    keys = json.loads((result.run_dir / "probes" / "keys.json").read_text())["keys"]
    arrays = np.load(result.run_dir / "probes" / "step_0000001.npz")
    assert list(arrays.keys()) == keys and arrays["chosen/logp_sum"].shape == (4,)
    assert arrays["chosen/logp_sum"].mean() == pytest.approx(_probe(result.run_dir, "chosen")[-1])
    assert json.loads((result.run_dir / "config.json").read_text())["loss"] == "sft"


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown loss 'dpoo'"):
        TrainConfig(loss="dpoo")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="--resume needs --out-dir"):
        TrainConfig(resume=True)


@pytest.mark.gpu
def test_bf16_autocast_dpo_on_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    result = train(_cfg(tmp_path, loss="dpo", device="cuda", bf16=True, epochs=3, eval_every=12))
    rows = _train_rows(result.run_dir)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # same autocast for reference and policy
    assert rows[-1]["rewards/margins"] > 0.2
    assert next(result.model.parameters()).device.type == "cuda"
    assert all(math.isfinite(v) for v in _probe(result.run_dir, "chosen"))
