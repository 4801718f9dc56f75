"""``python -m toykit squeeze``: the run directory, the panels' JSON, config handling and --help."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from toykit import squeeze_demo
from toykit.__main__ import main as toykit_main
from toykit.squeeze import positive_step, squeeze_claims, squeeze_step
from toykit.squeeze_demo import SqueezeDemoConfig, main as squeeze_main

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "squeeze"
    returned = toykit_main(["squeeze", "--out-dir", str(out)])
    assert Path(returned) == out
    return out


@pytest.fixture(scope="module")
def panels(run_dir) -> dict:
    return json.loads((run_dir / "squeeze.json").read_text())["panels"]


def test_run_directory_holds_config_env_figure_and_json(run_dir, capsys):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "env.json", "squeeze.png", "squeeze.json", "summary.json"} <= names
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seed"] == 10086 and config["num_classes"] == 50 and config["lr_b"] == 0.3
    assert (run_dir / "config.json").stat().st_mtime <= (run_dir / "squeeze.json").stat().st_mtime
    assert (run_dir / "squeeze.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["all_claims_hold"] is True
    assert set(summary["panels"]) == {"A", "B", "C", "D", "E"}


def test_panel_d_pushes_the_valley_down_and_squeezes_the_mass_into_ystar(panels):
    d = panels["D"]
    before, after = np.array(d["pi_before"]), np.array(d["pi_after"])
    ybar, y_star = d["ybar"], d["y_star"]
    assert d["y_plus"] is None  # the notebook code's panel D: a negative step alone
    assert before[ybar] < np.median(before)  # ybar is a valley of the peaky pi
    others = [i for i in range(before.size) if i != ybar]
    assert y_star == others[int(np.argmax(before[others]))]
    assert after[ybar] < before[ybar]
    assert after[y_star] > before[y_star]
    assert d["claims"]["claim1_ybar_decreases"] and d["claims"]["claim2_ystar_increases"]
    np.testing.assert_allclose(squeeze_step(before, ybar, d["c_minus"]), after, atol=1e-13)


def _blank_figure(monkeypatch):
    """Save a blank figure instead of drawing the demo's (~5 s): for runs whose squeeze.json alone is read; the
    module's run_dir fixture draws and checks the real one."""
    monkeypatch.setattr(squeeze_demo, "plot", lambda result, dpi=110: Figure(figsize=(1, 1), dpi=dpi))


def test_panel_d_with_a_positive_step_moves_ystar_as_the_closed_form_says(tmp_path, monkeypatch):
    _blank_figure(monkeypatch)
    # PAPER.md's variant: a positive step on y+ at the same x and lr; the pi terms then cancel.
    out = squeeze_main(["--lr-d-plus", "0.5", "--out-dir", str(tmp_path / "run")])
    d = json.loads((out / "squeeze.json").read_text())["panels"]["D"]
    before, after = np.array(d["pi_before"]), np.array(d["pi_after"])
    ybar, y_plus, y_star = d["ybar"], d["y_plus"], d["y_star"]
    assert after[ybar] < before[ybar] and after[y_plus] > before[y_plus]
    negative = d["claims"]["negative_part"]
    assert negative["claim1_ybar_decreases"] and negative["claim2_ystar_increases"]
    c = d["c_minus"]
    assert d["c_plus"] == c
    rises = before[y_plus] * np.expm1(c) < before[ybar] * -np.expm1(-c)
    assert (after[y_star] > before[y_star]) == rises == d["claims"]["ystar_increases_predicted"]


def test_each_panel_is_a_real_step_that_matches_the_closed_form(panels):
    for key, p in panels.items():
        assert p["closed_form_max_abs_diff"] < 1e-12, key
        before, after = np.array(p["pi_before"]), np.array(p["pi_after"])
        assert p["rose"] == np.flatnonzero(after > before).tolist()
    a = panels["A"]
    np.testing.assert_allclose(positive_step(a["pi_before"], a["y_plus"], a["c_plus"]), a["pi_after"], atol=1e-13)
    for key in ("B", "C", "E"):
        p = panels[key]
        np.testing.assert_allclose(squeeze_step(p["pi_before"], p["ybar"], p["c_minus"]), p["pi_after"], atol=1e-13)
        claims = squeeze_claims(np.array(p["pi_before"]), p["ybar"], p["c_minus"])
        assert claims.claim1_ybar_decreases and claims.claim2_ystar_increases and claims.claim3_threshold_rule, key
        assert p["threshold"] == pytest.approx(float(claims.threshold), rel=1e-12)


def test_panels_show_the_notebook_settings(panels):
    assert len(panels["A"]["pi_before"]) == 50 and len(panels["E"]["pi_before"]) == 1000
    assert panels["B"]["lr_minus"] == 0.3 and panels["E"]["lr_minus"] == 1.0 and panels["A"]["lr_plus"] == 0.5
    c_panel = panels["C"]
    assert c_panel["ybar"] == int(np.argmax(c_panel["pi_before"]))  # C pushes the peak down
    b_before = np.array(panels["B"]["pi_before"])
    assert b_before.max() / b_before.min() < 3  # B starts from a flat pi
    e = panels["E"]
    assert np.array(e["pi_after"])[e["y_star"]] > 0.9  # large V: nearly all mass squeezed into y*


def test_config_file_then_flags_override(tmp_path, monkeypatch):
    _blank_figure(monkeypatch)
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps({"lr_b": 0.6, "label_a": 3, "large_num_classes": 40, "label_e": 7}))
    argv = ["--config", str(config_file), "--lr-b", "0.9", "--dpi", "40", "--out-dir", str(tmp_path / "run")]
    out = squeeze_main(argv)
    config = json.loads((out / "config.json").read_text())
    assert config["lr_b"] == 0.9 and config["label_a"] == 3 and config["large_num_classes"] == 40
    panels = json.loads((out / "squeeze.json").read_text())["panels"]
    assert panels["B"]["lr_minus"] == 0.9 and panels["A"]["y_plus"] == 3 and len(panels["E"]["pi_before"]) == 40


def test_an_existing_run_is_never_overwritten(run_dir, capsys):
    before = (run_dir / "squeeze.json").read_bytes()
    with pytest.raises(SystemExit) as exc:  # a clear one-line error, not a traceback
        toykit_main(["squeeze", "--out-dir", str(run_dir)])
    assert exc.value.code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "squeeze.json").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr-b", "-1"], "lr_b: expected a learning rate eta > 0"),
        (["--label-a", "50"], "label_a: expected a label in [0, 50)"),
        (["--label-d-plus", "42"], "label_d_plus: expected a label other than label_d_minus=42"),
        (["--seed", "x"], "expected an integer"),
    ],
)
def test_bad_flags_exit_with_a_message(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        toykit_main(["squeeze", *argv, "--out-dir", str(tmp_path / "never")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_bad_config_values_raise_value_error():
    with pytest.raises(ValueError, match="peaky_labels\\[0\\]: expected a label in \\[0, 50\\)"):
        SqueezeDemoConfig(peaky_labels=(60,))


def test_help_lists_the_command_and_its_fields(capsys):
    with pytest.raises(SystemExit) as exc:
        toykit_main(["--help"])
    assert exc.value.code == 0
    assert "squeeze" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        toykit_main(["squeeze", "--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0
    assert "--config" in text and "--lr-d" in text and "--out-dir" in text and "default: 10086" in text


def test_module_entry_point_runs_as_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "toykit", "squeeze", "--help"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: python -m toykit squeeze" in done.stdout
