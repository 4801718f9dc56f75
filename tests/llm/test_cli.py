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
        build_parser().parse_args(["train", "--help"])
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
