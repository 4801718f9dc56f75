"""The eNTK: Jacobian vs implicit (jvp of vjp) vs a per-example autograd loop, closed form, symmetry, PSD."""

import pytest
import torch
from torch import nn

from toykit.models import MLP, LinearSoftmax, SmallConvNet
from toykit.ntk import empirical_ntk, linear_softmax_ntk, ntk_matrix

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _BufferedNet(nn.Module):
    """A net with a buffer (input centring) and a frozen first layer: only the head is trainable."""

    def __init__(self, in_dim: int, num_classes: int, generator: torch.Generator):
        super().__init__()
        self.register_buffer("mean", torch.randn(in_dim, generator=generator, dtype=F64))
        self.frozen = nn.Linear(in_dim, 6).double()
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(6, num_classes).double()

    def forward(self, x):
        return self.head(torch.tanh(self.frozen(x - self.mean)))


def _models():
    g = _gen(0)
    return {
        "linear": (LinearSoftmax(5, 4, bias=True, generator=g).double(), (5,)),
        "mlp": (MLP(5, 7, 4, depth=3, generator=g).double(), (5,)),
        "conv": (SmallConvNet(1, side=6, num_classes=3, channels=2, generator=g).double(), (1, 6, 6)),
        "buffered": (_BufferedNet(5, 4, generator=g), (5,)),
    }


def _autograd_loop_ntk(model, x_o, x_u, preconditioner=None):
    """Reference: per-example Jacobians of the logits by plain autograd, one row at a time, then J_o P J_u^T."""
    params = [(k, p) for k, p in model.named_parameters() if p.requires_grad]

    def jac(x):  # (N, V, P)
        rows = []
        for xi in x:
            z = model(xi.unsqueeze(0)).squeeze(0)  # (V,)
            per_logit = []
            for v in range(z.shape[0]):
                grads = torch.autograd.grad(z[v], [p for _, p in params], retain_graph=True)
                per_logit.append(torch.cat([gr.flatten() for gr in grads]))
            rows.append(torch.stack(per_logit))
        return torch.stack(rows)

    scale = torch.ones(sum(p.numel() for _, p in params), dtype=F64)
    if preconditioner is not None:
        scale = torch.cat([preconditioner[k].flatten() for k, _ in params])
    return torch.einsum("avp,p,bwp->abvw", jac(x_o), scale, jac(x_u))  # (N_o, N_u, V, V)


