"""The loss registry: values against scalar reference formulas, closed-form gradients against autograd,
the registry's flags against the losses' behaviour, known values, and input validation."""

import inspect
import math

import pytest
import torch

from toykit.losses import LOSSES, compute_loss, compute_loss_grad, get_loss, loss_names

HPARAMS = {"beta": 0.7, "eps": 0.2, "lam": 0.3, "delta": 2.0, "gamma": 0.8, "alpha": 0.5, "tau": 0.3}
SHAPES = [(9,), (3, 4), (2, 3, 2)]


def _logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _sig(x):
    return math.exp(_logsig(x))


def _log_odds(m_c, m_r):
    """log[p+/(1 - p+)] - log[p-/(1 - p-)] for per-token mean log-probs m = log p; m is taken at most -1e-12
    inside log(1 - p) (positive random "log-probs" occur in these inputs; a certain response has m = 0)."""
    def log1m_exp(m):
        return math.log(-math.expm1(min(m, -1e-12)))  # log(1 - e^m) without cancellation near m = 0
    return (m_c - m_r) - (log1m_exp(m_c) - log1m_exp(m_r))


def _exo(u, eps):
    return _sig(u) * (_logsig(u) - math.log(1 - eps)) + _sig(-u) * (_logsig(-u) - math.log(eps))


def _discopop(u, tau):
    m = _sig(u / tau)
    return -_logsig(u) * (1 - m) + math.exp(-u) * m


# Scalar reference formulas, written from the API contract independently of toykit.losses.
# Arguments: lp+, lp-, ref+, ref-, |y+|, |y-|, hyperparameters.
REFERENCE = {
    "sft": lambda c, r, rc, rr, nc, nr, p: -c,
    "dpo": lambda c, r, rc, rr, nc, nr, p: -_logsig(p["beta"] * ((c - rc) - (r - rr))),
    "ipo": lambda c, r, rc, rr, nc, nr, p: ((c - rc) - (r - rr) - 1 / (2 * p["beta"])) ** 2,
    "slic": lambda c, r, rc, rr, nc, nr, p: max(0.0, p["delta"] - c + r) - p["lam"] * c,
    "hinge": lambda c, r, rc, rr, nc, nr, p: max(0.0, 1 - p["beta"] * ((c - rc) - (r - rr))),
    "cdpo": lambda c, r, rc, rr, nc, nr, p: (-(1 - p["eps"]) * _logsig(p["beta"] * ((c - rc) - (r - rr)))
                                             - p["eps"] * _logsig(-p["beta"] * ((c - rc) - (r - rr)))),
    "robust": lambda c, r, rc, rr, nc, nr, p: ((-(1 - p["eps"]) * _logsig(p["beta"] * ((c - rc) - (r - rr)))
                                                + p["eps"] * _logsig(-p["beta"] * ((c - rc) - (r - rr))))
                                               / (1 - 2 * p["eps"])),
    "simpo": lambda c, r, rc, rr, nc, nr, p: -_logsig(p["beta"] * (c / nc - r / nr) - p["gamma"]),
    "dpop": lambda c, r, rc, rr, nc, nr, p: -_logsig(p["beta"] * ((c - rc) - (r - rr)
                                                                   - p["lam"] * max(0.0, rc - c))),
    "rpo": lambda c, r, rc, rr, nc, nr, p: -_logsig(p["beta"] * ((c - rc) - (r - rr))) - p["alpha"] * c / nc,
    "apo_zero": lambda c, r, rc, rr, nc, nr, p: (1 - _sig(p["beta"] * (c - rc))) + _sig(p["beta"] * (r - rr)),
    "nca": lambda c, r, rc, rr, nc, nr, p: (-_logsig(p["beta"] * (c - rc)) - 0.5 * _logsig(-p["beta"] * (c - rc))
                                            - 0.5 * _logsig(-p["beta"] * (r - rr))),
    "sppo_hard": lambda c, r, rc, rr, nc, nr, p: ((c - rc - 1 / (2 * p["beta"])) ** 2
                                                  + (r - rr + 1 / (2 * p["beta"])) ** 2),
    "orpo": lambda c, r, rc, rr, nc, nr, p: -c / nc - p["beta"] * _logsig(_log_odds(c / nc, r / nr)),
    "exo_pair": lambda c, r, rc, rr, nc, nr, p: _exo(p["beta"] * ((c - rc) - (r - rr)), p["eps"]),
    "bco_pair": lambda c, r, rc, rr, nc, nr, p: -_logsig(p["beta"] * (c - rc)) - _logsig(-p["beta"] * (r - rr)),
    "apo_down": lambda c, r, rc, rr, nc, nr, p: (_sig(p["beta"] * (c - rc)) + 1
                                                 - _sig(p["beta"] * ((c - rc) - (r - rr)))),
    "discopop": lambda c, r, rc, rr, nc, nr, p: _discopop(p["beta"] * ((c - rc) - (r - rr)), p["tau"]),
    "ipo_norm": lambda c, r, rc, rr, nc, nr, p: ((c - rc) / nc - (r - rr) / nr - 1 / (2 * p["beta"])) ** 2,
    "dpo_norm": lambda c, r, rc, rr, nc, nr, p: -_logsig(p["beta"] * ((c - rc) / nc - (r - rr) / nr)),
}
# Losses whose example k reads the rest of the batch; checked against batch references below.
COUPLED = {"aot", "aot_unpaired", "rpo_batch"}


