"""results/cpu is current: the committed run matches what the code computes, and the README quotes it.

The full cpu preset takes minutes, so the check is reduced: (1) the committed claims.json lists exactly the
current pre-registered rules and conditions; (2) its verdicts follow from its own per-seed values under those
rules; (3) the fingerprint of the committed run (world, tokenizer, rules and preset digests, and numbers from a
miniature pretrain / SFT / DPO through the same engine) equals the code's for the same seed, within float noise
(``llm.validation.fingerprint.RTOL`` / ``ATOL``); (4) the README's results table quotes the committed numbers.
Regenerate with ``python -m llm validate --preset cpu --out-dir results/cpu`` (into an empty folder).
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from llm.validation.fingerprint import compare_fingerprints, fingerprint
from llm.validation.pipeline import PRESETS
from llm.validation.report import CLAIMS, CONDITIONS

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "results" / "cpu"



@pytest.fixture(scope="module")
def committed():
    if not (RESULTS / "claims.json").exists():
        pytest.fail("results/cpu/claims.json is missing: run the cpu preset into results/cpu")
    return json.loads((RESULTS / "claims.json").read_text())


def test_committed_claims_list_the_current_rules(committed):
    assert [(c["name"], c["measure"], c["rule"]) for c in committed["claims"]] == \
        [(c.name, c.measure, c.rule) for c in CLAIMS], "a rule changed since results/cpu was generated"
    assert [(c["name"], c["rule"]) for c in committed["conditions_rules"]] == [(c.name, c.rule) for c in CONDITIONS]
    assert committed["preset"] == "cpu" and len(committed["seeds"]) >= 3 and (RESULTS / "env.json").exists()


def test_committed_verdicts_follow_from_their_values(committed):
    specs = {c.name: c for c in CLAIMS}
    for c in committed["claims"]:
        holding = sum(specs[c["name"]].holds(v) for v in c["values"])
        assert holding == c["seeds_holding"], c["name"]
        if c["verdict"] in ("holds", "mixed", "fails"):
            expected = "holds" if holding == c["n_seeds"] else "fails" if holding == 0 else "mixed"
            assert c["verdict"] == expected and not c["conditions_failed"], c["name"]
        elif c["verdict"] == "not in the paper's regime":
            assert c["conditions_failed"], c["name"]
    assert committed["held"] == sum(c["verdict"] == "holds" for c in committed["claims"])


def test_the_code_still_computes_the_committed_run():
    committed = json.loads((RESULTS / "fingerprint.json").read_text())
    current = fingerprint(PRESETS["cpu"], committed["seed"])
    problems = compare_fingerprints(committed, current)
    assert not problems, "results/cpu is stale (regenerate it):\n" + "\n".join(problems[:20])


def test_compare_fingerprints_passes_float_noise_and_catches_real_change():
    base = {"world": "abc", "vocab_size": 10, "sft": {"chosen/logp_sum": -50.0, "chosen/peakiness": 0.01}}
    noisy = {"world": "abc", "vocab_size": 10, "sft": {"chosen/logp_sum": -50.0 + 1e-4, "chosen/peakiness": 0.01}}
    assert compare_fingerprints(base, noisy) == []
    moved = {**base, "sft": {"chosen/logp_sum": -49.5, "chosen/peakiness": 0.01}}
    assert compare_fingerprints(base, moved) == ["sft/chosen/logp_sum: committed -50, code now gives -49.5"]
    assert compare_fingerprints(base, {**base, "world": "abd"})[0].startswith("world:")
    assert "only in the current" in compare_fingerprints(base, {**base, "new": 1.0})[0]


def test_readme_quotes_the_committed_run(committed):
    readme = (ROOT / "README.md").read_text()
    assert f"**{committed['held']} of {committed['total']} claims hold in every seed**" in readme
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \|[^|]*\| ([^|]+) \|", readme, re.M)}
    for c in committed["claims"]:
        assert c["name"] in rows, f"README's results table lacks {c['name']}"
        cell = rows[c["name"]]
        assert cell.startswith(c["verdict"]), (c["name"], cell, c["verdict"])
        if c["mean"] is not None:
            assert f"mean {c['mean']:.3g}" in cell, (c["name"], cell)
    assert np.isfinite(committed["seconds"])
