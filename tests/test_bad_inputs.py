"""Every bad input the toolkit was probed with, and the ones it already refused: each is refused with ONE line naming
the file, line, field or flag, without a traceback, and leaves nothing behind (no run folder, no file).

Each case runs a command line in-process (``python -m llm``, ``python -m toykit``, ``python -m toykit.experiments``)
in an empty working folder that holds only the inputs the case needs; the folder's tree must be unchanged after.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from llm.cli import main as llm_main
from toykit.__main__ import main as toykit_main
from toykit.experiments.__main__ import main as experiments_main

ENTRIES = {"llm": llm_main, "toykit": toykit_main, "exp": experiments_main}

SMALL = ["--num-synthetic", "12", "--held-out", "2", "--num-probes", "3", "--tiny-hidden", "16", "--tiny-layers", "1",
         "--tiny-vocab-size", "270", "--max-prompt-tokens", "32", "--max-response-tokens", "16", "--progress", "false",
         "--save-model", "false", "--out-dir", "out"]
SFT = ["sft", *SMALL]


def _pairs_lines(n: int = 12, same: bool = False) -> str:
    return "".join(json.dumps({"prompt": f"Q{i}: what is {i} + 1?", "chosen": f" {i + 1}",
                               "rejected": f" {i + 1}" if same else f" {i + 2}"}) + "\n" for i in range(n))


def _write(ws: Path, name: str, data: str | bytes) -> str:
    path = ws / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return name


# Inputs a case refers to as "@name": each builder writes it into the working folder and returns the argument.
FILES = {
    "latin1": lambda ws, m: _write(ws, "latin1.jsonl", _pairs_lines(3) + '{"prompt": "caf\xe9", "chosen": " a", '
                                   '"rejected": " b"}\n'.encode("latin-1").decode("latin-1")
                                   ) if False else _write(ws, "latin1.jsonl", _pairs_lines(3).encode() +
                                                          '{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}\n'
                                                          .encode("latin-1")),
    "binary": lambda ws, m: _write(ws, "binary.jsonl", bytes(range(255, -1, -1)) * 8),
    "bad_json": lambda ws, m: _write(ws, "bad.jsonl", _pairs_lines(1) + '{"prompt": "x", "chosen":\n'),
    "list_of_strings": lambda ws, m: _write(ws, "lists.jsonl", _pairs_lines(1) + json.dumps(
        {"chosen": ["hi", "a"], "rejected": ["hi", "b"]}) + "\n"),
    "final_user": lambda ws, m: _write(ws, "final_user.jsonl", _pairs_lines(1) + json.dumps(
        {"chosen": [{"role": "user", "content": "hi"}, {"role": "user", "content": "more"}],
         "rejected": [{"role": "user", "content": "hi"}, {"role": "user", "content": "less"}]}) + "\n"),
    "chosen_is_number": lambda ws, m: _write(ws, "num.jsonl", json.dumps({"prompt": "p", "chosen": 3,
                                                                          "rejected": " b"}) + "\n"),
    "same_pairs": lambda ws, m: _write(ws, "same.jsonl", _pairs_lines(12, same=True)),
    "empty_data": lambda ws, m: _write(ws, "empty.jsonl", "\n\n"),
    "cfg_dir": lambda ws, m: (ws / "cfgdir").mkdir() or "cfgdir",
    "cfg_lr_true": lambda ws, m: _write(ws, "lr_true.json", '{"lr": true}'),
    "cfg_unknown": lambda ws, m: _write(ws, "unknown.json", '{"lrr": 0.1}'),
    "cfg_bad_json": lambda ws, m: _write(ws, "bad.json", '{"lr": 0.1,\n "epochs": }'),
    "cfg_list": lambda ws, m: _write(ws, "list.json", '[1, 2]'),
    "cfg_latin1": lambda ws, m: _write(ws, "latin1.json", '{"phase": "caf\xe9"}'.encode("latin-1")),
    "file": lambda ws, m: _write(ws, "a_file", "x"),
    "foreign": lambda ws, m: (ws / "foreign").mkdir() or _write(ws, "foreign/metrics.jsonl", '{"step": 1}\n')
    and "foreign",
    "run": lambda ws, m: (ws / "old").mkdir() or _write(ws, "old/config.json", "{}") and "old",
    "empty_dir": lambda ws, m: (ws / "nothing").mkdir() or _write(ws, "nothing/secret-name.txt", "x") and "nothing",
}
for _variant in ("ok", "no_tokenizer", "missing_weight", "extra_weight", "no_layers", "corrupt", "empty_weights",
                 "run_dir", "small_vocab", "tokenizer_only"):
    FILES["model_" + _variant] = (lambda v: lambda ws, m: str(m[v]))(_variant)


CASES = [  # (id, entry, argv, pattern the one error line must match)
    # run folders
    ("out_dir_empty", "llm", [*SFT, "--out-dir", ""], r"--out-dir is empty"),
    ("out_dir_under_a_file", "llm", [*SFT, "--out-dir", "@file/run"], r"--out-dir a_file/run lies under .*a_file.*file"),
    ("out_dir_is_a_file", "llm", [*SFT, "--out-dir", "@file"], r"--out-dir a_file is a file"),
    ("out_dir_proc", "llm", [*SFT, "--out-dir", "/proc/ldt-run"], r"--out-dir /proc/ldt-run lies under /proc"),
    ("out_dir_sys", "llm", [*SFT, "--out-dir", "/sys/ldt-run"], r"--out-dir /sys/ldt-run lies under /sys"),
    ("out_dir_foreign_metrics", "llm", [*SFT, "--out-dir", "@foreign"], r"--out-dir foreign holds a metrics.jsonl"),
    ("out_dir_holds_a_run", "llm", [*SFT, "--out-dir", "@run"], r"old already holds a run"),
    ("phase_escapes", "llm", [*SFT, "--phase", "x/../../../esc"], r"--phase 'x/\.\./\.\./\.\./esc' must be a plain"),
    ("phase_dotdot", "llm", [*SFT, "--phase", ".."], r"--phase '\.\.' must be a plain"),
    ("resume_without_out_dir", "llm", ["sft", "--resume", "true"], r"--resume needs --out-dir"),
    # numbers and flags
    ("seed_negative", "llm", [*SFT, "--seed", "-1"], r"--seed"),
    ("seed_past_2_32", "llm", [*SFT, "--seed", str(2 ** 40)], r"--seed"),
    ("lr_true_in_config", "llm", [*SFT, "--config", "@cfg_lr_true"], r"lr_true\.json: lr: expected a number, got True"),
    ("lr_not_a_number", "llm", [*SFT, "--lr", "fast"], r"--lr: expected a number"),
    ("lr_negative", "llm", [*SFT, "--lr", "-1"], r"lr > 0"),
    ("lr_inf", "llm", [*SFT, "--lr", "inf"], r"--lr: expected a finite number"),
    ("max_pairs_negative", "llm", [*SFT, "--max-pairs", "-5"], r"--max-pairs must be >= 1"),
    ("stop_after_steps_negative", "llm", [*SFT, "--stop-after-steps", "-1"], r"--stop-after-steps must be >= 1"),
    ("beta_nan_with_sft", "llm", [*SFT, "--beta", "nan"], r"--beta: expected a finite number"),
    ("beta_zero_with_dpo", "llm", ["dpo", *SMALL, "--beta", "0"], r"hyperparameter beta must be"),
    ("epochs_zero", "llm", [*SFT, "--epochs", "0"], r"epochs must be >= 1"),
    ("num_probes_zero", "llm", [*SFT, "--num-probes", "0"], r"num_probes must be >= 1"),
    ("tiny_layers_huge", "llm", [*SFT, "--tiny-layers", "100000"], r"--tiny-layers must be <= 1024"),
    ("held_out_all", "llm", [*SFT, "--held-out", "12"], r"leave none for training"),
    ("bool_not_a_bool", "llm", [*SFT, "--progress", "maybe"], r"--progress: expected true/false"),
    ("device_bogus", "llm", [*SFT, "--device", "bogus"], r"--device 'bogus' is not a device"),
    ("device_tpu", "llm", [*SFT, "--device", "tpu"], r"--device 'tpu' is not a device"),
    ("unknown_loss", "llm", ["train", "--loss", "nope", *SMALL], r"unknown loss 'nope'"),
    ("train_without_loss", "llm", ["train", *SMALL], r"train needs --loss"),
    ("sft_with_dpo_loss", "llm", ["sft", "--loss", "dpo", *SMALL], r"sft takes --loss sft or extend"),
    ("data_format_unknown", "llm", [*SFT, "--data-format", "csv"], r"--data-format.*invalid choice"),
    ("validate_time_budget_nan", "llm", ["validate", "--time-budget-s", "nan"], r"--time-budget-s: expected a finite"),
    # config files
    ("config_is_a_directory", "llm", [*SFT, "--config", "@cfg_dir"], r"config file cfgdir is a directory"),
    ("config_missing", "llm", [*SFT, "--config", "nope.json"], r"config file nope\.json does not exist"),
    ("config_unknown_field", "llm", [*SFT, "--config", "@cfg_unknown"], r"unknown field\(s\) \['lrr'\]"),
    ("config_bad_json", "llm", [*SFT, "--config", "@cfg_bad_json"], r"config file bad\.json: invalid JSON at line 2"),
    ("config_not_an_object", "llm", [*SFT, "--config", "@cfg_list"], r"config file list\.json: expected a JSON object"),
    ("config_latin1", "llm", [*SFT, "--config", "@cfg_latin1"], r"config file latin1\.json: not UTF-8"),
    # data files
    ("data_latin1", "llm", [*SFT, "--data", "@latin1"], r"latin1\.jsonl:4: not UTF-8"),
    ("data_binary", "llm", [*SFT, "--data", "@binary"], r"binary\.jsonl:1: not UTF-8"),
    ("data_dev_zero", "llm", [*SFT, "--data", "/dev/zero"], r"/dev/zero is not a regular file"),
    ("data_missing", "llm", [*SFT, "--data", "nope.jsonl"], r"nope\.jsonl does not exist"),
    ("data_bad_json", "llm", [*SFT, "--data", "@bad_json"], r"bad\.jsonl:2: invalid JSON"),
    ("data_empty", "llm", [*SFT, "--data", "@empty_data"], r"empty\.jsonl holds no records"),
    ("data_final_message_not_a_dict", "llm", [*SFT, "--data", "@list_of_strings"],
     r"lists\.jsonl:2: the final message of 'chosen' must be an assistant message"),
    ("data_final_user_message", "llm", [*SFT, "--data", "@final_user"],
     r"final_user\.jsonl:2: the final message of 'chosen' must be an assistant message"),
    ("data_chosen_not_a_string", "llm", [*SFT, "--data", "@chosen_is_number"], r"num\.jsonl:1: 'chosen' must be"),
    ("dpo_chosen_equals_rejected", "llm", ["dpo", *SMALL, "--data", "@same_pairs"],
     r"same\.jsonl: pair 0 .* chosen == rejected"),
    # model and tokenizer folders
    ("model_without_tokenizer_files", "llm", [*SFT, "--model", "@model_no_tokenizer"],
     r"--model .*no_tokenizer holds no tokenizer files"),
    ("eval_model_without_tokenizer_files", "llm", ["eval", *SMALL[:-4], "--out-dir", "out", "--model",
                                                   "@model_no_tokenizer"],
     r"--model .*no_tokenizer holds no tokenizer files"),
    ("model_missing_weight", "llm", [*SFT, "--model", "@model_missing_weight"],
     r"missing_weight: the checkpoint lacks 1 weight\(s\) .*c_fc\.weight"),
    ("model_extra_weight", "llm", [*SFT, "--model", "@model_extra_weight"],
     r"extra_weight: the checkpoint holds 1 weight\(s\) the config has no place for \(foo\.bar\)"),
    ("model_no_layers", "llm", [*SFT, "--model", "@model_no_layers"], r"no_layers/config\.json: n_layer must be >= 1"),
    ("model_corrupt_safetensors", "llm", [*SFT, "--model", "@model_corrupt"],
     r"corrupt/model\.safetensors: not a readable safetensors file"),
    ("model_empty_safetensors", "llm", [*SFT, "--model", "@model_empty_weights"],
     r"empty_weights/model\.safetensors: not a readable safetensors file"),
    ("model_is_a_run_folder", "llm", [*SFT, "--model", "@model_run_dir"], r"run_dir.*did you mean .*run_dir/model\?"),
    ("model_missing", "llm", [*SFT, "--model", "./no-such-model"], r"--model \./no-such-model: no such folder"),
    ("tokenizer_larger_than_vocabulary", "llm", [*SFT, "--model", "@model_small_vocab", "--tokenizer",
                                                 "@model_tokenizer_only"],
     r"the tokenizer has \d+ tokens but the model embeds only 260"),
    ("greedy_past_the_positions", "llm", [*SFT, "--model", "@model_ok", "--greedy-max-new-tokens", "5000"],
     r"--greedy-max-new-tokens 5000\) = 5032 exceeds the model's 64 positions"),
    ("greedy_past_its_bound", "llm", [*SFT, "--greedy-max-new-tokens", "10000000"],
     r"--greedy-max-new-tokens must be <= 100000"),
    # toykit commands
    ("squeeze_seed_negative", "toykit", ["squeeze", "--seed", "-1", "--out-dir", "out"], r"--seed: a seed must be"),
    ("squeeze_seed_huge", "toykit", ["squeeze", "--seed", str(2 ** 33), "--out-dir", "out"], r"--seed: a seed must"),
    ("squeeze_lr_inf", "toykit", ["squeeze", "--lr-a", "inf", "--out-dir", "out"], r"--lr-a: expected a finite number"),
    ("squeeze_dpi_huge", "toykit", ["squeeze", "--dpi", "100000", "--out-dir", "out"], r"--dpi: must be <= 600"),
    ("squeeze_num_classes_huge", "toykit", ["squeeze", "--num-classes", "300000000"], r"--num-classes: must be <="),
    ("squeeze_out_dir_proc", "toykit", ["squeeze", "--out-dir", "/proc/ldt-x"], r"--out-dir /proc/ldt-x lies under"),
    ("squeeze_out_dir_empty", "toykit", ["squeeze", "--out-dir", ""], r"--out-dir is empty"),
    ("explorer_num_classes_huge", "exp", ["squeeze-explorer", "--num-classes", "300000000", "--out-dir", "out"],
     r"--num-classes: must be <= 100000"),
    ("explorer_out_dir_under_a_file", "exp", ["squeeze-explorer", "--out-dir", "@file/x"], r"lies under .*a_file"),
    ("experiment_unknown", "exp", ["no-such-experiment"], r"unknown experiment 'no-such-experiment'"),
    ("experiment_seed_huge", "exp", ["one-step", "--seed", str(2 ** 40), "--out-dir", "out"], r"--seed: a seed must"),
    ("trajectories_steps_huge", "exp", ["trajectories", "--steps", "10000000", "--out-dir", "out"],
     r"--steps: must be <= 1000000"),
    ("digits_data_dir_without_the_files", "exp", ["digits-influence", "--data-dir", "@empty_dir", "--steps", "2",
                                                  "--out-dir", "out"], r"--data-dir nothing: no train-images-idx3"),
    ("digits_eta_diverges", "exp", ["digits-influence", "--eta", "1e6", "--steps", "30", "--models", "mlp",
                                    "--out-dir", "out"], r"--eta 1000000\.0: SGD diverged at step \d+"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny saved models: a good one with its tokenizer, and one broken copy per model-folder case."""
    from safetensors.torch import load_file, save_file

    from llm.data import synthetic_pairs
    from llm.models import tiny_model
    from llm.tokenization import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("models")
    pairs = synthetic_pairs(12, seed=0)
    tok = train_bpe_tokenizer([t for p in pairs for t in (p.prompt, p.chosen, p.rejected)], vocab_size=270)
    out = {"ok": root / "ok"}
    tiny_model("gpt2", len(tok), hidden=16, layers=1, heads=2, max_positions=64).save_pretrained(out["ok"])
    tok.save_pretrained(out["ok"])
    weights = load_file(out["ok"] / "model.safetensors")

    def variant(name: str) -> Path:
        out[name] = root / name
        shutil.copytree(out["ok"], out[name])
        return out[name]

    for f in TOKENIZER_NAMES:
        (variant("no_tokenizer") if "no_tokenizer" not in out else out["no_tokenizer"]).joinpath(f).unlink(True)
    save_file({k: v for k, v in weights.items() if k != "transformer.h.0.mlp.c_fc.weight"},
              variant("missing_weight") / "model.safetensors", metadata={"format": "pt"})
    save_file({**weights, "foo.bar": torch.zeros(2)}, variant("extra_weight") / "model.safetensors",
              metadata={"format": "pt"})
    config = json.loads((variant("no_layers") / "config.json").read_text())
    (out["no_layers"] / "config.json").write_text(json.dumps({**config, "n_layer": -1}))
    (variant("corrupt") / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    (variant("empty_weights") / "model.safetensors").write_bytes(b"")
    out["run_dir"] = root / "run_dir"
    shutil.copytree(out["ok"], out["run_dir"] / "model")
    (out["run_dir"] / "config.json").write_text('{"loss": "sft"}')
    out["small_vocab"] = root / "small_vocab"
    tiny_model("gpt2", 260, hidden=16, layers=1, heads=2, max_positions=64).save_pretrained(out["small_vocab"])
    out["tokenizer_only"] = root / "tokenizer_only"
    tok.save_pretrained(out["tokenizer_only"])
    return out


TOKENIZER_NAMES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _argv(argv: list[str], ws: Path, models: dict[str, Path]) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("@"):
            name, _, rest = arg[1:].partition("/")
            arg = FILES[name](ws, models) + (f"/{rest}" if rest else "")
        out.append(arg)
    return out


@pytest.mark.parametrize("case, entry, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_refused_in_one_line_and_leaves_nothing(case, entry, argv, pattern, tmp_path, monkeypatch,
                                                                capsys, models):
    if case == "data_dev_zero" and not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    if case.startswith(("out_dir_proc", "squeeze_out_dir_proc")) and not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    if case == "out_dir_sys" and not Path("/sys").is_dir():
        pytest.skip("no /sys here")
    monkeypatch.chdir(tmp_path)
    args = _argv(argv, tmp_path, models)
    before = _tree(tmp_path)
    try:
        status = ENTRIES[entry](args)
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status not in (0, None), f"accepted: {args}"
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    import re

    assert re.search(pattern, errors[0]), errors[0]
    assert _tree(tmp_path) == before, "a refused input left files behind"
    if case == "digits_data_dir_without_the_files":
        assert "secret-name" not in err  # the message does not list the folder's contents


def test_bf16_off_cuda_is_refused_before_any_folder(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: --bf16 is valid here")
    monkeypatch.chdir(tmp_path)
    assert llm_main([*SFT, "--bf16", "true"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: --bf16 needs a CUDA device") and "\n" not in line
    assert not any(tmp_path.iterdir())


def test_a_utf8_bom_is_read_not_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + _pairs_lines(12).encode())
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + b'{"epochs": 1}')
    assert llm_main([*SFT, "--data", "bom.jsonl", "--config", "bom.json", "--epochs", "1"]) == 0
    assert (tmp_path / "out" / "summary.json").exists()


def test_a_bare_bool_flag_means_true_as_the_help_example_says(tmp_path, monkeypatch, capsys):
    """``--resume`` alone (the example in ``python -m llm --help``) continues a stopped run."""
    monkeypatch.chdir(tmp_path)
    assert llm_main([*SFT, "--checkpoint-every", "1", "--stop-after-steps", "1"]) == 0
    assert llm_main([*SFT, "--checkpoint-every", "1", "--resume"]) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] == "completed"
    from llm.cli import __doc__ as cli_help

    assert "--resume   #" in cli_help or "--resume  " in cli_help
