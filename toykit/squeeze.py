"""The squeezing effect: one exact gradient step on a linear softmax, and the paper's claims about it.

Setting (PAPER.md section 4): logits z = W x, pi = Softmax(z). One step of gradient ASCENT on -log pi(ybar)
(a negative gradient, pushing ybar down) with learning rate eta gives W' = W + eta (pi - e_ybar) x^T, hence
z' = z + c (pi - e_ybar) with c = eta ||x||^2 > 0, and

    pi'_i = pi_i exp(c (pi_i - [i = ybar])) / Z,    Z = sum_j pi_j exp(c (pi_j - [j = ybar])).

Every function here is pure, works in float64 and is batched over any leading shape: ``pi`` is (..., V), labels and
``c`` are (...) (``c`` may also be a scalar). Shapes use V for the vocabulary / number of classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "squeeze_step",
    "positive_step",
    "squeeze_logits_step",
    "rise_threshold",
    "rose",
    "SqueezeClaims",
    "squeeze_claims",
    "PositiveContrast",
    "positive_contrast",
    "ystar_conditional_log_gain",
    "peaky_distribution",
    "random_distribution",
    "temper",
]

_SUM_ATOL = 1e-6
_BLOCK_ELEMENTS = 1 << 16  # numbers per block of rows in _tilted_step (512 KiB of float64)


# ----------------------------------------------------------------------------------------------- validation


def _check_pi(pi: Any, name: str = "pi") -> np.ndarray:
    """Return ``pi`` as float64 (..., V), or raise ValueError if it is not a distribution on its last axis."""
    arr = np.asarray(pi, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[-1] < 2:
        raise ValueError(f"{name}: expected shape (..., V) with V >= 2, got shape {arr.shape}")
    # Two passes without temporaries: a NaN/inf anywhere makes its row sum non-finite.
    sums = arr.sum(axis=-1)  # (...)
    if not np.all(np.isfinite(sums)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name}: expected finite probabilities, found {bad} NaN/inf entries")
    low = arr.min()
    if low < 0:
        raise ValueError(f"{name}: expected non-negative probabilities, found minimum {low:.3g}")
    errors = np.abs(sums - 1.0)
    if errors.size and errors.max() > _SUM_ATOL:
        worst = np.unravel_index(int(np.argmax(errors)), errors.shape)
        raise ValueError(f"{name}: expected rows summing to 1 (atol {_SUM_ATOL:g}) on the last axis, row {worst} sums "
                         f"to {sums[worst]:.9g}")
    return arr


def _check_labels(labels: Any, lead_shape: tuple[int, ...], num_classes: int, name: str) -> np.ndarray:
    """Return integer labels of shape ``lead_shape`` in [0, V), or raise ValueError naming ``name``."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name}: expected integer labels, got dtype {arr.dtype}")
    if arr.shape != lead_shape:
        raise ValueError(f"{name}: expected shape {lead_shape} (the leading shape of pi), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name}: expected labels in [0, {num_classes}), got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def _check_c(c: Any, lead_shape: tuple[int, ...], name: str = "c") -> np.ndarray:
    """Return the step size as float64 broadcastable to (..., 1): a scalar or an array of ``lead_shape``."""
    arr = np.asarray(c, dtype=np.float64)
    if arr.ndim and arr.shape != lead_shape:
        raise ValueError(f"{name}: expected a scalar or shape {lead_shape}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name}: expected finite step sizes c = eta ||x||^2 > 0, got min {np.min(arr)!r}")
    return arr


def _one_hot_add(s: np.ndarray, labels: np.ndarray, value: Any) -> None:
    """Add ``value`` (scalar or shape (...)) at ``labels`` (...) along the last axis of ``s`` (..., V), in place."""
    index = labels[..., None]  # (..., 1)
    current = np.take_along_axis(s, index, axis=-1)  # (..., 1)
    np.put_along_axis(s, index, current + np.asarray(value)[..., None], axis=-1)


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the (..., V) boolean one-hot mask of ``labels`` (...)."""
    mask = np.zeros((*labels.shape, num_classes), dtype=bool)
    np.put_along_axis(mask, labels[..., None], True, axis=-1)
    return mask


def _tilted_step(pi: np.ndarray, label: np.ndarray, c: np.ndarray, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (pi_new, log Z) for log pi'_i = log pi_i + sign c (pi_i - [i = label]) - log Z, in log space.

    Rows are processed in blocks of about ``_BLOCK_ELEMENTS`` numbers so that the eight passes over each block run in
    cache with one reused scratch buffer; the only large allocation is the (..., V) result.
    """
    num_classes = pi.shape[-1]
    rows = pi.reshape(-1, num_classes)  # (R, V), R = prod(...)
    labels = label.reshape(-1)  # (R,)
    steps = np.broadcast_to(sign * c, label.shape).reshape(-1, 1)  # (R, 1)
    out = np.empty(rows.shape, dtype=np.float64)  # (R, V)
    log_z = np.empty(rows.shape[0], dtype=np.float64)  # (R,)
    block = max(1, _BLOCK_ELEMENTS // num_classes)
    scratch = np.empty((min(block, rows.shape[0]), num_classes), dtype=np.float64)  # (B, V)
    for start in range(0, rows.shape[0], block):
        stop = min(start + block, rows.shape[0])
        p, s, buf = rows[start:stop], out[start:stop], scratch[: stop - start]  # (B, V) each
        step = steps[start:stop]  # (B, 1)
        with np.errstate(divide="ignore"):
            np.log(p, out=s)  # -inf where pi_i == 0 keeps those labels at zero
        np.multiply(p, step, out=buf)
        s += buf
        s[np.arange(stop - start), labels[start:stop]] -= step[:, 0]
        m = s.max(axis=-1, keepdims=True)  # (B, 1), finite because some pi_i > 0
        s -= m
        np.exp(s, out=s)
        z = s.sum(axis=-1, keepdims=True)  # (B, 1)
        s /= z
        log_z[start:stop] = (m + np.log(z))[:, 0]
    return out.reshape(pi.shape), log_z.reshape(label.shape)


# ----------------------------------------------------------------------------------------------- the step


def squeeze_step(pi: Any, ybar: Any, c: Any) -> np.ndarray:
    """Apply one exact negative-gradient step on ``ybar`` to linear-softmax predictions.

    Args:
        pi: (..., V) current distribution pi = Softmax(W x).
        ybar: (...) integer label pushed down (the rejected / negative label).
        c: scalar or (...) step size c = eta ||x||^2 > 0.

    Returns:
        (..., V) float64 pi' after the step.

    Math: pi'_i = pi_i exp(c (pi_i - [i = ybar])) / Z, Z = sum_j pi_j exp(c (pi_j - [j = ybar])), in log space.
    References: Ren & Sutherland (ICLR 2025), Section 3.3 and Appendix C (squeezing effect); PAPER.md section 4.
    """
    arr = _check_pi(pi)
    lead = arr.shape[:-1]
    label = _check_labels(ybar, lead, arr.shape[-1], "ybar")
    step = _check_c(c, lead)
    return _tilted_step(arr, label, step, sign=1.0)[0]


def positive_step(pi: Any, y: Any, c: Any) -> np.ndarray:
    """Apply one exact positive-gradient (SFT) step on ``y`` to linear-softmax predictions: the contrast case.

    Args:
        pi: (..., V) current distribution.
        y: (...) integer label pulled up.
        c: scalar or (...) step size c = eta ||x||^2 > 0.

    Returns:
        (..., V) float64 pi' after the step.

    Math: z' = z - c (pi - e_y), so pi'_i = pi_i exp(-c (pi_i - [i = y])) / Z; for i != y, pi'_i ∝ pi_i exp(-c pi_i).
    References: Ren & Sutherland (ICLR 2025), Appendix C; PAPER.md section 4 (contrast).
    """
    arr = _check_pi(pi)
    lead = arr.shape[:-1]
    label = _check_labels(y, lead, arr.shape[-1], "y")
    step = _check_c(c, lead)
    return _tilted_step(arr, label, step, sign=-1.0)[0]


def squeeze_logits_step(z: Any, ybar: Any, c: Any) -> np.ndarray:
    """Apply one negative-gradient step on ``ybar`` to linear-softmax logits.

    Args:
        z: (..., V) logits.
        ybar: (...) integer label pushed down.
        c: scalar or (...) step size c = eta ||x||^2 > 0.

    Returns:
        (..., V) float64 z' = z + c (pi - e_ybar).

    Math: W' = W + eta (pi - e_ybar) x^T  =>  z' = W' x = z + eta ||x||^2 (pi - e_ybar).
    References: PAPER.md section 4.
    """
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[-1] < 2:
        raise ValueError(f"z: expected shape (..., V) with V >= 2, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"z: expected finite logits, found {int(np.sum(~np.isfinite(arr)))} NaN/inf entries")
    lead = arr.shape[:-1]
    label = _check_labels(ybar, lead, arr.shape[-1], "ybar")
    step = _check_c(c, lead)
    shifted = arr - arr.max(axis=-1, keepdims=True)  # (..., V)
    pi = np.exp(shifted)
    pi /= pi.sum(axis=-1, keepdims=True)
    out = arr + pi * (step[..., None] if step.ndim else step)
    _one_hot_add(out, label, -step)
    return out


def rise_threshold(pi: Any, ybar: Any, c: Any) -> np.ndarray:
    """Return the rise/fall threshold (1/c) log Z of a negative-gradient step.

    Args:
        pi: (..., V) current distribution.
        ybar: (...) integer label pushed down.
        c: scalar or (...) step size c > 0.

    Returns:
        (...) float64 threshold t: for i != ybar, pi_i rises iff pi_i > t (claim 3).

    Math: log pi'_i - log pi_i = c pi_i - log Z for i != ybar, so pi'_i > pi_i  <=>  pi_i > (1/c) log Z.
    References: Ren & Sutherland (ICLR 2025), Appendix C; PAPER.md section 4, claim 3.
    """
    arr = _check_pi(pi)
    lead = arr.shape[:-1]
    label = _check_labels(ybar, lead, arr.shape[-1], "ybar")
    step = _check_c(c, lead)
    return _tilted_step(arr, label, step, sign=1.0)[1] / step


def rose(pi: Any, pi_new: Any) -> np.ndarray:
    """Return the (..., V) boolean mask of labels whose probability strictly rose from ``pi`` to ``pi_new``."""
    before = _check_pi(pi, "pi")
    after = _check_pi(pi_new, "pi_new")
    if before.shape != after.shape:
        raise ValueError(f"pi_new: expected the shape of pi {before.shape}, got {after.shape}")
    return after > before


# ----------------------------------------------------------------------------------------------- claims


def _best_other(pi: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Return y* = argmax over i != label of pi_i, shape (...)."""
    masked = pi.copy()
    _one_hot_add(masked, label, -np.inf)
    return masked.argmax(axis=-1)


def _take(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.take_along_axis(values, labels[..., None], axis=-1)[..., 0]  # (...)


def ystar_conditional_log_gain(pi: Any, ybar: Any, c: Any) -> np.ndarray:
    """Return how much y* gains in its share of the mass outside ybar after a negative step (claim 5).

    Args:
        pi: (..., V) current distribution.
        ybar: (...) integer label pushed down.
        c: scalar or (...) step size c > 0.

    Returns:
        (...) float64 log[pi'(y*) / pi'(not ybar)] - log[pi(y*) / pi(not ybar)] >= 0.

    Math: outside ybar, pi'(i | i != ybar) ∝ r_i exp(k r_i) with r = pi(. | i != ybar) and k = c (1 - pi(ybar)), so
        the gain k r* - log sum_j r_j exp(k r_j) grows with c and as pi(ybar) shrinks (its k-derivative is
        r* - E_{r'}[r] >= 0). The absolute gain pi'(y*) - pi(y*) is NOT monotone in pi(ybar): a valley has little
        mass to give away; what grows is how strongly the rest is squeezed into y*.
    References: Ren & Sutherland (ICLR 2025), Appendix C, claim 5 (smaller pi(ybar) -> stronger squeeze).
    """
    arr = _check_pi(pi)
    lead = arr.shape[:-1]
    label = _check_labels(ybar, lead, arr.shape[-1], "ybar")
    step = _check_c(c, lead)
    pi_new, _ = _tilted_step(arr, label, step, sign=1.0)
    y_star = _best_other(arr, label)
    is_ybar = _one_hot(label, arr.shape[-1])  # (..., V)
    # Sum the other labels rather than 1 - pi(ybar): exact when pi(ybar) ~ 1 and when y* is the only other label.
    rest_before = np.where(is_ybar, 0.0, arr).sum(axis=-1)
    rest_after = np.where(is_ybar, 0.0, pi_new).sum(axis=-1)
    return (np.log(_take(pi_new, y_star)) - np.log(rest_after)) - (np.log(_take(arr, y_star)) - np.log(rest_before))


@dataclass(frozen=True)
class SqueezeClaims:
    """Measured values and verdicts of claims 1-4 for negative-gradient steps; every field has shape (...).

    Fields named ``claim*`` must be True for every distribution (up to float64 resolution); the rest are measurements.

    Attributes:
        ybar, y_star: the pushed-down label and y* = argmax_{i != ybar} pi_i.
        c: the step size c = eta ||x||^2.
        pi_ybar_before, pi_ybar_after, pi_ystar_before, pi_ystar_after: the two probabilities before and after.
        threshold: (1/c) log Z.
        num_rose: how many labels i != ybar rose.
        num_undecided: labels i != ybar so close to the threshold (|c (pi_i - t)| <= margin) that float64
            cannot resolve rise vs fall; claim 3 is judged on the others.
        claim1_ybar_decreases: pi'(ybar) < pi(ybar).
        claim2_ystar_increases: pi'(y*) > pi(y*).
        claim3_threshold_rule: for every resolved i != ybar with pi_i > 0: pi'_i > pi_i  <=>  pi_i > threshold.
        only_ystar_rises: every label except y* fell or stayed; an observation, not a claim: claim 4 says a very
            peaky pi shows it (guaranteed when pi(y*)^2 - pi(ybar) >= every other pi_i, by the bound below).
        claim4_jensen_bound_holds: no label with pi_i <= ||pi||^2 - pi(ybar) rose (the proof of claim 4 via
            log Z >= c (||pi||^2 - pi(ybar))).
    """

    ybar: np.ndarray
    y_star: np.ndarray
    c: np.ndarray
    pi_ybar_before: np.ndarray
    pi_ybar_after: np.ndarray
    pi_ystar_before: np.ndarray
    pi_ystar_after: np.ndarray
    threshold: np.ndarray
    num_rose: np.ndarray
    num_undecided: np.ndarray
    claim1_ybar_decreases: np.ndarray
    claim2_ystar_increases: np.ndarray
    claim3_threshold_rule: np.ndarray
    only_ystar_rises: np.ndarray
    claim4_jensen_bound_holds: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Return plain Python values (lists for batched fields), ready for JSON."""
        return {k: np.asarray(v).tolist() for k, v in asdict(self).items()}


def squeeze_claims(pi: Any, ybar: Any, c: Any, *, margin: float = 1e-9) -> SqueezeClaims:
    """Evaluate claims 1-4 of the squeezing effect on one exact negative-gradient step.

    Args:
        pi: (..., V) current distribution.
        ybar: (...) integer label pushed down.
        c: scalar or (...) step size c = eta ||x||^2 > 0.
        margin: labels with |c (pi_i - threshold)| <= margin are too close to call in float64 (claim 3).

    Returns:
        SqueezeClaims with fields of shape (...).

    Math: claims 1-3 follow from pi'_i / pi_i = exp(c (pi_i - [i = ybar])) / Z; the rise mask is read from the
        stepped distribution (exp, normalise), the prediction from the log-sum-exp threshold (1/c) log Z.
    References: Ren & Sutherland (ICLR 2025), Section 3.3 and Appendix C; PAPER.md section 4, claims 1-4.
    """
    arr = _check_pi(pi)
    lead = arr.shape[:-1]
    num_classes = arr.shape[-1]
    label = _check_labels(ybar, lead, num_classes, "ybar")
    step = _check_c(c, lead)
    if not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin: expected a finite value >= 0, got {margin!r}")
    pi_new, log_z = _tilted_step(arr, label, step, sign=1.0)
    threshold = log_z / step  # (...)
    y_star = _best_other(arr, label)

    others = ~_one_hot(label, num_classes)  # (..., V), True for i != ybar
    went_up = (pi_new > arr) & others
    went_down_or_same = ~went_up
    step_col = step[..., None] if step.ndim else step
    gap = step_col * (arr - threshold[..., None])  # (..., V): log pi'_i - log pi_i for i != ybar
    decided = others & (arr > 0) & (np.abs(gap) > margin)
    predicted_up = gap > 0
    claim3 = np.all(~decided | (went_up == predicted_up), axis=-1)

    is_star = _one_hot(y_star, num_classes)  # (..., V)
    only_star = np.all(is_star | went_down_or_same, axis=-1)
    bound = (arr * arr).sum(axis=-1) - _take(arr, label)  # (...) ||pi||^2 - pi(ybar)
    below_bound = others & (arr <= bound[..., None])
    jensen = ~np.any(below_bound & went_up, axis=-1)

    return SqueezeClaims(
        ybar=label, y_star=y_star, c=np.broadcast_to(step, lead).copy(),
        pi_ybar_before=_take(arr, label), pi_ybar_after=_take(pi_new, label),
        pi_ystar_before=_take(arr, y_star), pi_ystar_after=_take(pi_new, y_star),
        threshold=threshold, num_rose=went_up.sum(axis=-1), num_undecided=(others & ~decided & (arr > 0)).sum(axis=-1),
        claim1_ybar_decreases=_take(pi_new, label) < _take(arr, label),
        claim2_ystar_increases=_take(pi_new, y_star) > _take(arr, y_star),
        claim3_threshold_rule=claim3, only_ystar_rises=only_star, claim4_jensen_bound_holds=jensen,
    )


@dataclass(frozen=True)
class PositiveContrast:
    """The positive-gradient contrast; every field has shape (...).

    Attributes:
        y: the label pulled up.
        y_increases: pi'(y) > pi(y).
        rich_lose_most: for i, j != y with pi_i > pi_j, the relative change pi'_i / pi_i <= pi'_j / pi_j
            (checked on labels sorted by pi; relative changes compared in log space).
        richest_other: argmax_{i != y} pi_i, which loses the largest fraction of its mass.
        log_change_richest_other: log pi'_i - log pi_i of that label.
    """

    y: np.ndarray
    y_increases: np.ndarray
    rich_lose_most: np.ndarray
    richest_other: np.ndarray
    log_change_richest_other: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Return plain Python values, ready for JSON."""
        return {k: np.asarray(v).tolist() for k, v in asdict(self).items()}


def positive_contrast(pi: Any, y: Any, c: Any, *, atol: float = 1e-12) -> PositiveContrast:
    """Evaluate the positive-gradient contrast: y rises, and among the other labels the rich lose most.

    Args:
        pi: (..., V) current distribution.
        y: (...) integer label pulled up.
        c: scalar or (...) step size c > 0.
        atol: tolerance on the ordering of log relative changes (round-off).

    Returns:
        PositiveContrast with fields of shape (...).

    Math: for i != y, log pi'_i - log pi_i = -c pi_i - log Z, a decreasing function of pi_i.
    References: Ren & Sutherland (ICLR 2025), Appendix C; PAPER.md section 4 (contrast).
    """
    arr = _check_pi(pi)
    lead = arr.shape[:-1]
    label = _check_labels(y, lead, arr.shape[-1], "y")
    step = _check_c(c, lead)
    pi_new, _ = _tilted_step(arr, label, step, sign=-1.0)
    skipped = ~(arr > 0) | _one_hot(label, arr.shape[-1])  # (..., V): y and zero-mass labels
    with np.errstate(divide="ignore", invalid="ignore"):
        log_change = np.log(pi_new) - np.log(arr)  # (..., V)
    # Skipped labels go first with change +inf; from poor to rich the relative change may then only go down.
    order = np.argsort(np.where(skipped, -1.0, arr), axis=-1, kind="stable")  # (..., V)
    ordered = np.take_along_axis(np.where(skipped, np.inf, log_change), order, axis=-1)  # (..., V)
    steps_down = np.diff(ordered, axis=-1)  # (..., V - 1); inf - inf = NaN between skipped labels
    rich_lose_most = np.all(np.isnan(steps_down) | (steps_down <= atol), axis=-1)
    richest = _best_other(arr, label)
    return PositiveContrast(
        y=label, y_increases=_take(pi_new, label) > _take(arr, label), rich_lose_most=rich_lose_most,
        richest_other=richest, log_change_richest_other=_take(log_change, richest),
    )


# ----------------------------------------------------------------------------------------------- distributions


def temper(pi: Any, temperature: float) -> np.ndarray:
    """Return pi^(1/T) renormalised on the last axis: T < 1 makes pi peakier, T > 1 flatter. Shape (..., V)."""
    arr = _check_pi(pi)
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a finite value > 0, got {temperature!r}")
    with np.errstate(divide="ignore"):
        logits = np.log(arr) / temperature  # (..., V)
    logits -= logits.max(axis=-1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=-1, keepdims=True)


def random_distribution(rng: np.random.Generator, num_classes: int, *, temperature: float = 1.0,
                        size: tuple[int, ...] = ()) -> np.ndarray:
    """Draw Softmax(g / T) with g ~ N(0, I): small T gives peaky, large T flat distributions. Shape (*size, V)."""
    if num_classes < 2:
        raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a finite value > 0, got {temperature!r}")
    logits = rng.standard_normal((*size, num_classes)) / temperature  # (*size, V)
    logits -= logits.max(axis=-1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=-1, keepdims=True)


def peaky_distribution(rng: np.random.Generator, num_classes: int, peak_mass: float, *, peak: int = 0,
                       tail_concentration: float = 1.0) -> np.ndarray:
    """Return a (V,) distribution with ``peak_mass`` on ``peak`` and a Dirichlet-shaped tail on the other labels.

    Args:
        rng: the random generator (passed in; nothing is seeded here).
        num_classes: V >= 2.
        peak_mass: probability of the peak, in (0, 1).
        peak: index of the peak label.
        tail_concentration: Dirichlet concentration of the tail (small: a few labels hold the tail).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
    if not 0 < peak_mass < 1:
        raise ValueError(f"peak_mass: expected a value in (0, 1), got {peak_mass!r}")
    if not 0 <= peak < num_classes:
        raise ValueError(f"peak: expected a label in [0, {num_classes}), got {peak}")
    if not tail_concentration > 0:
        raise ValueError(f"tail_concentration: expected > 0, got {tail_concentration!r}")
    tail = rng.dirichlet(np.full(num_classes - 1, tail_concentration))  # (V - 1,)
    return np.insert((1.0 - peak_mass) * tail, peak, peak_mass)