def _inputs(shape, seed=0, dtype=torch.float64):
    """Random summed log-probs around a reference, so margins and hinges fall on both sides of their kinks."""
    g = torch.Generator().manual_seed(seed)
    ref_c = -20 * torch.rand(shape, generator=g, dtype=dtype) - 1
    ref_r = -20 * torch.rand(shape, generator=g, dtype=dtype) - 1
    return {
        "chosen_logps": ref_c + 4 * torch.randn(shape, generator=g, dtype=dtype),
        "rejected_logps": ref_r + 4 * torch.randn(shape, generator=g, dtype=dtype),
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
        "chosen_lengths": torch.randint(1, 30, shape, generator=g),
        "rejected_lengths": torch.randint(1, 30, shape, generator=g),
    }


def _hparams(name):
    return {k: HPARAMS[k] for k in get_loss(name).defaults}


def test_every_contract_loss_is_registered_with_its_defaults():
    assert set(loss_names()) == set(REFERENCE) | COUPLED
    assert get_loss("dpo").defaults == {"beta": 0.1}
    assert get_loss("slic").defaults == {"delta": 1.0, "lam": 1.0}
    assert get_loss("dpop").defaults == {"beta": 0.1, "lam": 50.0}
    assert get_loss("cdpo").defaults == get_loss("robust").defaults == {"beta": 0.1, "eps": 0.1}
    assert get_loss("simpo").defaults == {"beta": 0.1, "gamma": 0.5}
    assert get_loss("rpo").defaults == {"beta": 0.1, "alpha": 1.0}
    assert get_loss("orpo").defaults == {"beta": 0.1}


