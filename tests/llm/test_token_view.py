"""The token view (llm.token_view): per-token change of log pi along probes and the top gaining tokens, written by
SFT/DPO runs (a run hook) and RL runs, equal to a direct computation."""

import copy
import json

import numpy as np
import pytest

from llm.checkpoint import probe_array_path
from llm.config import TrainConfig
from llm.data import ProbeSet
from llm.inputs import truncation_policy
from llm.rl import train_rl
from llm.token_view import TOKEN_VIEW_FILE, load_token_view, token_view, token_view_rows
from llm.training import train


def _cfg(out_dir, **kw):
    base = dict(num_synthetic=16, held_out=4, num_probes=3, tiny_hidden=32, tiny_vocab_size=300, batch_size=4,
                max_prompt_tokens=32, max_response_tokens=16, lr=3e-3, progress=False, save_model=False,
                out_dir=str(out_dir))
    base.update(kw)
    return TrainConfig(**base)


def test_dpo_run_writes_the_token_view_of_its_start_against_its_end(tmp_path):
    sft = train(_cfg(tmp_path / "sft", loss="sft", max_examples=4))
    start = copy.deepcopy(sft.model)
    dpo = train(_cfg(tmp_path / "dpo", loss="dpo", max_examples=8, token_view=2), model=sft.model,
                tokenizer=sft.tokenizer)
    saved = load_token_view(dpo.run_dir)
    probes = ProbeSet(tuple(p["prompt"] for p in saved["probes"]), {"chosen": tuple(p["response"] for p in
                                                                                   saved["probes"])})
    want = token_view(start, dpo.model.eval(), sft.tokenizer, probes, truncation_policy(_cfg(tmp_path / "x")), n=2)
    assert len(want["probes"]) == len(saved["probes"]) == 2
    for w, got in zip(want["probes"], saved["probes"]):
        assert [p["token"] for p in w["positions"]] == [p["token"] for p in got["positions"]]
        for key in ("logp_before", "logp_after", "delta_logp"):
            assert [p[key] for p in w["positions"]] == pytest.approx([p[key] for p in got["positions"]], abs=1e-5)
    first = saved["probes"][0]
    for pos in first["positions"]:
        assert pos["delta_logp"] == pytest.approx(pos["logp_after"] - pos["logp_before"], abs=1e-5)
        assert len(pos["top_gainers"]) == 3
        assert pos["top_gainers"][0]["delta_p"] >= pos["top_gainers"][-1]["delta_p"]
    # the summed per-token log-probs before the run are the start's teacher-forced log pi(y+) at step 0
    arrays = np.load(probe_array_path(dpo.run_dir, 0))
    assert sum(p["logp_before"] for p in first["positions"]) == pytest.approx(float(arrays["chosen/logp_sum"][0]),
                                                                            abs=1e-3)
    rows = token_view_rows(saved, 0)
    assert [r["position"] for r in rows] == list(range(len(first["positions"])))


def test_rl_run_writes_a_token_view(tmp_path):
    def reward(prompts, completions):
        return [float(len(c)) for c in completions]

    result = train_rl(_cfg(tmp_path / "rl", loss="grpo", num_generations=2, max_completion_length=4, batch_size=2,
                           max_examples=2, token_view=1), reward)
    view = json.loads((result.run_dir / TOKEN_VIEW_FILE).read_text())
    assert view["probe_type"] == "chosen" and len(view["probes"]) == 1
    assert any(abs(p["delta_logp"]) > 0 for p in view["probes"][0]["positions"])


def test_bad_probe_type_is_refused(tmp_path):
    sft = train(_cfg(tmp_path / "sft", loss="sft", max_examples=4))
    from llm.data import probe_set_from_pairs, synthetic_pairs

    pairs = synthetic_pairs(16, seed=0)
    probes = probe_set_from_pairs(pairs[:3], held_out=pairs[-4:], seed=0)
    with pytest.raises(ValueError, match=r"probe type 'nope' is not in the probe set"):
        token_view(sft.model, sft.model, sft.tokenizer, probes, truncation_policy(_cfg(tmp_path / "y")),
                   probe_type="nope")
