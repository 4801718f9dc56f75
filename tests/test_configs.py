"""The shared dataclass -> CLI mechanism and run directories."""

import dataclasses
import json
from typing import Literal, Optional

import pytest

from toykit.configs import config_from_dict, config_to_dict, load_config, parse_config
from toykit.runs import MetricsWriter, create_run_dir, read_metrics


@dataclasses.dataclass(frozen=True)
class _Cfg:
    eta: float = dataclasses.field(default=0.5, metadata={"help": "learning rate"})
    steps: int = dataclasses.field(default=3, metadata={"help": "number of steps"})
    loss: Literal["sft", "dpo"] = dataclasses.field(default="sft", metadata={"help": "objective"})
    sizes: tuple[int, ...] = dataclasses.field(default=(2, 3), metadata={"help": "sizes"})
    flag: bool = False
    note: Optional[str] = None

    def __post_init__(self):
        if self.eta <= 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")


def test_flags_override_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"eta": 0.1, "steps": 7, "sizes": [4, 5, 6]}))
    cfg = parse_config(_Cfg, ["--config", str(path), "--steps", "9", "--loss", "dpo", "--flag", "true"])
    assert cfg == _Cfg(eta=0.1, steps=9, loss="dpo", sizes=(4, 5, 6), flag=True)
    assert config_from_dict(_Cfg, config_to_dict(cfg)) == cfg


def test_bad_values_exit_with_message(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(_Cfg, ["--eta", "-1"])
    assert exc.value.code == 2
    assert "eta must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--steps", "1.5"])
    assert "expected an integer" in capsys.readouterr().err


def test_unknown_fields_and_bad_json_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['etaa'\]"):
        config_from_dict(_Cfg, {"etaa": 1.0})
    bad = tmp_path / "bad.json"
    bad.write_text('{"eta": 0.1,\n "steps": }')
    with pytest.raises(ValueError, match=r"bad.json: invalid JSON at line 2"):
        load_config(_Cfg, bad)


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--help"])
    out = capsys.readouterr().out
    for name in ("--eta", "--steps", "--loss", "--sizes", "--flag", "--note", "--config", "learning rate"):
        assert name in out


def test_run_dir_writes_config_first_and_refuses_reuse(tmp_path):
    out = create_run_dir(_Cfg(), "t", out_dir=tmp_path / "run")
    assert json.loads((out / "config.json").read_text())["eta"] == 0.5
    assert "python" in json.loads((out / "env.json").read_text())
    with pytest.raises(FileExistsError, match="already holds a run"):
        create_run_dir(_Cfg(), "t", out_dir=out)
    with MetricsWriter(out / "metrics.jsonl") as w:
        w.write({"step": 0, "value": float("nan")})
        w.write_many([{"step": 1, "value": 2.0}])
    assert read_metrics(out / "metrics.jsonl") == [{"step": 0, "value": None}, {"step": 1, "value": 2.0}]
    (out / "metrics.jsonl").write_text('{"step": 0}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(out / "metrics.jsonl")
