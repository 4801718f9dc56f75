"""python -m toykit.experiments: the claims are printed, progress lines go to stderr unless --progress false."""

import io

from toykit.experiments import trajectories
from toykit.experiments.__main__ import claim_lines, main
from toykit.progress import LineReporter, report, reporting


def test_trajectories_prints_its_claims_and_progress(tmp_path, capsys, undrawn_figures):
    undrawn_figures(trajectories)  # what it prints is checked here; test_trajectories checks the figure
    assert main(["trajectories", "--steps", "30", "--out-dir", str(tmp_path / "t")]) == 0
    out, err = capsys.readouterr()
    assert "claims:" in out and ("[holds]" in out or "[FAILS]" in out)
    assert "trajectories: " in err and "step 30/30" in err


def test_progress_false_is_quiet(tmp_path, capsys, undrawn_figures):
    undrawn_figures(trajectories)
    assert main(["trajectories", "--steps", "30", "--progress", "false", "--out-dir", str(tmp_path / "t")]) == 0
    assert "step" not in capsys.readouterr().err


def test_claim_lines_read_both_claim_layouts():
    lines = claim_lines({"claims": [{"claim": "y+ rises", "measured": {"delta": 0.5}, "held": True},
                                    {"claim": "y- falls", "measured": "0.1 -> 0.2", "holds": False}]})
    assert lines == ["  [holds] y+ rises: delta=0.5", "  [FAILS] y- falls: 0.1 -> 0.2"]
    assert claim_lines({"claim_checks": [{"claim": "c", "measured": "m", "holds": None}]}) == ["  [n/a] c: m"]
    assert claim_lines({"summary": 1}) == []


def test_report_is_silent_without_a_reporter_and_lines_carry_phase_step_and_eta():
    report("nobody listens", 1, 2)  # no reporter installed: nothing happens
    stream = io.StringIO()
    with reporting(LineReporter("demo", stream=stream, interval=0.0)):
        for done in range(4):
            report("phase A", done, 3)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("demo: phase A, step 0/3") and "ETA" in lines[1] and lines[-1].endswith("elapsed")
