"""The pre-registered rules: verdicts, conditions, premises, the two step regimes, the grid and the bootstrap."""

import numpy as np
import pytest

from llm.validation.report import (CLAIMS, CONDITIONS, MIN_EVALS, ClaimSpec, SeedResult, claims_document,
                                   evaluate_claims, evaluate_regimes, paired_bootstrap, phase_conditions)


def _rows(phase, probe, values, statistic="logp_sum"):
    return [{"phase": phase, "step": i, "examples_seen": 10 * i, "probe": probe, "statistic": statistic,
             "value": float(v)} for i, v in enumerate(values)]


def _start_stats(phase, energy=0.4, top1=0.7, rejected_top1=0.2):
    return (_rows(phase, "chosen", [energy, energy], "energy") + _rows(phase, "chosen", [top1, top1], "top1_share")
            + _rows(phase, "rejected", [rejected_top1, 0.1], "top1_share")
            + _rows(phase, "chosen", [1.0, 0.9], "entropy") + _rows(phase, "rejected", [0.5, 0.5], "valley_share"))


def _conditions(max_step=0.3, overlap=0.05):
    return {"overlap": overlap, "ches_cosine": 0.5, "max_step": max_step}


def _seed(seed, dpo_chosen, *, max_step=0.3, large_chosen=None, energy=0.4):
    rows = _rows("dpo", "chosen", dpo_chosen) + _start_stats("dpo", energy=energy)
    extras = {"conditions": {"dpo": _conditions(max_step)}}
    if large_chosen is not None:
        rows += _rows("dpo_large", "chosen", large_chosen) + _start_stats("dpo_large")
        extras["conditions"]["dpo_large"] = _conditions(max_step=6.0)
    return SeedResult(seed, tuple(rows), {}, {}, extras)


_DOWN = ClaimSpec("down", "off-policy DPO", "y+ falls", "Delta y+", "<", 0.0, lambda r: r.delta("dpo", "chosen"),
                  phases=("dpo",), conditions=("energy", "argmax_not_chosen", "rejected_peak", "overlap", "max_step"))


def test_verdicts_need_every_seed_and_every_condition():
    holds = evaluate_claims([_seed(0, [-1, -2]), _seed(1, [-1, -3])], [_DOWN])[0]
    assert holds["verdict"] == "holds" and holds["passed"] is True and holds["values"] == [-1.0, -2.0]
    mixed = evaluate_claims([_seed(0, [-1, -2]), _seed(1, [-1, 0])], [_DOWN])[0]
    assert mixed["verdict"] == "mixed" and mixed["passed"] is False and mixed["seeds_holding"] == 1
    # One seed outside the regime (a large step) takes the claim out of the scored total, whatever its values.
    out = evaluate_claims([_seed(0, [-1, -2]), _seed(1, [-1, -3], max_step=5.0)], [_DOWN])[0]
    assert out["verdict"] == "not in the paper's regime" and out["passed"] is None and out["seeds_holding"] == 2
    assert out["conditions_failed"] == ["max_step@dpo (seed 1: 5 vs <= 1)"]
    low_energy = evaluate_claims([_seed(0, [-1, -2], energy=0.1)], [_DOWN])[0]
    assert low_energy["verdict"] == "not in the paper's regime"
    missing = evaluate_claims([SeedResult(0, (), {}, {})], [_DOWN])[0]
    assert missing["verdict"] == "not measured"
    doc = claims_document([holds, mixed, out, missing], {"preset": "x"})
    assert (doc["held"], doc["total"], doc["out_of_regime"], doc["not_measured"]) == (1, 2, 1, 1)


def test_a_claim_without_its_premise_is_not_testable():
    spec = ClaimSpec("smaller_gain", "g", "gain smaller", "x", ">", 0.0, lambda r: 1.0,
                     premise=("y+ rose", lambda r: r.delta("dpo", "chosen")))
    scored = evaluate_claims([_seed(0, [-1, 2]), _seed(1, [-1, -2])], [spec])[0]
    assert scored["verdict"] == "not testable" and scored["premise_holds"] == [True, False]
    assert evaluate_claims([_seed(0, [-1, 2])], [spec])[0]["verdict"] == "holds"


