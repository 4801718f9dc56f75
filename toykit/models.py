"""Toy logit models: torch modules mapping inputs (N, ...) to logits z of shape (N, V).

Each model acts on every example independently (no batch statistics), which the eNTK and Proposition 1 assume.
Activations are smooth (tanh) by default so that the O(eta^2) remainder of Proposition 1 is not spoiled by ReLU
kinks crossing zero within a step. Pass a ``torch.Generator`` to draw the initial weights reproducibly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LinearSoftmax", "MLP", "SmallConvNet"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "softplus": nn.Softplus}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation: unknown {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


@torch.no_grad()
def _reinit(module: nn.Module, generator: torch.Generator | None) -> None:
    """Redraw every parameter as U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from ``generator`` (PyTorch's default scale)."""
    if generator is None:
        return
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            fan_in = sub.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            for p in (sub.weight, sub.bias):
                if p is not None:
                    p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 * bound - bound)


def _check_input(x: torch.Tensor, trailing: tuple[int, ...], model: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != len(trailing) + 1 or tuple(x.shape[1:]) != trailing:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{model}: expected input of shape (N, {', '.join(map(str, trailing))}), got {got}")


class LinearSoftmax(nn.Module):
    """The linear softmax model of the paper's squeezing analysis: z = W x [+ b].

    Args:
        in_dim: feature dimension d of x.
        num_classes: V, the number of logits.
        bias: add a learned bias b.
        generator: optional RNG for the initial W (and b).

    Input (N, d) -> logits (N, V).
    References: Ren & Sutherland (2025), Section 3.3 and Appendix (linear softmax, z = W x).
    """

    def __init__(self, in_dim: int, num_classes: int, bias: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        self.in_dim = _positive_int(in_dim, "LinearSoftmax(in_dim)")
        self.num_classes = _positive_int(num_classes, "LinearSoftmax(num_classes)")
        self.linear = nn.Linear(in_dim, num_classes, bias=bias)
        _reinit(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, (self.in_dim,), "LinearSoftmax")
        return self.linear(x)  # (N, V)


class MLP(nn.Module):
    """A fully connected network with ``depth`` linear layers (``depth - 1`` hidden layers of width ``hidden``).

    Args:
        in_dim: input features.
        hidden: width of each hidden layer.
        num_classes: V.
        depth: number of linear layers, >= 1 (1 is a linear model with bias).
        activation: "tanh" (default, smooth), "relu", "gelu" or "softplus".
        generator: optional RNG for the initial weights.

    Input (N, in_dim) -> logits (N, V).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        num_classes: int,
        depth: int = 2,
        activation: str = "tanh",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.in_dim = _positive_int(in_dim, "MLP(in_dim)")
        _positive_int(hidden, "MLP(hidden)")
        self.num_classes = _positive_int(num_classes, "MLP(num_classes)")
        _positive_int(depth, "MLP(depth)")
        widths = [in_dim] + [hidden] * (depth - 1) + [num_classes]
        layers: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(w_in, w_out))
            if i < depth - 1:
                layers.append(_activation(activation))
        self.net = nn.Sequential(*layers)
        _reinit(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, (self.in_dim,), "MLP")
        return self.net(x)  # (N, V)


class SmallConvNet(nn.Module):
    """A LeNet-like net for side x side images: conv3x3 -> act -> conv3x3 (stride 2) -> act -> linear.

    Args:
        in_channels: image channels C.
        side: image height and width S (>= 4).
        num_classes: V.
        channels: feature maps of each conv layer.
        activation: "tanh" (default, smooth), "relu", "gelu" or "softplus".
        generator: optional RNG for the initial weights.

    Input (N, C, S, S), or flat (N, C*S*S) as in MNIST vectors -> logits (N, V).
    References: Ren & Sutherland (2025), Section 3.2 / Figure 1 (a small network on MNIST).
    """

    def __init__(
        self,
        in_channels: int = 1,
        side: int = 8,
        num_classes: int = 10,
        channels: int = 8,
        activation: str = "tanh",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "SmallConvNet(in_channels)")
        self.side = _positive_int(side, "SmallConvNet(side)")
        if side < 4:
            raise ValueError(f"SmallConvNet(side): expected >= 4, got {side}")
        self.num_classes = _positive_int(num_classes, "SmallConvNet(num_classes)")
        _positive_int(channels, "SmallConvNet(channels)")
        half = (side - 1) // 2 + 1  # output side of a stride-2, padding-1, 3x3 conv
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=3, padding=1),
            _activation(activation),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1),
            _activation(activation),
        )
        self.head = nn.Linear(channels * half * half, num_classes)
        _reinit(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = (self.in_channels, self.side, self.side)
        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == math.prod(image):
            x = x.reshape(x.shape[0], *image)  # (N, C, S, S)
        _check_input(x, image, "SmallConvNet")
        h = self.features(x)  # (N, channels, S/2, S/2)
        return self.head(h.flatten(1))  # (N, V)
