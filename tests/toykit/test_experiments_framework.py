"""The experiment registry, run_experiment's run directory, the CLI, and the shared helpers."""

from __future__ import annotations

import json
import re
import types

import numpy as np
import pytest

from toykit.configs import config_to_dict
from toykit.experiments import REQUIRED_ATTRIBUTES, _check_module, get_experiment, registry, run_experiment
from toykit.experiments.__main__ import main
from toykit.experiments._common import (check_at_least, check_fraction, check_positive, pearson, tidy_rows,
                                        write_metrics)

SMALL_RESIDUALS = ["--steps", "2", "--algorithms", "sft,dpo_offpolicy", "--values-per-attribute", "3"]


def _small_residuals_cfg():
    module = get_experiment("residuals")
    return module.Config(steps=2, algorithms=("sft", "dpo_offpolicy"), values_per_attribute=3)


def test_registry_finds_experiments_and_skips_private_modules():
    experiments = registry()
    assert {"digits-influence", "residuals"} <= set(experiments)
    assert list(experiments) == sorted(experiments)
    for name, module in experiments.items():
        assert module.NAME == name
        assert not module.__name__.rsplit(".", 1)[-1].startswith("_")
        assert all(hasattr(module, attr) for attr in REQUIRED_ATTRIBUTES)


def test_unknown_experiment_lists_known_names():
    with pytest.raises(ValueError, match="known experiments: .*residuals"):
        get_experiment("no-such-experiment")


def test_module_contract_is_enforced():
    fake = types.ModuleType("toykit.experiments.fake")
    fake.NAME = "fake"
    with pytest.raises(TypeError, match="lacks .*Config"):
        _check_module(fake)


def test_run_experiment_writes_a_complete_run_directory(tmp_path):
    cfg = _small_residuals_cfg()
    result, run_dir = run_experiment("residuals", cfg, out_dir=tmp_path / "run")
    assert run_dir == tmp_path / "run"
    for name in ("config.json", "env.json", "metrics.jsonl", "summary.json", "residuals.png"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text()) == config_to_dict(cfg)
    assert json.loads((run_dir / "summary.json").read_text())["num_responses"] == result.summary["num_responses"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(set(row) == {"step", "probe", "metric", "value"} for row in rows)
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_experiment("residuals", cfg, out_dir=run_dir)


def test_config_is_written_before_the_run_starts(tmp_path, monkeypatch):
    module = get_experiment("residuals")

    def crash(cfg):
        raise RuntimeError("boom")

    monkeypatch.setattr(module, "run", crash)
    with pytest.raises(RuntimeError, match="boom"):
        run_experiment("residuals", _small_residuals_cfg(), out_dir=tmp_path / "crashed")
    assert (tmp_path / "crashed" / "config.json").is_file()
    assert (tmp_path / "crashed" / "env.json").is_file()
    assert not (tmp_path / "crashed" / "summary.json").exists()


def test_run_experiment_refuses_a_foreign_config(tmp_path):
    digits_cfg = get_experiment("digits-influence").Config()
    with pytest.raises(ValueError, match="expects a .*Config"):
        run_experiment("residuals", digits_cfg, out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_list_and_help(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "digits-influence" in out and "residuals" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["residuals", "--help"])
    assert exit_info.value.code == 0
    assert "--eta" in capsys.readouterr().out


def test_cli_runs_with_overrides_and_a_config_file(tmp_path, capsys):
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps({"steps": 3, "eta": 0.25}))
    out_dir = tmp_path / "run"
    assert main(["residuals", "--config", str(config_file), *SMALL_RESIDUALS, "--out-dir", str(out_dir)]) == 0
    assert "run directory" in capsys.readouterr().out
    written = json.loads((out_dir / "config.json").read_text())
    assert written["steps"] == 2 and written["eta"] == 0.25  # the flag overrides the file; the file sets eta


@pytest.mark.parametrize("flags, message", [
    (["--eta", "-1"], "eta must be a finite number > 0"),
    (["--algorithms", "sft,kto"], "unknown .*kto"),
    (["--values-per-attribute", "1", "--num-attributes", "1"], "V >= 3"),
    (["--steps", "two"], "expected an integer"),
])
def test_cli_refuses_bad_configs_before_any_work(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["residuals", *flags, "--root", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_cli_unknown_experiment_exits_2(capsys):
    assert main(["no-such-experiment"]) == 2
    assert "known experiments" in capsys.readouterr().err


def test_metrics_are_never_appended(tmp_path):
    write_metrics(tmp_path, tidy_rows(0, "p", {"a": 1.0}))
    with pytest.raises(FileExistsError):
        write_metrics(tmp_path, tidy_rows(1, "p", {"a": 2.0}))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_pearson_matches_numpy_and_flags_constants():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    assert pearson(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-12)
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert np.isnan(pearson(np.ones(3), a.ravel()[:3]))
    with pytest.raises(ValueError, match="shapes differ"):
        pearson(a, b.T)


def test_config_checks_quote_name_and_value():
    with pytest.raises(ValueError, match=r"eta must be a finite number > 0, got -0.5"):
        check_positive("eta", -0.5)
    with pytest.raises(ValueError, match=r"V must be an integer >= 2, got 1"):
        check_at_least("V", 1, 2)
    with pytest.raises(ValueError, match=r"eps must lie in \[0.0, 0.5\), got 0.5"):
        check_fraction("eps", 0.5, 0.0, 0.5, open_high=True)
