"""The validation pipeline: claims scoring rules, on-policy pair ranking, and a reduced run end to end."""

import json

import numpy as np
import pytest
import torch

from llm.validation.claim_attribution import EXPLAINS, NO_RECORD
from llm.validation.rl_claims import RL_CLAIMS
from llm.validation.judge import Judge
from llm.validation.report import CLAIMS
from llm.runs import claims_score, read_claims, read_run_metrics
from llm.validation.pipeline import PRESETS, ValidateConfig, onpolicy_pairs, run_validation
from llm.validation.world import WorldConfig, build_world


def test_onpolicy_pairs_rank_by_the_judge_and_skip_ties():
    world = build_world(WorldConfig(seed=2, n_entities=6, n_probes=3, docs_per_entity=1, n_unrelated=5))
    judge = Judge(world)
    a, b = world.train_pairs[0], world.train_pairs[1]
    pairs, stats = onpolicy_pairs(judge, [a["prompt"], b["prompt"]],
                                  [[a["rejected"], a["chosen"], " "], [b["chosen"], b["chosen"]]])
    assert len(pairs) == 1 and stats["pairs"] == 1 and stats["prompts"] == 2
    assert pairs[0].chosen == a["chosen"] and pairs[0].rejected == " ", "an empty answer is the worst"


def test_config_is_validated():
    with pytest.raises(ValueError, match="seeds"):
        ValidateConfig(seeds=())
    with pytest.raises(ValueError, match="go together"):
        ValidateConfig(model="some/dir")
    assert set(PRESETS) == {"test", "cpu", "gpu"}


def test_reduced_pipeline_runs_end_to_end(tmp_path):
    threads = torch.get_num_threads()
    run_dir, doc = run_validation(ValidateConfig(preset="test", seeds=(0, 1), out_dir=str(tmp_path / "v")))
    assert torch.get_num_threads() == threads, "the thread setting is restored"
    for name in ("config.json", "env.json", "claims.json", "report.md", "metrics.jsonl", "probe_curves.png",
                 "baseline_vs_extend.png", "prop1_scatter.png"):
        assert (run_dir / name).is_file(), name
    claims = read_claims(run_dir)
    assert len(claims) == len(CLAIMS) and claims_score(claims)[1] == doc["total"]
    by_name = {c["name"]: c for c in doc["claims"]}
    # The phases all ran and were probed: every claim got a value in both seeds, except those whose rule needs
    # more than the test preset has (the evaluation grid of the rise-then-fall, 200 held-out prompts).
    coarse = {"sft_rejected_up_then_down", "extend_win_rate"}
    assert all(len(c["values"]) == 2 and all(np.isfinite(c["values"])) for c in doc["claims"]
               if c["name"] not in coarse)
    # Properties that hold whatever the training does: SFT raises y+, extend raises y- above the baseline,
    # DPO widens the margin, and a small step is predicted by Prop. 1.
    for name in ("sft_chosen_up", "extend_rejected_higher", "dpo_margin_grows", "prop1_sft_correlation",
                 "prop1_dpo_correlation"):
        assert by_name[name]["seeds_holding"] == 2, (name, by_name[name]["values"])
    assert by_name["prop1_sft_correlation"]["passed"] is True
    assert {by_name[n]["verdict"] for n in coarse} == {"not measured"}
    table = read_run_metrics(run_dir)
    assert set(table["phase"]) == {"sft", "extend_sft", "dpo", "extend_dpo", "onpolicy_dpo", "dpo_large",
                                   "extend_dpo_large", "grpo"}
    # Both step regimes are scored: the large-step column holds every claim that reads a DPO phase.
    large = {c["name"]: c for c in doc["large_step"]}
    assert "dpo_argmax_up" in large and "sft_chosen_up" not in large and len(large["dpo_argmax_up"]["values"]) == 2
    seeds = json.loads((run_dir / "seeds.json").read_text())
    for s in seeds:  # the conditions and the argmax split were measured at every phase
        assert set(s["extras"]["conditions"]) == set(table["phase"]) - {"grpo"} == set(s["extras"]["argmax_split"])
        assert len(s["extras"]["rl"]["reward"]) == 2  # the GRPO phase's two steps (llm.validation.rl_claims)
        assert all(0 <= c["overlap"] <= 1 and c["max_step"] >= 0 for c in s["extras"]["conditions"].values())
        assert s["extras"]["conditions"]["dpo_large"]["max_step"] > s["extras"]["conditions"]["dpo"]["max_step"]
        # the engine's defaults ran (test_validate_modes checks --probe-mode full --share-prompts false): the
        # world's prompts average ~15 tokens, under share_prompts_min_tokens (24), so its DPO steps are unshared
        assert s["extras"]["probe_modes"]["dpo"] == {"probe_mode": "shared", "share_prompts": False}
    assert [s["seed"] for s in seeds] == [0, 1] and 0.0 <= seeds[0]["win_rate"]["win_rate"] <= 1.0
    report = (run_dir / "report.md").read_text()
    assert "claims hold in every seed" in report and "prop1_scatter.png" in report
    assert "Conditions of the paper's argument" in report and "verdict, large steps" in report
    # no --explain-prompts: no claim has an attribution, and neither file invents one
    assert all(c["attribution"] == {"status": "not explained", "why": NO_RECORD}
               for c in doc["claims"] if EXPLAINS[c["name"]].parts)
    assert f"Not explained: {NO_RECORD}" in report and "outweighed" not in report
    assert "Not measured: the run had no `--explain-prompts N`." in report  # Prop. 1 along the real steps
    assert "Regenerate with `python -m llm validate --preset test --seeds 0,1`." in report
    rl = json.loads((run_dir / "claims_rl.json").read_text())
    assert [c["name"] for c in rl["claims"]] == [c.name for c in RL_CLAIMS] and "## Online RL" in report
    with pytest.raises(FileExistsError):
        run_validation(ValidateConfig(preset="test", seeds=(0,), out_dir=str(run_dir)))


def test_cli_validate_stops_at_the_time_budget_and_keeps_a_complete_report(tmp_path, capsys, monkeypatch,
                                                                          small_preset):
    from llm.cli import main

    # What is checked here is the CLI and the budget's bookkeeping, not the numbers: a smaller world and schedule
    # than the test preset's (every phase still runs; the test above runs the preset itself).
    monkeypatch.setitem(PRESETS, "test", small_preset)
    out = tmp_path / "budget"
    # A budget far below one seed's time: the first seed always runs, the second is skipped.
    assert main(["validate", "--preset", "test", "--seeds", "0,1", "--time-budget-s", "0.001",
                 "--out-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds_done"] == [0]
    assert summary["status"].startswith("stopped by the time budget after 1 of 2 seeds") and summary["cpu_seconds"] > 0
    claims = json.loads((out / "claims.json").read_text())
    assert claims["seeds"] == [0] and len(claims["claims"]) == len(CLAIMS)
    assert claims["total"] + claims["out_of_regime"] + claims["not_testable"] + claims["not_measured"] == len(CLAIMS)
    assert (out / "report.md").read_text().count("stopped by the time budget") == 1
    assert not (out / "seed_1").exists()
    assert "claims hold in every seed" in capsys.readouterr().out
