"""The squeezing effect: the exact step against a real torch gradient step, claims 1-5 and the positive contrast."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from toykit.squeeze import (
    peaky_distribution,
    positive_contrast,
    positive_step,
    random_distribution,
    rise_threshold,
    rose,
    squeeze_claims,
    squeeze_logits_step,
    squeeze_step,
    temper,
    ystar_conditional_log_gain,
)

PROPERTY = settings(max_examples=150, deadline=None)


@st.composite
def squeeze_cases(draw, peaky_only: bool = False):
    """Draw (pi, ybar, c): V in [2, 60], logit scale from flat (0.01) to very peaky (12), c in [1e-3, 20]."""
    num_classes = draw(st.integers(2, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if peaky_only:
        peak_mass, peak = draw(st.floats(0.9, 0.999)), draw(st.integers(0, num_classes - 1))
        pi = peaky_distribution(rng, num_classes, peak_mass, peak=peak, tail_concentration=draw(st.floats(0.05, 5.0)))
    else:
        scale = draw(st.floats(0.01, 12.0))
        pi = random_distribution(rng, num_classes, temperature=1.0 / scale)
    ybar = draw(st.integers(0, num_classes - 1))
    c = draw(st.floats(1e-3, 20.0))
    return pi, ybar, c


def _direct_step(pi: np.ndarray, label, c, sign: float = 1.0) -> np.ndarray:
    """The update written out without logs: pi_i exp(sign c (pi_i - [i = label])) / Z."""
    one_hot = np.arange(pi.shape[-1]) == np.asarray(label)[..., None]  # (..., V)
    unnormalised = pi * np.exp(sign * np.asarray(c)[..., None] * (pi - one_hot))
    return unnormalised / unnormalised.sum(axis=-1, keepdims=True)


def _exact_log_change(pi: np.ndarray, ybar: int, c: float, sign: float = 1.0) -> np.ndarray:
    """log pi'_i - log pi_i = sign c (pi_i - [i = ybar]) - log Z, computed with a stable log-sum-exp."""
    shift = sign * c * (pi - (np.arange(pi.size) == ybar))
    with np.errstate(divide="ignore"):
        log_z = np.logaddexp.reduce(np.log(pi) + shift)
    return shift - log_z


# ----------------------------------------------------------------------------------------------- the step itself


def _torch_step(weight, x, label, eta, sign):
    """One real SGD step on a torch linear softmax z = W x; sign +1 pushes label down, -1 pulls it up."""
    w = torch.tensor(weight, requires_grad=True)  # (V, d) float64
    xt = torch.tensor(x)  # (d,)
    log_pi = torch.log_softmax(w @ xt, dim=-1)  # (V,)
    loss = -log_pi[label]
    (grad,) = torch.autograd.grad(loss, w)
    w_new = w.detach() + sign * eta * grad  # ascent (+1) or descent (-1) on -log pi(label)
    return log_pi.exp().detach().numpy(), torch.softmax(w_new @ xt, dim=-1).numpy(), (w_new @ xt).numpy()


def test_squeeze_step_equals_a_real_gradient_step_with_c_eta_x_norm_squared():
    rng = np.random.default_rng(0)
    num, num_classes, dim, eta = 6, 40, 5, 0.7
    befores, afters, cs = [], [], []
    labels = rng.integers(0, num_classes, size=num)
    for n in range(num):
        weight, x = rng.standard_normal((num_classes, dim)), rng.standard_normal(dim)
        pi, pi_new, _ = _torch_step(weight, x, int(labels[n]), eta, sign=+1.0)
        befores.append(pi), afters.append(pi_new), cs.append(eta * x @ x)
    got = squeeze_step(np.stack(befores), labels, np.array(cs))  # one batched call, one c per row
    np.testing.assert_allclose(got, np.stack(afters), rtol=1e-10, atol=1e-14)


