"""Probe-file loader edge cases a newcomer hits: keys that differ between records, misspelt keys, one prompt."""

import json
import warnings

import pytest

from llm.data import PROBE_TYPES, derive_probes, load_probe_set


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_first_record_without_rejected_does_not_drop_it_for_all(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a?", "chosen": " x"},
                                         {"prompt": "b?", "chosen": " y", "rejected": " z"}])
    with pytest.raises(ValueError, match=r"p\.jsonl:1: missing key\(s\) \['rejected'\]"):
        load_probe_set(path)


def test_every_record_with_rejected_keeps_it_whatever_the_order(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a?", "chosen": " x", "rejected": " u"},
                                         {"prompt": "b?", "chosen": " y", "rejected": " z"}])
    assert load_probe_set(path).responses["rejected"] == (" u", " z")


def test_a_misspelt_key_is_reported(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a?", "chosen": " x", "reject": " u"},
                                         {"prompt": "b?", "chosen": " y", "reject": " z"}])
    with pytest.warns(UserWarning, match=r"\['reject'\] are no probe type"):
        probes = load_probe_set(path)
    assert "rejected" not in probes.responses


def test_paper_keys_raise_no_warning(tmp_path):
    record = {"prompt": "a?", "chosen_selfr": " s", **{k: f" {k}" for k in PROBE_TYPES}}
    path = _jsonl(tmp_path / "p.jsonl", [record, {**record, "prompt": "b?"}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probes = load_probe_set(path)
    assert probes.probe_types == tuple(PROBE_TYPES) and probes.derived == ()


def test_one_prompt_of_a_full_probe_file_needs_no_derivation(tmp_path):
    record = {"prompt": "a?", **{k: f" {k}" for k in PROBE_TYPES}}
    path = _jsonl(tmp_path / "p.jsonl", [record, {**record, "prompt": "b?"}])
    probes = load_probe_set(path, max_records=1)
    assert len(probes) == 1 and probes.probe_types == tuple(PROBE_TYPES)


def test_one_prompt_that_needs_irr_train_is_refused_clearly(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a?", "chosen": " x"}, {"prompt": "b?", "chosen": " y"}])
    with pytest.raises(ValueError, match="deriving irr_train needs at least 2 prompts"):
        load_probe_set(path, max_records=1)


def test_deriving_a_subset_draws_the_same_responses():
    chosen = [" one two three", " four five six", " seven eight"]
    full = derive_probes(chosen, [" held out answer"], seed=3)
    part = derive_probes(chosen, [" held out answer"], seed=3, types=("random_permute", "random_nonhum"))
    assert set(part) == {"random_permute", "random_nonhum"} and all(part[k] == full[k] for k in part)