@pytest.mark.parametrize("name", ["linear", "mlp", "conv", "buffered"])
def test_jacobian_implicit_and_autograd_loop_agree(name):
    model, shape = _models()[name]
    x_o = torch.randn(5, *shape, generator=_gen(1), dtype=F64)
    x_u = torch.randn(3, *shape, generator=_gen(2), dtype=F64)
    K_jac = empirical_ntk(model, x_o, x_u, method="jacobian")
    K_imp = empirical_ntk(model, x_o, x_u, method="implicit")
    K_ref = _autograd_loop_ntk(model, x_o, x_u)
    V = model(x_o).shape[1]
    assert K_jac.shape == (5, 3, V, V)
    torch.testing.assert_close(K_jac, K_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(K_imp, K_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["jacobian", "implicit"])
@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_chunked_equals_unchunked(method, chunk_size):
    model, shape = _models()["mlp"]
    x_o = torch.randn(5, *shape, generator=_gen(3), dtype=F64)
    x_u = torch.randn(3, *shape, generator=_gen(4), dtype=F64)
    full = empirical_ntk(model, x_o, x_u, method=method)
    torch.testing.assert_close(empirical_ntk(model, x_o, x_u, method=method, chunk_size=chunk_size), full,
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("bias", [False, True])
def test_linear_model_matches_closed_form(bias):
    model = LinearSoftmax(4, 6, bias=bias, generator=_gen(5)).double()
    x_o = torch.randn(4, 4, generator=_gen(6), dtype=F64)
    x_u = torch.randn(2, 4, generator=_gen(7), dtype=F64)
    closed = linear_softmax_ntk(x_o, x_u, 6, bias=bias)
    for method in ("jacobian", "implicit"):
        torch.testing.assert_close(empirical_ntk(model, x_o, x_u, method=method), closed, rtol=1e-12, atol=1e-12)
    # Without a bias the kernel is a multiple of the identity with the inner product as its scale.
    torch.testing.assert_close(closed[1, 0], (x_o[1] @ x_u[0] + float(bias)) * torch.eye(6, dtype=F64))


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_gram_is_symmetric_psd_and_kernel_swaps_with_transpose(name):
    model, shape = _models()[name]
    x = torch.randn(4, *shape, generator=_gen(8), dtype=F64)
    gram = ntk_matrix(empirical_ntk(model, x, x, method="implicit"))  # (N V, N V)
    torch.testing.assert_close(gram, gram.T, rtol=0, atol=1e-12)
    assert torch.linalg.eigvalsh(gram).min() >= -1e-10
    x_o, x_u = x[:3], torch.randn(2, *shape, generator=_gen(9), dtype=F64)
    K_ou = empirical_ntk(model, x_o, x_u)
    K_uo = empirical_ntk(model, x_u, x_o)
    torch.testing.assert_close(K_ou, K_uo.permute(1, 0, 3, 2), rtol=1e-12, atol=1e-13)


def test_preconditioned_kernel_matches_loop_and_identity_preconditioner_is_plain():
    model, shape = _models()["mlp"]
    x_o = torch.randn(3, *shape, generator=_gen(10), dtype=F64)
    x_u = torch.randn(2, *shape, generator=_gen(11), dtype=F64)
    g = _gen(12)
    P = {k: torch.rand(p.shape, generator=g, dtype=F64) + 0.1 for k, p in model.named_parameters()}
    K_ref = _autograd_loop_ntk(model, x_o, x_u, preconditioner=P)
    for method in ("jacobian", "implicit"):
        K = empirical_ntk(model, x_o, x_u, method=method, preconditioner=P, chunk_size=2)
        torch.testing.assert_close(K, K_ref, rtol=1e-10, atol=1e-12)
    ones = {k: torch.ones_like(p) for k, p in P.items()}
    torch.testing.assert_close(empirical_ntk(model, x_o, x_u, preconditioner=ones), empirical_ntk(model, x_o, x_u))
    # A non-uniform P really changes the kernel (so the test above is not vacuous).
    assert not torch.allclose(K_ref, empirical_ntk(model, x_o, x_u), rtol=1e-3)


def test_bad_input_raises_value_error_naming_the_problem():
    model, _ = _models()["mlp"]
    x = torch.randn(3, 5, dtype=F64)
    with pytest.raises(ValueError, match=r"per-example shape.*\(5,\).*\(4,\)"):
        empirical_ntk(model, x, torch.randn(2, 4, dtype=F64))
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="x_u.*NaN"):
        empirical_ntk(model, x, bad)
    with pytest.raises(ValueError, match="x_o.*batch of shape"):
        empirical_ntk(model, x[0], x)
    with pytest.raises(ValueError, match="dtype"):
        empirical_ntk(model, x.float(), x)
    with pytest.raises(ValueError, match="method"):
        empirical_ntk(model, x, x, method="exact")
    with pytest.raises(ValueError, match="chunk_size"):
        empirical_ntk(model, x, x, chunk_size=0)
    P = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    first = next(iter(P))
    with pytest.raises(ValueError, match=f"preconditioner.*{first}.*shape"):
        empirical_ntk(model, x, x, preconditioner={**P, first: torch.ones(2, dtype=F64)})
    with pytest.raises(ValueError, match="missing"):
        empirical_ntk(model, x, x, preconditioner={first: P[first]})
    with pytest.raises(ValueError, match=">= 0"):
        empirical_ntk(model, x, x, preconditioner={**P, first: -P[first]})
    with pytest.raises(ValueError, match="feature dims differ"):
        linear_softmax_ntk(x, torch.randn(2, 4, dtype=F64), 3)


def test_model_returning_non_matrix_logits_is_refused():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, dtype=F64))

        def forward(self, x):
            return x[:, :, None] * self.w  # (N, L, V): not (N, V)

    with pytest.raises(ValueError, match=r"logits \(N, V\)"):
        empirical_ntk(Seq(), torch.ones(2, 4, dtype=F64), torch.ones(2, 4, dtype=F64))
