"""Every claim of the scoreboard with its attribution: claims.json and report.md carry the phases' own records."""

import json

import numpy as np
import pytest

from llm.explain_report import explanation_table, load_explanation
from llm.validation.claim_attribution import EXPLAINS, RL_PHASE as PHASE_NAMED_HERE
from llm.validation.pipeline import PRESETS, ValidateConfig, run_validation
from llm.validation.report import ARGMAX, CLAIMS, LARGE_SUFFIX, PHASES, RESPONSE_PROBES
from llm.validation.rl_claims import RL_CLAIMS, RL_PHASE


def test_every_claim_is_mapped_to_its_probes_or_to_why_it_has_none():
    assert set(EXPLAINS) == {c.name for c in (*CLAIMS, *RL_CLAIMS)} and PHASE_NAMED_HERE == RL_PHASE
    for name, spec in EXPLAINS.items():
        assert bool(spec.parts) != bool(spec.why_not), name
        assert all(ph in (*PHASES, RL_PHASE) and pr in (*RESPONSE_PROBES, ARGMAX) for _, ph, pr in spec.parts), name
    specs = {c.name: c for c in CLAIMS}
    for name, spec in EXPLAINS.items():  # the attribution reads the claim's own phases
        if name in specs:
            assert {ph for _, ph, _ in spec.parts} <= set(specs[name].phases), name
    assert {ph for _, ph, _ in EXPLAINS["rl_milder_than_offpolicy"].parts} == {RL_PHASE, "dpo"}


@pytest.fixture(scope="module")
def explained(tmp_path_factory, small_preset):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, "test", small_preset)
        run_dir, doc = run_validation(ValidateConfig(preset="test", seeds=(0, 1), explain_prompts=2, explain_every=2,
                                                     workers=2,
                                                     progress=False,
                                                     out_dir=str(tmp_path_factory.mktemp("e") / "v")))
    return run_dir, json.loads((run_dir / "claims.json").read_text())


def _check(run_dir, att, name, suffix=""):
    """``att``'s per-seed numbers are its parts' explain/ records combined, and the terms sum to the prediction."""
    assert att["status"] == "explained" and att["prompts"] == 2
    assert [(p["weight"], p["phase"], p["probe"]) for p in att["parts"]] == list(EXPLAINS[name].parts)
    for seed, got in zip((0, 1), att["per_seed"]):
        want = _expected(run_dir, seed, att["parts"], suffix)
        assert got["seed"] == seed
        for key in ("measured", "predicted", "residual"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (name, seed, key)
        assert set(got["contributions"]) == set(att["terms"])
        for term, value in got["contributions"].items():
            assert value == pytest.approx(want[term], rel=1e-9, abs=1e-12), (name, seed, term)
        assert sum(got["contributions"].values()) == pytest.approx(got["predicted"], rel=1e-6, abs=1e-9)
    for key in ("measured", "predicted"):
        assert att["mean"][key] == pytest.approx(np.mean([s[key] for s in att["per_seed"]]))


def _record(run_dir, seed: int, phase: str) -> dict[str, dict[str, float]]:
    """The phase's attribution as llm.explain wrote it (explain/ of the phase's run directory), by probe."""
    return explanation_table(load_explanation(run_dir / f"seed_{seed}" / phase)).set_index("probe").to_dict("index")


def _expected(run_dir, seed: int, parts, suffix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for part in parts:
        row = _record(run_dir, seed, part["phase"] + suffix)[part["probe"]]
        for key, value in row.items():
            out[key] = out.get(key, 0.0) + part["weight"] * value
    return out


@pytest.mark.parametrize("name", ["dpo_argmax_up", "sft_chosen_up", "dpo_margin_grows", "extend_rejected_higher",
                                  "extend_smaller_argmax_gain", "extend_smaller_drops"])
def test_claims_carry_the_numbers_of_their_own_phases_record(explained, name):
    run_dir, doc = explained
    _check(run_dir, {c["name"]: c for c in doc["claims"]}[name]["attribution"], name)


def test_the_large_step_column_is_explained_by_the_large_step_phases(explained):
    run_dir, doc = explained
    small = {c["name"]: c for c in doc["claims"]}["dpo_argmax_up"]["attribution"]
    large = {c["name"]: c for c in doc["large_step"]}["dpo_argmax_up"]["attribution"]
    _check(run_dir, large, "dpo_argmax_up", LARGE_SUFFIX)
    assert large["mean"]["measured"] != pytest.approx(small["mean"]["measured"])
    onpolicy = {c["name"]: c for c in doc["large_step"]}["onpolicy_smaller_argmax_gain"]["attribution"]
    assert onpolicy == {"status": "not explained", "why": "no attribution of phase onpolicy_dpo in seed 0: the phase "
                                                          "did not run in this step regime"}


def test_claims_without_an_attribution_say_why(explained):
    _, doc = explained
    by_name = {c["name"]: c["attribution"] for c in doc["claims"]}
    for name in ("dpo_greedy_up", "dpo_peakier_chosen", "extend_win_rate", "prop1_sft_correlation"):
        assert by_name[name]["status"] == "not explained" and by_name[name]["why"] == EXPLAINS[name].why_not


def test_the_report_shows_each_claims_line_next_to_the_scoreboard(explained):
    run_dir, doc = explained
    report = (run_dir / "report.md").read_text()
    section = report[report.index("## What moved each claim"): report.index("## Conditions of the paper's")]
    for entries, label in ((doc["claims"], "small steps"), (doc["large_step"], "large steps")):
        for c in entries:
            att = c["attribution"]
            line = (f"- `{c['name']}` ({label}): {att['summary']}." if att["status"] == "explained"
                    else f"- `{c['name']}` ({label}): not explained ({att['why']}).")
            assert line in section, line
    argmax = {c["name"]: c for c in doc["claims"]}["dpo_argmax_up"]["attribution"]
    verb = "rose" if argmax["mean"]["measured"] > 0 else "fell"
    assert f"argmax_teacher_forced over dpo {verb} by {abs(argmax['mean']['measured']):.3f} nats" in section
    assert "mean over seeds 0, 1; first 2 probe prompts" in argmax["summary"]


def test_the_rl_claims_are_explained_by_the_grpo_phase_and_dpo(explained):
    run_dir, _ = explained
    rl = {c["name"]: c["attribution"] for c in json.loads((run_dir / "claims_rl.json").read_text())["claims"]}
    _check(run_dir, rl["rl_milder_than_offpolicy"], "rl_milder_than_offpolicy")
    assert rl["rl_reward_up"] == {"status": "not explained", "why": EXPLAINS["rl_reward_up"].why_not}
    report = (run_dir / "report.md").read_text()
    assert f"- `rl_milder_than_offpolicy`: {rl['rl_milder_than_offpolicy']['summary']}." in \
        report[report.index("## What moved each RL claim"):]


def test_the_report_shows_prop1_along_the_real_steps_and_the_command(explained):
    run_dir, _ = explained
    report = (run_dir / "report.md").read_text()
    meta = json.loads((run_dir / "seed_1" / "extend_dpo" / "explain" / "meta.json").read_text())
    assert meta["explain_every"] == 2  # --explain-every reaches every phase
    assert (f"| 1 | extend_dpo | {meta['optimizer']} | {meta['steps']} (2) | {meta['median_step_correlation']:.4f} | "
            in report[report.index("## Proposition 1"):])
    assert "Regenerate with `python -m llm validate --preset test --seeds 0,1 --explain-prompts 2 --explain-every 2`" \
        in report