def test_positive_step_equals_a_real_sft_step():
    rng = np.random.default_rng(1)
    weight, x, eta = rng.standard_normal((30, 4)), rng.standard_normal(4), 0.4
    pi, pi_new, _ = _torch_step(weight, x, 7, eta, sign=-1.0)
    np.testing.assert_allclose(positive_step(pi, 7, eta * x @ x), pi_new, rtol=1e-10, atol=1e-14)


def test_squeeze_logits_step_equals_the_new_logits_of_a_real_step():
    rng = np.random.default_rng(2)
    weight, x, eta = rng.standard_normal((25, 3)), rng.standard_normal(3), 1.3
    _, _, z_new = _torch_step(weight, x, 4, eta, sign=+1.0)
    np.testing.assert_allclose(squeeze_logits_step(weight @ x, 4, eta * x @ x), z_new, rtol=1e-12, atol=1e-12)


def test_batched_over_any_leading_shape_equals_row_by_row():
    rng = np.random.default_rng(3)
    pi = random_distribution(rng, 12, temperature=0.5, size=(2, 3))  # (2, 3, V)
    ybar = rng.integers(0, 12, size=(2, 3))
    c = rng.uniform(0.1, 5.0, size=(2, 3))
    batched = squeeze_step(pi, ybar, c)
    thresholds = rise_threshold(pi, ybar, c)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(batched[i, j], _direct_step(pi[i, j], ybar[i, j], c[i, j]), rtol=1e-12)
            np.testing.assert_allclose(thresholds[i, j], rise_threshold(pi[i, j], ybar[i, j], c[i, j]), rtol=1e-12)
    assert squeeze_claims(pi, ybar, c).claim3_threshold_rule.shape == (2, 3)


def test_lm_sized_vocabulary_matches_the_direct_formula():
    rng = np.random.default_rng(4)
    pi = random_distribution(rng, 50_257, temperature=0.3, size=(2,))
    ybar, c = np.array([11, 50_000]), 3.0
    np.testing.assert_allclose(squeeze_step(pi, ybar, c), _direct_step(pi, ybar, c), rtol=1e-10, atol=1e-300)


# ----------------------------------------------------------------------------------------------- claims 1-3


@PROPERTY
@given(squeeze_cases())
def test_claims_1_to_3_hold_for_every_distribution(case):
    pi, ybar, c = case
    change = _exact_log_change(pi, ybar, c)
    others = np.delete(np.arange(pi.size), ybar)
    y_star = others[np.argmax(pi[others])]
    # Skip only what float64 cannot resolve (pi(ybar) ~ 1, or a change below round-off).
    assume(abs(change[ybar]) > 1e-11 and abs(change[y_star]) > 1e-11)
    claims = squeeze_claims(pi, ybar, c)
    assert claims.y_star == y_star
    assert claims.claim1_ybar_decreases, f"pi(ybar) {pi[ybar]} -> {claims.pi_ybar_after}"
    assert claims.claim2_ystar_increases, f"pi(y*) {pi[y_star]} -> {claims.pi_ystar_after}"
    assert claims.claim3_threshold_rule
    # Claim 3 against an independent computation: the non-log update and the log-sum-exp threshold.
    after = _direct_step(pi, ybar, c)
    threshold = rise_threshold(pi, ybar, c)
    resolved = [i for i in others if abs(c * (pi[i] - threshold)) > 1e-9 and pi[i] > 1e-250]
    assert all((after[i] > pi[i]) == (pi[i] > threshold) for i in resolved)


@PROPERTY
@given(squeeze_cases(peaky_only=True))
def test_claim_4_for_a_very_peaky_pi_only_ystar_rises(case):
    pi, ybar, c = case
    others = np.delete(np.arange(pi.size), ybar)
    y_star = others[np.argmax(pi[others])]
    rest = np.delete(pi, [ybar, y_star])
    # The sufficient condition from log Z >= c (||pi||^2 - pi(ybar)) (Jensen): no label below the bound rises.
    assume(rest.size == 0 or pi[y_star] ** 2 - pi[ybar] >= rest.max())
    claims = squeeze_claims(pi, ybar, c)
    assert claims.only_ystar_rises
    assert claims.num_rose <= 1