@pytest.mark.parametrize("name", loss_names())
def test_spec_is_documented_and_grad_shares_the_defaults(name):
    spec = get_loss(name)
    assert spec.name == name and spec.formula.startswith("L = ") and spec.reference
    assert set(spec.hyperparams) == set(spec.defaults) and all(spec.hyperparams.values())
    grad_defaults = {n: p.default for n, p in inspect.signature(spec.grad).parameters.items()
                     if p.kind is p.KEYWORD_ONLY and not n.endswith("_lengths")}
    assert grad_defaults == dict(spec.defaults)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_loss_matches_scalar_reference_formula(name):
    x = _inputs((12,), seed=1)
    hp = _hparams(name)
    got = compute_loss(name, **x, **hp)
    cols = [x[k].tolist() for k in ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
                                    "chosen_lengths", "rejected_lengths")]
    want = torch.tensor([REFERENCE[name](*row, hp) for row in zip(*cols)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", loss_names())
def test_closed_form_grad_matches_autograd(name, shape):
    x = _inputs(shape, seed=2)
    spec = get_loss(name)
    lp_c = x["chosen_logps"].clone().requires_grad_(True)
    lp_r = x["rejected_logps"].clone().requires_grad_(True)
    args = {**x, "chosen_logps": lp_c, "rejected_logps": lp_r, **_hparams(name)}
    loss = compute_loss(name, **args)
    assert loss.shape == shape and loss.dtype == torch.float64
    auto_c, auto_r = torch.autograd.grad(loss.sum(), (lp_c, lp_r), allow_unused=True)
    g_c, g_r = compute_loss_grad(name, **args)
    torch.testing.assert_close(g_c, auto_c, rtol=1e-12, atol=1e-14)
    if spec.paired:
        torch.testing.assert_close(g_r, auto_r, rtol=1e-12, atol=1e-14)
    else:
        assert g_r is None and auto_r is None


@pytest.mark.parametrize("name", loss_names())
def test_registry_flags_match_what_the_loss_reads(name):
    spec = get_loss(name)
    x = _inputs((6,), seed=3)
    base = compute_loss(name, **x)
    shifted = {**x, "ref_chosen_logps": x["ref_chosen_logps"] + 1.5,
               "ref_rejected_logps": x["ref_rejected_logps"] - 2.0}
    reads_reference = not torch.equal(compute_loss(name, **shifted), base)
    assert reads_reference == spec.uses_reference
    moved = {**x, "rejected_logps": x["rejected_logps"] - 3.0}
    reads_rejected = not torch.equal(compute_loss(name, **moved), base)
    assert reads_rejected == spec.paired
    if not spec.uses_reference:
        torch.testing.assert_close(compute_loss(name, **{**x, "ref_chosen_logps": None, "ref_rejected_logps": None}),
                                   base)


@pytest.mark.parametrize("name", loss_names())
def test_float32_autograd_and_extreme_margins_stay_finite(name):
    x = _inputs((4,), seed=4, dtype=torch.float32)
    lp_c = torch.tensor([-1e4, -1.0, -5e3, -30.0], requires_grad=True)
    lp_r = torch.tensor([-1.0, -1e4, -30.0, -5e3], requires_grad=True)
    args = {**x, "chosen_logps": lp_c, "rejected_logps": lp_r, "beta": 1.0}  # beta is dropped where unused
    loss = compute_loss(name, **args)
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss).all())
    loss.sum().backward()
    g_c, g_r = compute_loss_grad(name, **args)
    assert bool(torch.isfinite(g_c).all()) and torch.allclose(lp_c.grad, g_c)
    if get_loss(name).paired:
        assert bool(torch.isfinite(g_r).all()) and torch.allclose(lp_r.grad, g_r)


@pytest.mark.parametrize("name", ["dpo", "cdpo", "robust"])
def test_dpo_family_at_reference_equals_log_2(name):
    lp = torch.tensor([-3.0, -17.5, -0.2], dtype=torch.float64)
    lr = torch.tensor([-8.0, -2.0, -40.0], dtype=torch.float64)
    loss = compute_loss(name, chosen_logps=lp, rejected_logps=lr, ref_chosen_logps=lp, ref_rejected_logps=lr)
    torch.testing.assert_close(loss, torch.full((3,), math.log(2), dtype=torch.float64))


