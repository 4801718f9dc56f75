"""python -m llm: sub-commands, --help, --config files, refusals with exit status 2."""

import json

import pytest

from llm.cli import build_parser, main
from toykit.runs import read_metrics

_DATA = ["--num-synthetic", "10", "--held-out", "2", "--num-probes", "3", "--tiny-hidden", "32",
         "--tiny-vocab-size", "300", "--max-prompt-tokens", "32", "--max-response-tokens", "16"]
_SMALL = [*_DATA, "--max-examples", "4", "--progress", "false", "--save-model", "false"]


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser("train").parse_args(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--loss", "--reference", "--grad-accum", "--eval-every", "--resume", "--beta", "--prompt-overflow"):
        assert flag in out
    text = " ".join(out.split())
    assert "inverse temperature" in text and "(default: precomputed)" in text and "(default: None) (default" not in text


def test_dpo_and_extend_runs_from_the_command_line(tmp_path, capsys):
    assert main(["dpo", *_SMALL, "--out-dir", str(tmp_path / "dpo")]) == 0
    assert "run directory:" in capsys.readouterr().out
    rows = read_metrics(tmp_path / "dpo" / "metrics.jsonl")
    assert {r["phase"] for r in rows} == {"dpo"} and any("rewards/margins" in r for r in rows)
    (tmp_path / "cfg.json").write_text(json.dumps({"loss": "extend", "phase": "extend-sft", "lr": 0.01}))
    assert main(["sft", "--config", str(tmp_path / "cfg.json"), *_SMALL, "--out-dir", str(tmp_path / "ext")]) == 0
    saved = json.loads((tmp_path / "ext" / "config.json").read_text())
    assert saved["loss"] == "extend" and saved["lr"] == 0.01
    assert any("logps/rejected" in r for r in read_metrics(tmp_path / "ext" / "metrics.jsonl"))


def test_eval_writes_probe_rows(tmp_path):
    assert main(["eval", *_DATA, "--out-dir", str(tmp_path / "ev"), "--greedy-max-new-tokens", "3"]) == 0
    probes = {r["probe"] for r in read_metrics(tmp_path / "ev" / "metrics.jsonl")}
    assert {"chosen", "rejected", "irr_train", "argmax_teacher_forced", "greedy"} <= probes


@pytest.mark.parametrize("argv, message", [
    (["train"], "train needs --loss"),
    (["sft", "--loss", "dpo"], "use `train --loss dpo`"),
    (["train", "--loss", "nope"], "unknown loss 'nope'"),
    (["dpo", "--lr", "-1"], "need lr > 0"),
    (["dpo", "--optimizer", "lion"], "invalid choice"),
])
def test_bad_command_lines_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bad_data_file_is_reported(tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "p", "chosen": " a", "rejected": " b"}\n{"prompt": \n')
    assert main(["sft", *_SMALL, "--data", str(bad), "--out-dir", str(tmp_path / "r")]) == 2
    assert "pairs.jsonl:2: invalid JSON" in capsys.readouterr().err


def _help_of(command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0


def test_help_lists_choices_and_states_each_default_once(capsys):
    _help_of("train")
    text = " ".join(capsys.readouterr().out.split())
    import typing

    from llm.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for name in ("prompt_overflow", "reference", "data_format"):
        assert "{" + ",".join(typing.get_args(hints[name])) + "}" in text, name
    assert "--progress [{true,false}]" in text  # a bare --progress means true
    assert "(default: None)" not in text and "(default: the loss's, 0.1) (default" not in text
    assert text.count("(default: 0.1)") == 0 and "(default: error)" in text


def test_dpo_help_names_dpo_as_its_loss(capsys):
    _help_of("dpo")
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: dpo)" in text and "(default: sft)" not in text
    _help_of("sft")
    assert "sft or extend (default: sft)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["sft", "dpo", "train", "eval", "validate", None])
def test_help_imports_neither_torch_nor_transformers(command):
    import subprocess
    import sys

    argv = [command, "--help"] if command else ["--help"]
    code = (f"import sys\nfrom llm.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_train_takes_its_loss_from_a_config_file(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"loss": "ipo"}))
    assert main(["train", "--config", str(tmp_path / "cfg.json"), *_SMALL, "--out-dir", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["loss"] == "ipo"


def test_eval_prints_the_statistics_table(tmp_path, capsys):
    assert main(["eval", *_DATA, "--out-dir", str(tmp_path / "ev"), "--progress", "false"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("probe"))
    assert header.split()[:3] == ["probe", "logp_sum", "logp_mean"] and header.split()[-1] == "examples"
    chosen = next(line.split() for line in lines if line.startswith("chosen "))
    assert float(chosen[1]) < 0 and int(chosen[-1]) == 3


@pytest.mark.run_figure
def test_sft_at_default_schedule_evaluates_about_ten_times_and_writes_a_figure(tmp_path):
    assert main(["sft", *_DATA, "--num-synthetic", "24", "--progress", "false", "--save-model", "false",
                 "--out-dir", str(tmp_path / "s")]) == 0
    rows = read_metrics(tmp_path / "s" / "metrics.jsonl")
    evals = sorted({r["step"] for r in rows if r.get("probe") == "chosen" and r.get("statistic") == "logp_sum"})
    assert len(evals) == len(set(evals)) and 5 <= len(evals) <= 12 and evals[0] == 0
    assert (tmp_path / "s" / "probe_curves.png").stat().st_size > 10_000


def test_first_dpo_step_has_zero_reward_accuracy(tmp_path):
    assert main(["dpo", *_SMALL, "--out-dir", str(tmp_path / "d")]) == 0
    first = next(r for r in read_metrics(tmp_path / "d" / "metrics.jsonl") if r["step"] == 1 and "loss" in r)
    assert abs(first["rewards/margins"]) < 1e-3 and first["rewards/accuracies"] == 0.0


def test_a_run_folder_as_model_suggests_its_model_subfolder(tmp_path, capsys):
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text("{}")
    assert main(["eval", *_DATA, "--model", str(tmp_path / "run"), "--out-dir", str(tmp_path / "ev")]) == 2
    assert f"did you mean {tmp_path / 'run' / 'model'}?" in capsys.readouterr().err


def test_num_probes_one_on_a_full_probe_file(tmp_path, capsys):
    from llm.data import PROBE_TYPES

    record = {k: f" answer {k}" for k in PROBE_TYPES}
    path = tmp_path / "probes.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"\n\nHuman: q{i}?\n\nAssistant:", **record}) + "\n"
                            for i in range(3)))
    assert main(["eval", *_DATA, "--probes", str(path), "--num-probes", "1", "--out-dir", str(tmp_path / "ev")]) == 0
    assert "random_nonhum" in capsys.readouterr().out


def test_eval_defaults_to_the_papers_500_prompts_or_all_there_are(tmp_path, capsys):
    from llm.config import EvalConfig

    assert EvalConfig().num_probes == 500
    argv = [a for a in _DATA if a not in ("--num-probes", "3")]
    assert main(["eval", *argv, "--out-dir", str(tmp_path / "ev"), "--progress", "false"]) == 0
    chosen = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("chosen "))
    assert int(chosen[-1]) == 8  # the 10 synthetic pairs minus 2 held out: every derived probe prompt


def test_training_shows_phase_step_and_eta_unless_progress_false(tmp_path, capfd):
    argv = [a for a in _SMALL if a not in ("--progress", "false")]
    assert main(["sft", *argv, "--out-dir", str(tmp_path / "a")]) == 0
    err = capfd.readouterr().err
    assert "sft:" in err and "step" in err and "<" in err  # tqdm: phase, steps done / total, remaining time
    assert main(["sft", *argv, "--progress", "false", "--out-dir", str(tmp_path / "b")]) == 0
    assert "sft:" not in capfd.readouterr().err