@PROPERTY
@given(squeeze_cases())
def test_claim_4_bound_no_label_below_norm_squared_minus_pi_ybar_rises(case):
    pi, ybar, c = case
    assert squeeze_claims(pi, ybar, c).claim4_jensen_bound_holds
    bound = pi @ pi - pi[ybar]
    assert rise_threshold(pi, ybar, c) >= bound - 1e-12


@pytest.mark.parametrize("c", [0.5, 2.0, 10.0])
def test_claim_4_peakier_pi_fewer_labels_rise(c):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((200, 30))  # (N, V)
    ybar = np.argsort(logits, axis=-1)[:, 15]  # a middle label: never the peak at any temperature
    counts = []
    for temperature in (8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.05):
        pi = temper(_softmax_rows(logits), temperature)  # (N, V), peakier as the temperature falls
        counts.append(squeeze_claims(pi, ybar, c).num_rose.mean())
    assert all(later <= earlier for earlier, later in zip(counts, counts[1:])), counts
    assert counts[0] > 5 * counts[-1]  # flat: many labels rise
    assert counts[-1] <= 1.1  # very peaky: about only y* rises


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------- claim 5


@PROPERTY
@given(squeeze_cases(), st.floats(1.05, 10.0))
def test_claim_5_larger_c_squeezes_harder(case, factor):
    pi, ybar, c = case
    small, large = squeeze_claims(pi, ybar, c), squeeze_claims(pi, ybar, c * factor)
    assert large.pi_ystar_after >= small.pi_ystar_after * (1 - 1e-12)
    assert ystar_conditional_log_gain(pi, ybar, c * factor) >= ystar_conditional_log_gain(pi, ybar, c) - 1e-12
    # The threshold (1/c) log Z = K(c)/c of a cumulant generating function grows with c: the risers only shrink.
    assert rise_threshold(pi, ybar, c * factor) >= rise_threshold(pi, ybar, c) - 1e-12


def _with_ybar_mass(shape: np.ndarray, q: float) -> np.ndarray:
    """pi with pi(ybar = 0) = q and the other labels in the fixed proportions ``shape``."""
    return np.concatenate([[q], (1.0 - q) * shape])


def test_claim_5_smaller_pi_ybar_squeezes_the_rest_harder():
    rng = np.random.default_rng(6)
    for _ in range(200):
        num_classes = int(rng.integers(3, 60))
        shape = rng.dirichlet(np.full(num_classes - 1, rng.uniform(0.05, 3.0)))
        c = float(rng.uniform(0.01, 20.0))
        masses = np.linspace(0.95, 0.001, 25)  # pi(ybar) from a peak to a deep valley
        pis = np.stack([_with_ybar_mass(shape, q) for q in masses])  # (25, V)
        ybar = np.zeros(len(masses), dtype=int)
        gains = ystar_conditional_log_gain(pis, ybar, c)
        risers = squeeze_claims(pis, ybar, c).num_rose
        assert np.all(np.diff(gains) >= -1e-12), gains
        assert np.all(np.diff(risers) <= 0), risers


def test_claim_5_the_absolute_gain_of_ystar_is_not_what_grows():
    # A valley has little mass to give away: y* gains less in absolute terms, yet the rest is squeezed harder.
    shape = np.array([0.5, 0.3, 0.2])
    peak, valley = (squeeze_claims(_with_ybar_mass(shape, q), 0, 3.0) for q in (0.5, 0.001))
    assert valley.pi_ystar_after - valley.pi_ystar_before < peak.pi_ystar_after - peak.pi_ystar_before
    assert ystar_conditional_log_gain(_with_ybar_mass(shape, 0.001), 0, 3.0) > ystar_conditional_log_gain(
        _with_ybar_mass(shape, 0.5), 0, 3.0)


