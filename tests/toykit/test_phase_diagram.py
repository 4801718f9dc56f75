"""Tests of the vectorised `phase-diagram` experiment."""

import dataclasses

import numpy as np
import pytest
import torch

from toykit.experiments import _toy_policy as tp
from toykit.experiments import phase_diagram as pd
from toykit.experiments import run_experiment

SMALL = dict(algorithms=("dpo", "dpop", "dpo@on_policy"), peakiness=(0.0, 1.0, 3.0), rejected_quantiles=(0.0, 1.0),
             etas=(0.3,), vocab_sizes=(6, 12), steps=120)


@pytest.fixture(scope="module")
def small_result():
    return pd.run(pd.Config(**SMALL))


def test_grid_arrays_follow_the_axes(small_result):
    cfg = small_result.config
    assert cfg.shape == (3, 1, 2, 3, 2)
    for name in ("delta_logp_chosen", "fell", "peak_mass_gain", "argmax_gain_rejected_ctx", "diverged"):
        assert getattr(small_result, name).shape == cfg.shape
    # the rank of y- skips y+ (rank 2): quantile 0 is the peak, 1 the deepest valley
    assert small_result.rejected_rank.tolist() == [[0, 5], [0, 11]]


def test_vectorised_grid_equals_a_loop_over_scenarios():
    cfg = pd.Config(**{**SMALL, "steps": 30})
    batch = pd.build_scenarios(cfg)
    uniforms = pd.draw_uniforms(cfg, batch.size)
    rows = torch.tensor([0, 5, 13, 22, 35])
    together = tp.simulate(batch, cfg.steps, uniforms, record_every=cfg.steps)
    alone = tp.simulate_one_by_one(tp.select(batch, rows), cfg.steps, uniforms[:, rows], record_every=cfg.steps)
    for name in tp.RECORDS:
        torch.testing.assert_close(together.records[name][:, rows], alone.records[name], rtol=1e-12, atol=1e-12)


def test_dpop_shrinks_the_region_where_y_plus_falls(small_result):
    fell = small_result.fell
    dpo, dpop = fell[0].sum(), fell[1].sum()
    assert dpo > 0
    assert dpop < dpo
    claim = next(c for c in small_result.summary["claims"] if c["claim"].startswith("dpop"))
    assert claim["held"] and claim["measured"] == {"dpo_cells": int(dpo), "dpop_cells": int(dpop),
                                                   "dpop_diverged_cells": 0}


def test_y_plus_falls_only_from_peaky_starts_with_y_minus_off_the_peak(small_result):
    # first-order condition (module docstring): the fall needs a peaky start (||pi||^2 near 1); pushing down the
    # peak itself moves mass away from the peak rather than squeezing it onto the peak
    fell_dpo = small_result.fell[0]  # (E, Vn, P, Q)
    assert not fell_dpo[:, :, 0, :].any()  # flat start (s = 0)
    assert not fell_dpo[:, :, :, 0].any()  # y- on the peak
    assert fell_dpo[:, :, 2, 1].all()  # s = 3, y- in the deepest valley
    assert np.all(small_result.peak_mass_gain[0][fell_dpo] > 0)


def test_no_fall_when_the_coupling_is_below_the_first_order_bound():
    # rho |y-|/|y+| = 0.9 < 2: y+'s own positive push always wins at first order
    result = pd.run(pd.Config(**{**SMALL, "rejected_length": 1, "algorithms": ("dpo",)}))
    assert not result.fell.any()


def test_same_seed_gives_identical_metrics_files(tmp_path, undrawn_figures):
    cfg = pd.Config(**{**SMALL, "steps": 40})
    _, first = run_experiment("phase-diagram", cfg, out_dir=tmp_path / "a")
    undrawn_figures(pd)  # the second run's numbers only
    _, second = run_experiment("phase-diagram", cfg, out_dir=tmp_path / "b")
    assert (first / "metrics.jsonl").read_bytes() == (second / "metrics.jsonl").read_bytes()
    assert (first / "phase_diagram.png").exists() and (first / "peak_mass_gain.png").exists()


@pytest.mark.parametrize("change, message", [
    ({"etas": (0.3, -1.0)}, "etas (each eta) must be a finite number > 0"),
    ({"vocab_sizes": (1, 10)}, "vocab_sizes (each V) must be an integer >= 2"),
    ({"algorithms": ("dpo", "nope")}, "unknown loss(es) ['nope']"),
    ({"rejected_quantiles": (0.0, 1.5)}, "rejected_quantiles must lie in"),
    ({"peakiness": ()}, "peakiness must be a non-empty list"),
    ({"vocab_sizes": (2, 10)}, "chosen_rank must be < the smallest V = 2"),
])
def test_bad_configs_are_refused_before_any_work(change, message):
    with pytest.raises(ValueError) as err:
        dataclasses.replace(pd.Config(), **change)
    assert message in str(err.value)


def test_cell_table_lists_every_cell_with_its_outcome(small_result):
    rows = pd.cell_table(small_result)
    cfg = small_result.config
    assert len(rows) == int(np.prod(cfg.shape))
    idx = (0, 0, 0, len(cfg.peakiness) - 1, len(cfg.rejected_quantiles) - 1)
    row = next(r for r in rows if r["algorithm"] == cfg.algorithms[0] and r["eta"] == cfg.etas[0]
               and r["V"] == cfg.vocab_sizes[0] and r["peakiness"] == cfg.peakiness[-1]
               and r["rejected_quantile"] == cfg.rejected_quantiles[-1])
    assert row["fell"] == bool(small_result.fell[idx])
    assert row["delta_logp_chosen"] == float(small_result.delta_logp_chosen[idx]) or np.isnan(row["delta_logp_chosen"])
