"""``python -m llm validate --probe-mode / --share-prompts``: every phase, probe pass and DPO step runs in the mode asked."""

import json

import pytest

import llm.probes
from llm.validation.pipeline import PRESETS, ValidateConfig, run_validation


def test_full_probes_and_unshared_steps_run_in_every_phase(tmp_path, monkeypatch, small_preset):
    monkeypatch.setitem(PRESETS, "test", small_preset)
    modes = []  # the mode of every ProbeEvaluator the validation builds (phases, greedy, one-step, GRPO)
    init = llm.probes.ProbeEvaluator.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        modes.append(self.mode)

    monkeypatch.setattr(llm.probes.ProbeEvaluator, "__init__", spy)
    run_dir, _ = run_validation(ValidateConfig(preset="test", seeds=(0,), probe_mode="full", share_prompts=False,
                                               progress=False, out_dir=str(tmp_path / "v")))
    assert len(modes) > 10 and set(modes) == {"full"}, modes
    recorded = json.loads((run_dir / "config.json").read_text())["validate"]
    assert recorded["probe_mode"] == "full" and recorded["share_prompts"] is False
    ran = json.loads((run_dir / "seeds.json").read_text())[0]["extras"]["probe_modes"]
    assert {"sft", "extend_sft", "dpo", "extend_dpo", "dpo_large", "onpolicy_dpo"} <= set(ran)
    assert all(m == {"probe_mode": "full", "share_prompts": False} for m in ran.values()), ran
    dpo = json.loads((run_dir / "seed_0" / "dpo" / "summary.json").read_text())
    assert dpo["probe_mode"] == "full" and dpo["share_prompts"] is False


def test_the_defaults_are_the_engines():
    from llm.config import TrainConfig

    cfg = ValidateConfig()
    assert (cfg.probe_mode, cfg.share_prompts) == (TrainConfig.probe_mode, TrainConfig.share_prompts)


@pytest.mark.parametrize("flag, value, message", [
    ("--probe-mode", "bogus", "argument --probe-mode: invalid choice: 'bogus' (choose from 'shared', 'full')"),
    ("--share-prompts", "maybe", "--share-prompts: expected true/false, got 'maybe'")])
def test_the_cli_refuses_a_bad_choice(flag, value, message, capsys):
    from llm.cli import main

    with pytest.raises(SystemExit) as err:
        main(["validate", flag, value])
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_a_config_file_with_a_bad_mode_names_the_file_and_field(tmp_path, capsys):
    from llm.cli import main

    path = tmp_path / "v.json"
    path.write_text(json.dumps({"probe_mode": "half"}))
    with pytest.raises(SystemExit):
        main(["validate", "--config", str(path)])
    assert f"{path}: probe_mode: 'half' is not one of ['shared', 'full']" in capsys.readouterr().err
