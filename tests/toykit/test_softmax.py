"""A = I - 1 pi^T against autograd, its identities, and distribution validation."""

import pytest
import torch

from toykit.softmax import check_distribution, log_softmax, log_softmax_jacobian, softmax


def _random_pi(V: int, seed: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = 3.0 * torch.randn(*batch, V, generator=g, dtype=torch.float64)
    return torch.softmax(z, dim=-1)


@pytest.mark.parametrize("V", [1, 2, 5, 17])
def test_A_equals_autograd_jacobian_of_log_softmax(V):
    z = torch.randn(V, generator=torch.Generator().manual_seed(V), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: torch.log_softmax(t, dim=-1), z)  # (V, V)
    A = log_softmax_jacobian(softmax(z))
    torch.testing.assert_close(A, jac, rtol=0, atol=1e-12)


@pytest.mark.parametrize("V", [2, 3, 10, 50])
def test_A_annihilates_ones_and_has_closed_form_frobenius_norm(V):
    pi = _random_pi(V, seed=V, batch=(4,))
    A = log_softmax_jacobian(pi)
    assert A.shape == (4, V, V)
    ones = torch.ones(V, dtype=torch.float64)
    torch.testing.assert_close(A @ ones, torch.zeros(4, V, dtype=torch.float64), rtol=0, atol=1e-13)
    frob2 = (A**2).sum(dim=(-2, -1))
    expected = V * (pi**2).sum(-1) + V - 2
    torch.testing.assert_close(frob2, expected, rtol=1e-12, atol=1e-12)


def test_A_maps_logit_change_to_first_order_log_prob_change():
    pi = _random_pi(6, seed=1)
    z = torch.log(pi)
    dz = 1e-6 * torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    delta = log_softmax(z + dz) - log_softmax(z)
    torch.testing.assert_close(log_softmax_jacobian(pi) @ dz, delta, rtol=1e-5, atol=1e-11)


def test_softmax_and_log_softmax_agree_and_normalise():
    z = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pi = softmax(z)
    torch.testing.assert_close(pi.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(log_softmax(z).exp(), pi, rtol=1e-13, atol=0)
    check_distribution(pi)


@pytest.mark.parametrize(
    "pi, match",
    [
        (torch.tensor([0.5, float("nan"), 0.5], dtype=torch.float64), "NaN"),
        (torch.tensor([[0.5, 0.5], [1.2, -0.2]], dtype=torch.float64), "negative.*row 1"),
        (torch.tensor([[0.5, 0.5], [0.3, 0.3]], dtype=torch.float64), "sum to 1.*row 1 sums to 0.6"),
        (torch.tensor(1.0, dtype=torch.float64), r"shape \(\.\.\., V\)"),
        (torch.tensor([1, 0]), "floating-point"),
    ],
)
def test_check_distribution_rejects_with_a_message_that_says_what_and_where(pi, match):
    with pytest.raises(ValueError, match=match):
        check_distribution(pi, name="pi_test")
    with pytest.raises(ValueError, match="pi_test"):
        check_distribution(pi, name="pi_test")


def test_A_and_softmax_refuse_bad_input():
    with pytest.raises(ValueError, match="log_softmax_jacobian"):
        log_softmax_jacobian(torch.tensor([0.7, 0.7], dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN/inf"):
        softmax(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN/inf"):
        log_softmax(torch.tensor([0.0, float("inf")]))