def test_ipo_is_zero_at_its_target_margin_and_its_weight_changes_sign_there():
    beta = 0.25
    h = torch.tensor([1 / (2 * beta) - 0.1, 1 / (2 * beta), 1 / (2 * beta) + 0.1], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    kw = dict(chosen_logps=h - 5.0, rejected_logps=zero - 5.0, ref_chosen_logps=zero, ref_rejected_logps=zero,
              beta=beta)
    loss = compute_loss("ipo", **kw)
    g_c, g_r = compute_loss_grad("ipo", **kw)
    assert float(loss[1]) == pytest.approx(0.0, abs=1e-24)
    assert float(g_c[0]) < 0 < float(g_c[2]) and float(g_c[1]) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(g_r, -g_c)


def test_sft_weight_is_minus_one_and_dpop_penalises_only_a_falling_chosen():
    g_c, g_r = compute_loss_grad("sft", chosen_logps=torch.tensor([-2.0, -9.0]))
    assert g_r is None and g_c.tolist() == [-1.0, -1.0]
    ref = torch.tensor([-5.0, -5.0], dtype=torch.float64)
    kw = dict(rejected_logps=ref, ref_chosen_logps=ref, ref_rejected_logps=ref, lam=50.0)
    above = compute_loss_grad("dpop", chosen_logps=ref + 0.01, **kw)[0]
    below = compute_loss_grad("dpop", chosen_logps=ref - 0.01, **kw)[0]
    dpo_above = compute_loss_grad("dpo", chosen_logps=ref + 0.01, **{k: v for k, v in kw.items() if k != "lam"})[0]
    torch.testing.assert_close(above, dpo_above)
    assert bool((below < 40 * above).all())  # the (1 + lam) factor pulls y+ back up far harder


def test_orpo_known_values_and_a_certain_chosen_response_stay_finite():
    lp = torch.tensor([-3.0, -0.5], dtype=torch.float64)
    n = torch.tensor([3, 1])
    even = compute_loss("orpo", chosen_logps=lp, rejected_logps=lp, chosen_lengths=n, rejected_lengths=n, beta=0.2)
    torch.testing.assert_close(even, -lp / n + 0.2 * math.log(2))  # equal odds: log s(0) = -log 2
    # y+ with probability 1/2 per token (odds 1) against y- with odds 1/3 (p = 1/4): log_odds = log 3.
    kw = dict(chosen_logps=torch.tensor([2 * math.log(0.5)], dtype=torch.float64), chosen_lengths=torch.tensor([2]),
              rejected_logps=torch.tensor([math.log(0.25)], dtype=torch.float64))
    torch.testing.assert_close(compute_loss("orpo", **kw), torch.tensor([math.log(2) + 0.1 * math.log(4 / 3)],
                                                                        dtype=torch.float64))
    zero = torch.zeros(2, dtype=torch.float32, requires_grad=True)  # log_softmax rounds a certain token to 0
    kw = dict(chosen_logps=zero, rejected_logps=torch.tensor([-2.0, -1e-3]))
    loss = compute_loss("orpo", **kw)
    g_c, g_r = compute_loss_grad("orpo", **kw)
    assert bool(torch.isfinite(loss).all() & torch.isfinite(g_c).all() & torch.isfinite(g_r).all())
    assert bool((g_r > 0).all())  # the odds term still pushes y- down


def test_hyperparameters_of_other_losses_are_ignored_but_typos_are_refused():
    lp = torch.tensor([-2.0, -3.0])
    torch.testing.assert_close(compute_loss("sft", chosen_logps=lp, beta=0.5), -lp)
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'bta'.*\['beta'\]"):
        compute_loss("dpo", chosen_logps=lp, rejected_logps=lp, ref_chosen_logps=lp, ref_rejected_logps=lp, bta=1.0)


@pytest.mark.parametrize("name, hp, pattern", [
    ("dpo", {"beta": 0.0}, r"loss 'dpo': hyperparameter beta must be > 0, got 0.0"),
    ("ipo", {"beta": -1.0}, r"loss 'ipo': hyperparameter beta must be > 0"),
    ("cdpo", {"eps": 0.5}, r"loss 'cdpo': hyperparameter eps must be in \[0, 0.5\)"),
    ("dpop", {"lam": -1.0}, r"loss 'dpop': hyperparameter lam must be >= 0"),
    ("simpo", {"gamma": float("nan")}, r"loss 'simpo': hyperparameter gamma must be a finite number"),
    ("slic", {"delta": True}, r"loss 'slic': hyperparameter delta must be a finite number"),
])
def test_invalid_hyperparameters_are_refused_naming_loss_and_value(name, hp, pattern):
    x = _inputs((3,))
    with pytest.raises(ValueError, match=pattern):
        compute_loss(name, **x, **hp)
    with pytest.raises(ValueError, match=pattern):
        compute_loss_grad(name, **x, **hp)


def test_bad_inputs_are_refused_with_what_and_where():
    x = _inputs((4,))
    with pytest.raises(ValueError, match=r"unknown loss 'dpoo'; known losses: sft, dpo, ipo"):
        compute_loss("dpoo", **x)
    with pytest.raises(ValueError, match=r"rejected_logps has shape \(3,\), expected \(4,\)"):
        compute_loss("dpo", **{**x, "rejected_logps": x["rejected_logps"][:3]})
    nan = x["chosen_logps"].clone()
    nan[2] = float("nan")
    with pytest.raises(ValueError, match=r"loss 'ipo': chosen_logps has a NaN or inf entry at index \[2\]"):
        compute_loss("ipo", **{**x, "chosen_logps": nan})
    with pytest.raises(ValueError, match=r"loss 'slic' needs rejected_logps, got None"):
        compute_loss("slic", chosen_logps=x["chosen_logps"])
    with pytest.raises(ValueError, match=r"loss 'nca' needs ref_chosen_logps, got None"):
        compute_loss("nca", chosen_logps=x["chosen_logps"], rejected_logps=x["rejected_logps"])
    with pytest.raises(ValueError, match=r"chosen_lengths must be positive token counts"):
        compute_loss("simpo", **{**x, "chosen_lengths": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"chosen_logps must be a float tensor"):
        compute_loss("sft", chosen_logps=torch.tensor([1, 2]))
    assert set(LOSSES) == set(loss_names())


def test_batch_coupled_losses_match_their_batch_references():
    x = _inputs((10,), seed=6)
    c, r, rc, rr = (x[k] for k in ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps"))
    hp = {"beta": 0.7, "eps": 0.2}
    for name, d in [("aot", torch.sort(c - r)[0] - torch.sort(rc - rr)[0]),
                    ("aot_unpaired", torch.sort(c - rc)[0] - torch.sort(r - rr)[0])]:
        want = [-(1 - 0.2) * _logsig(0.7 * v) - 0.2 * _logsig(-0.7 * v) for v in d.tolist()]
        torch.testing.assert_close(compute_loss(name, **x, **hp), torch.tensor(want, dtype=torch.float64))
    n = x["chosen_lengths"].double()
    got = compute_loss("rpo_batch", **x, beta=0.7, alpha=0.5).mean()
    want = compute_loss("dpo", **x, beta=0.7).mean() - 0.5 * c.sum() / n.sum()  # one token mean over the batch
    torch.testing.assert_close(got, want)
    # with equal lengths both RPO conventions agree; the batch mean weighs long responses more otherwise
    same = {**x, "chosen_lengths": torch.full((10,), 7)}
    torch.testing.assert_close(compute_loss("rpo_batch", **same), compute_loss("rpo", **same))


def test_aot_sends_each_rank_gradient_back_to_its_example():
    c = torch.tensor([-1.0, -9.0, -4.0], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    g_c, g_r = compute_loss_grad("aot", chosen_logps=c, rejected_logps=zero, ref_chosen_logps=zero,
                                 ref_rejected_logps=zero, beta=1.0)
    # margins -1, -9, -4 are ranks 2, 0, 1; the reference margins are all 0, so each example keeps its own weight
    torch.testing.assert_close(g_c, -torch.sigmoid(-c))
    torch.testing.assert_close(g_r, -g_c)


def test_ipo_norm_equals_summed_ipo_with_beta_scaled_by_length_for_one_length():
    x = _inputs((5,), seed=7)
    n = 6
    x = {**x, "chosen_lengths": torch.full((5,), n), "rejected_lengths": torch.full((5,), n)}
    # (h/n - 1/(2b))^2 = (h - n/(2b))^2 / n^2: per-token IPO at beta is summed IPO at beta/n, divided by n^2
    torch.testing.assert_close(compute_loss("ipo_norm", **x, beta=0.4), compute_loss("ipo", **x, beta=0.4 / n) / n**2)


def test_exo_needs_a_positive_smoothing():
    x = _inputs((3,))
    with pytest.raises(ValueError, match=r"loss 'exo_pair': hyperparameter eps must be in \(0, 0.5\), got 0.0"):
        compute_loss("exo_pair", **x, eps=0.0)