# ----------------------------------------------------------------------------------------------- positive contrast


@PROPERTY
@given(squeeze_cases())
def test_positive_gradient_contrast_the_rich_lose_most(case):
    pi, y, c = case
    assume(abs(_exact_log_change(pi, y, c, sign=-1.0)[y]) > 1e-11)  # resolvable in float64
    contrast = positive_contrast(pi, y, c)
    assert contrast.y_increases
    assert contrast.rich_lose_most
    after = _direct_step(pi, y, c, sign=-1.0)
    others = [i for i in range(pi.size) if i != y and pi[i] > 1e-250 and after[i] > 0]
    # For i != y: log pi'_i - log pi_i + c pi_i is the same constant (-log Z) for every label.
    offsets = np.log(after[others]) - np.log(pi[others]) + c * pi[others]
    np.testing.assert_allclose(offsets, offsets[0], rtol=0, atol=1e-9)


def test_negative_and_positive_steps_differ_on_a_peaky_pi():
    pi = np.array([0.7, 0.2, 0.06, 0.04])
    assert rose(pi, squeeze_step(pi, 3, 2.0)).tolist() == [True, False, False, False]  # rich get richer
    after_positive = positive_step(pi, 3, 2.0)
    assert after_positive[0] < pi[0] and after_positive[3] > pi[3]
    assert positive_contrast(pi, 3, 2.0).richest_other == 0


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: squeeze_step([0.5, 0.4], 0, 1.0), "pi: expected rows summing to 1"),
        (lambda: squeeze_step([1.2, -0.2], 0, 1.0), "pi: expected non-negative"),
        (lambda: squeeze_step([np.nan, 0.5], 0, 1.0), "pi: expected finite"),
        (lambda: squeeze_step([1.0], 0, 1.0), "pi: expected shape (..., V) with V >= 2"),
        (lambda: squeeze_step(np.full((3, 4), 0.25), [0, 1], 1.0), "ybar: expected shape (3,)"),
        (lambda: squeeze_step([0.5, 0.5], 2, 1.0), "ybar: expected labels in [0, 2)"),
        (lambda: squeeze_step([0.5, 0.5], 0.5, 1.0), "ybar: expected integer labels"),
        (lambda: squeeze_step([0.5, 0.5], 0, 0.0), "c: expected finite step sizes"),
        (lambda: squeeze_step([0.5, 0.5], 0, np.nan), "c: expected finite step sizes"),
        (lambda: squeeze_step(np.full((3, 2), 0.5), [0, 1, 0], [1.0, 2.0]), "c: expected a scalar or shape (3,)"),
        (lambda: positive_step([0.5, 0.5], 5, 1.0), "y: expected labels in [0, 2)"),
        (lambda: squeeze_logits_step([0.0, np.nan], 0, 1.0), "z: expected finite logits"),
        (lambda: rose([0.5, 0.5], [0.2, 0.3, 0.5]), "pi_new: expected the shape of pi (2,)"),
        (lambda: temper([0.5, 0.5], 0.0), "temperature: expected a finite value > 0"),
        (lambda: peaky_distribution(np.random.default_rng(0), 5, 1.0), "peak_mass: expected a value in (0, 1)"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=_escape(message)):
        call()


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_helpers_make_peaky_and_flat_distributions():
    rng = np.random.default_rng(8)
    peaky = peaky_distribution(rng, 10, 0.95, peak=3)
    assert peaky.argmax() == 3 and np.isclose(peaky.sum(), 1.0) and np.isclose(peaky[3], 0.95)
    flat = random_distribution(rng, 10, temperature=100.0)
    assert flat.max() - flat.min() < 0.01
    sharper = temper(flat, 1e-5)
    assert sharper.max() > 0.99 and sharper.argmax() == flat.argmax()