def test_the_large_step_column_reads_the_large_phases_under_the_same_names():
    seeds = [_seed(0, [-1, -2], large_chosen=[-1, 4])]
    regimes = evaluate_regimes(seeds, [_DOWN])
    assert regimes["small"][0]["values"] == [-1.0] and regimes["small"][0]["verdict"] == "holds"
    big = regimes["large"][0]
    assert big["values"] == [5.0] and big["seeds_holding"] == 0
    assert big["verdict"] == "not in the paper's regime", "a 6-nat step is outside the kernel regime"
    assert evaluate_regimes([_seed(0, [-1, -2])], [_DOWN])["large"][0]["verdict"] == "not measured"
    sft_only = ClaimSpec("sft", "SFT", "x", "x", ">", 0.0, lambda r: 1.0, phases=("sft",))
    assert [c["name"] for c in evaluate_regimes(seeds, [sft_only, _DOWN])["large"]] == ["down"]


def test_conditions_read_the_phase_start():
    got = phase_conditions(_seed(0, [-1, -2]), "dpo")
    assert set(got) == {c.name for c in CONDITIONS}
    assert got["energy"] == 0.4 and got["argmax_not_chosen"] == pytest.approx(0.3) and got["rejected_peak"] == 0.2
    assert got["max_step"] == 0.3 and np.isnan(phase_conditions(_seed(0, [-1, -2]), "sft")["energy"])


def test_rise_then_fall_needs_the_grid_and_the_margin():
    spec = next(c for c in CLAIMS if c.name == "sft_rejected_up_then_down")
    hump = list(np.concatenate([np.linspace(-40, -37, 11), np.linspace(-37, -39, MIN_EVALS - 10)]))
    seed = SeedResult(0, tuple(_rows("sft", "rejected", hump)), {}, {})
    assert spec.value(seed) == pytest.approx(2.0) and spec.holds(spec.value(seed))
    small = SeedResult(0, tuple(_rows("sft", "rejected", [v / 10 for v in hump])), {}, {})
    assert not spec.holds(spec.value(small)), "a 0.2-nat hump is inside the 1-nat margin"
    coarse = SeedResult(0, tuple(_rows("sft", "rejected", [-40, -30, -39])), {}, {})
    with pytest.raises(ValueError, match="evaluations"):
        spec.value(coarse)


def test_paired_bootstrap_interval_and_the_win_rate_rule():
    rng = np.random.default_rng(0)
    outcomes = rng.choice([0.0, 0.5, 1.0], size=400, p=[0.3, 0.2, 0.5])
    mean, lo, hi = paired_bootstrap(outcomes, resamples=2000, level=0.95, seed=0)
    se = outcomes.std() / np.sqrt(outcomes.size)
    assert lo < mean < hi and mean == pytest.approx(outcomes.mean())
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15), "the interval matches the normal one for a mean"
    spec = next(c for c in CLAIMS if c.name == "extend_win_rate")
    assert spec.value(SeedResult(0, (), {"per_prompt": list(outcomes)}, {})) == pytest.approx(lo)
    with pytest.raises(ValueError, match="held-out prompts"):
        spec.value(SeedResult(0, (), {"per_prompt": [1.0] * 50}, {}))


def test_registered_claims_cover_the_paper_and_name_known_conditions():
    names = [c.name for c in CLAIMS]
    assert len(names) == len(set(names)) >= 20
    assert {c.group for c in CLAIMS} >= {"SFT", "off-policy DPO", "extend", "on-policy DPO", "Proposition 1"}
    known = {c.name for c in CONDITIONS}
    assert all(c.op in (">", "<") and set(c.conditions) <= known for c in CLAIMS)
    assert all(c.phases for c in CLAIMS if c.conditions), "conditions are measured at the claim's phases"
    greedy = [c for c in CLAIMS if "greedy" in c.name]
    assert greedy and all("per-token" in c.measure or "pi_v^2" in c.measure for c in greedy)
