"""Figure 1: how learning one digit moves the predictions on every other digit, measured and predicted by A K G.

A small MLP and a small conv net (``toykit.models``) are trained with plain SGD, one example x_u per step, on
scikit-learn's bundled 8x8 digits (or MNIST read from a local IDX folder). At every step, on a fixed set of held-out
probe images x_o, we record

- the measured change Delta log pi(. | x_o) = log pi_{t+1}(. | x_o) - log pi_t(. | x_o) of the real SGD step, a
  V-vector per probe, and
- the first-order prediction -eta A(x_o) K(x_o, x_u) G(x_u, y_u) of Proposition 1 (A from ``toykit.softmax``,
  K from ``toykit.ntk``, G from ``toykit.residuals``, the loss from ``toykit.losses``).

Both are aggregated into 10 x 10 maps indexed by (class of x_u, class of x_o) and accumulated (summed) over
training. The "pull" map holds Delta log pi(y = y_u | x_o): learning a "4" raises the prediction "4" on inputs that
look like a 4 (the paper's "learning a 4 pulls up 9-like inputs"). Its symmetrised off-diagonal part ranks the
class pairs that couple most; we report what we measure, whatever it is.

References: Ren & Sutherland (2025), Proposition 1 and Figure 1.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from toykit.experiments._common import (check_at_least, check_choice, check_positive, new_figure, pearson,
                                        save_figure, write_metrics, write_summary)
from toykit.losses import compute_loss
from toykit.models import MLP, SmallConvNet
from toykit.ntk import empirical_ntk
from toykit.progress import report
from toykit.residuals import residual
from toykit.runs import atomic_path
from toykit.softmax import log_softmax, log_softmax_jacobian

NAME = "digits-influence"
DESCRIPTION = "Figure 1: per-step influence of learning one digit on the others, measured vs -eta A K G"

NUM_CLASSES = 10
MODEL_KINDS = ("mlp", "convnet")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ----------------------------------------------------------------------------------------------------------------------
# Data: IDX files (the MNIST format) and the bundled scikit-learn digits.

def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array.

    Format: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, one big-endian uint32 size per dimension, then the data, big-endian.

    Args:
        path: an ``*-idx?-ubyte`` file, or the same gzip-compressed (name ending in ``.gz``).

    Returns:
        An array of the stored shape, e.g. (N, 28, 28) uint8 images or (N,) uint8 labels.
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (expected two zero bytes at the start, got {raw[:2]!r})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02X}; expected one of "
                         f"{[f'0x{c:02X}' for c in _IDX_DTYPES]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header (needs {header} bytes, file has {len(raw)})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: size {len(raw)} bytes does not match header shape {shape} ({expected} bytes)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path:
    """Return the IDX file named like ``train-images-idx3-ubyte`` in any common spelling (``.`` or ``-``, ``.gz``)."""
    kind, part, idx = stem.split("-")
    for name in (f"{kind}-{part}-{idx}-ubyte", f"{kind}-{part}.{idx}-ubyte"):
        for suffix in ("", ".gz"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    raise ValueError(f"--data-dir {folder}: no {kind}-{part}-{idx}-ubyte file (plain or .gz) in this folder")


def load_images(data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Load images scaled to [0, 1] and their labels.

    Args:
        data_dir: a folder with MNIST's ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (plain or
            ``.gz``); ``None`` loads scikit-learn's bundled 8x8 digits (no download).

    Returns:
        images (N, S, S) float64 in [0, 1] and labels (N,) int64.
    """
    if data_dir is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images.astype(np.float64) / 16.0, digits.target.astype(np.int64)
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ValueError(f"data_dir {folder} is not a folder")
    images = read_idx(_find_idx(folder, "train-images-idx3"))
    labels = read_idx(_find_idx(folder, "train-labels-idx1"))
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"MNIST folder {folder}: images {images.shape} and labels {labels.shape} do not match")
    return images.astype(np.float64) / 255.0, labels.astype(np.int64)


def _split(labels: np.ndarray, num_train: int, probes_per_class: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """Pick disjoint index sets: a class-balanced probe set (sorted by class) and a random training subset."""
    probe_idx = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        if len(members) < probes_per_class:
            raise ValueError(f"class {c} has {len(members)} images, fewer than probes_per_class={probes_per_class}")
        probe_idx.append(rng.choice(members, size=probes_per_class, replace=False))
    probes = np.concatenate(probe_idx)
    rest = np.setdiff1d(np.arange(len(labels)), probes)
    if len(rest) < num_train:
        raise ValueError(f"num_train={num_train} exceeds the {len(rest)} images left after the probes")
    return probes, rng.choice(rest, size=num_train, replace=False)


# ----------------------------------------------------------------------------------------------------------------------
# Config and result.

@dataclass(frozen=True)
class Config:
    """Per-step influence of SGD on digits (the paper's Figure 1)."""

    data_dir: str | None = field(default=None, metadata={
        "help": "folder with MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, plain or .gz); "
                "empty uses scikit-learn's bundled 8x8 digits"})
    models: tuple[str, ...] = field(default=MODEL_KINDS, metadata={"help": f"models to train, from {MODEL_KINDS}"})
    num_train: int = field(default=300, metadata={"max": 70_000, "help": "training images (a random subset)"})
    probes_per_class: int = field(default=5, metadata={"max": 1_000, "help": "held-out probe images x_o per class"})
    steps: int = field(default=200, metadata={"max": 100_000, "help": "SGD steps, one training image x_u per step"})
    eta: float = field(default=0.1, metadata={"help": "SGD learning rate eta (Proposition 1 holds to O(eta^2))"})
    hidden: int = field(default=64, metadata={"max": 4_096, "help": "hidden width of the MLP"})
    channels: int = field(default=8, metadata={"max": 256, "help": "feature maps per conv layer of the conv net"})
    dtype: Literal["float64", "float32"] = field(default="float32", metadata={
        "help": "torch dtype of the models and the eNTK"})
    top_pairs: int = field(default=6, metadata={"max": 100, "help": "class pairs listed in the summary as most/least coupled"})
    seed: int = field(default=0, metadata={"help": "seed of the data split, the example order and the weights"})

    def __post_init__(self) -> None:
        if self.data_dir == "":
            object.__setattr__(self, "data_dir", None)
        if not self.models:
            raise ValueError(f"models must name at least one of {MODEL_KINDS}, got an empty list")
        for kind in self.models:
            check_choice("models", kind, MODEL_KINDS)
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a model twice: {list(self.models)}")
        for name, minimum in (("num_train", 1), ("probes_per_class", 1), ("steps", 1), ("hidden", 1),
                              ("channels", 1), ("top_pairs", 1)):
            check_at_least(name, getattr(self, name), minimum)
        check_positive("eta", self.eta)


@dataclass(frozen=True)
class ModelInfluence:
    """One model's influence record; maps are indexed [class of x_u, class of x_o], summed over steps.

    Attributes:
        measured_pull / predicted_pull: (10, 10) sum over steps of the probe-class mean of Delta log pi(y_u | x_o).
        measured_true / predicted_true: (10, 10) the same for Delta log pi(y_o | x_o), the probe's own label.
        step_pearson: (T,) per-step Pearson correlation of predicted vs measured Delta log pi, over all (N_o, V).
        loss: (T,) training loss -log pi(y_u | x_u) before each step.
        probe_accuracy: accuracy on the probes after training.
    """

    model: str
    measured_pull: np.ndarray
    predicted_pull: np.ndarray
    measured_true: np.ndarray
    predicted_true: np.ndarray
    step_pearson: np.ndarray
    loss: np.ndarray
    probe_accuracy: float


@dataclass(frozen=True)
class Result:
    config: Config
    image_side: int
    probe_labels: np.ndarray  # (N_o,)
    train_classes: np.ndarray  # (T,) class of x_u at each step
    influence: dict[str, ModelInfluence]
    summary: dict


# ----------------------------------------------------------------------------------------------------------------------
# The experiment.

def _build_model(kind: str, side: int, cfg: Config, generator: torch.Generator) -> torch.nn.Module:
    if kind == "mlp":
        return MLP(side * side, cfg.hidden, NUM_CLASSES, depth=2, generator=generator)
    return SmallConvNet(in_channels=1, side=side, num_classes=NUM_CLASSES, channels=cfg.channels, generator=generator)


def _class_map(delta: torch.Tensor, probe_labels: torch.Tensor) -> torch.Tensor:
    """Return the probe-class means of ``delta`` (N_o,) as a (10,) vector."""
    sums = torch.zeros(NUM_CLASSES, dtype=delta.dtype).index_add_(0, probe_labels, delta)
    counts = torch.bincount(probe_labels, minlength=NUM_CLASSES).to(delta.dtype)
    return sums / counts


#: a loss this large (pi(y_u | x_u) < e^-115, fifty times the uniform guess's log 10) means SGD diverged.
_DIVERGED_LOSS = 50 * math.log(10)


def _train_and_measure(model: torch.nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_probe: torch.Tensor,
                       y_probe: torch.Tensor, order: np.ndarray, eta: float, phase: str = "") -> dict[str, np.ndarray]:
    """Run SGD one example per step, recording measured and -eta A K G predicted Delta log pi on the probes."""
    dtype = x_probe.dtype
    maps = {k: torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=dtype)
            for k in ("measured_pull", "predicted_pull", "measured_true", "predicted_true")}
    step_pearson, losses = [], []
    probe_rows = torch.arange(len(y_probe))
    params = [p for p in model.parameters() if p.requires_grad]
    for done, i in enumerate(order):
        report(phase, done, len(order))
        x_u, y_u = x_train[i:i + 1], y_train[i:i + 1]  # (1, ...), (1,)
        with torch.no_grad():
            logp_o = log_softmax(model(x_probe))  # (N_o, V)
            z_u = model(x_u)  # (1, V)
        A = log_softmax_jacobian(logp_o.exp())  # (N_o, V, V)
        # jvp-of-vjp: V pullbacks through the single x_u, then pushes through the probes; J(x_o) is never built
        K = empirical_ntk(model, x_probe, x_u, method="implicit")[:, 0]  # (N_o, V, V) K(x_o, x_u)
        G = residual("sft", z_u, y_u).G[0]  # (V,)
        predicted = -eta * torch.einsum("nij,njk,k->ni", A, K, G)  # (N_o, V)

        logp_u = log_softmax(model(x_u))[0, y_u]  # (1,) log pi(y_u | x_u)
        loss = compute_loss("sft", chosen_logps=logp_u).sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(eta * g)
            measured = log_softmax(model(x_probe)) - logp_o  # (N_o, V) new minus old

        c_u = int(y_u)
        for kind, delta in (("measured", measured), ("predicted", predicted)):
            maps[f"{kind}_pull"][c_u] += _class_map(delta[:, c_u], y_probe)
            maps[f"{kind}_true"][c_u] += _class_map(delta[probe_rows, y_probe], y_probe)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > _DIVERGED_LOSS:
            raise ValueError(f"--eta {eta}: SGD diverged at step {len(losses) + 1} (loss -log pi(y_u | x_u) = "
                             f"{float(loss.detach()):.3g} nats); lower --eta")
        step_pearson.append(pearson(predicted.detach().numpy(), measured.numpy()))
        losses.append(float(loss.detach()))
    report(phase, len(order), len(order))
    with torch.no_grad():
        accuracy = float((model(x_probe).argmax(-1) == y_probe).to(dtype).mean())
    out = {k: v.detach().numpy() for k, v in maps.items()}
    out.update(step_pearson=np.array(step_pearson), loss=np.array(losses), probe_accuracy=accuracy)
    return out


def coupled_pairs(pull_map: np.ndarray, top: int) -> tuple[list[dict], list[dict]]:
    """Rank unordered class pairs by how much more learning one raises the other than the average class.

    Early in training learning any class raises its label on every input (a shared offset, mostly via the bias);
    each row is therefore centred on its off-diagonal mean before the two directions are averaged.

    Args:
        pull_map: (10, 10) accumulated Delta log pi(y_u | x_o), indexed [class of x_u, class of x_o].
        top: how many pairs to list at each end.

    Returns:
        (most coupled, least coupled): lists of ``{"pair": "a-b", "coupling": value}``, strongest first.

    Math: R[a, b] = M[a, b] - mean_{c != a} M[a, c];  coupling(a, b) = (R[a, b] + R[b, a]) / 2.
    """
    off = ~np.eye(NUM_CLASSES, dtype=bool)
    row_mean = (pull_map * off).sum(1, keepdims=True) / (NUM_CLASSES - 1)  # (10, 1)
    centred = pull_map - row_mean
    sym = (centred + centred.T) / 2
    pairs = [(float(sym[a, b]), a, b) for a in range(NUM_CLASSES) for b in range(a + 1, NUM_CLASSES)]
    pairs.sort(key=lambda item: (-item[0], item[1], item[2]))
    rows = [{"pair": f"{a}-{b}", "coupling": value} for value, a, b in pairs]
    return rows[:top], rows[::-1][:top]


def run(cfg: Config) -> Result:
    """Train each model with SGD and return the measured and predicted influence maps."""
    images, labels = load_images(cfg.data_dir)
    side = images.shape[1]
    rng = np.random.default_rng(cfg.seed)
    probe_idx, train_idx = _split(labels, cfg.num_train, cfg.probes_per_class, rng)
    order = rng.integers(0, cfg.num_train, size=cfg.steps)
    dtype = getattr(torch, cfg.dtype)
    flat = torch.as_tensor(images.reshape(len(images), side * side), dtype=dtype)  # (N, S*S)
    x_train, y_train = flat[train_idx], torch.as_tensor(labels[train_idx])
    x_probe, y_probe = flat[probe_idx], torch.as_tensor(labels[probe_idx])

    influence: dict[str, ModelInfluence] = {}
    summary: dict = {"data": "mnist-idx" if cfg.data_dir else "sklearn-digits-8x8", "image_side": side,
                     "num_probes": len(probe_idx), "influence_quantity":
                     "pull map: Delta log pi(y = class of x_u | x_o), summed over steps, mean over probes of a class"}
    for k, kind in enumerate(cfg.models):
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + k)
        model = _build_model(kind, side, cfg, generator).to(dtype)
        rec = _train_and_measure(model, x_train, y_train, x_probe, y_probe, order, cfg.eta,
                                 phase=f"{kind} ({k + 1} of {len(cfg.models)}): SGD steps with -eta A K G")
        influence[kind] = ModelInfluence(model=kind, **rec)
        most, least = coupled_pairs(rec["measured_pull"], cfg.top_pairs)
        summary[kind] = {
            "map_pearson_pull": pearson(rec["predicted_pull"], rec["measured_pull"]),
            "map_pearson_true": pearson(rec["predicted_true"], rec["measured_true"]),
            # Without the per-row offset (what the figure shows): a stricter test of the class structure.
            "map_pearson_pull_row_centred": pearson(
                rec["predicted_pull"] - rec["predicted_pull"].mean(1, keepdims=True),
                rec["measured_pull"] - rec["measured_pull"].mean(1, keepdims=True)),
            "step_pearson_mean": float(np.mean(rec["step_pearson"])),
            "step_pearson_min": float(np.min(rec["step_pearson"])),
            "probe_accuracy": rec["probe_accuracy"],
            "loss_first_50": float(np.mean(rec["loss"][:50])),
            "loss_last_50": float(np.mean(rec["loss"][-50:])),
            "most_coupled_pairs": most,
            "least_coupled_pairs": least,
        }
    return Result(config=cfg, image_side=side, probe_labels=labels[probe_idx], train_classes=y_train.numpy()[order],
                  influence=influence, summary=summary)


def save(result: Result, out_dir: Path) -> None:
    """Write metrics.jsonl (per-step loss and predicted-vs-measured correlation), summary.json, maps.npz, a figure."""
    rows = []
    for kind, rec in result.influence.items():
        for step, (loss, r) in enumerate(zip(rec.loss, rec.step_pearson)):
            rows.append({"step": step, "probe": kind, "metric": "train_loss", "value": float(loss)})
            rows.append({"step": step, "probe": kind, "metric": "step_pearson", "value": float(r)})
    write_metrics(out_dir, rows)
    write_summary(out_dir, result.summary)
    maps = {f"{kind}_{name}": getattr(rec, name) for kind, rec in result.influence.items()
            for name in ("measured_pull", "predicted_pull", "measured_true", "predicted_true")}
    with atomic_path(Path(out_dir) / "maps.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **maps)
    fig = plot(result)
    save_figure(fig, Path(out_dir) / "influence.png")


def plot(result: Result):
    """Draw, per model, the measured and predicted accumulated pull maps, row-centred (rows: x_u class, columns: x_o)."""
    kinds = list(result.influence)
    fig = new_figure(7.5, 3.4 * len(kinds))
    axes = fig.subplots(len(kinds), 2, squeeze=False)
    for row, kind in enumerate(kinds):
        rec = result.influence[kind]
        # Rows centred on their mean: the shared "raise this label everywhere" offset hides the class structure.
        measured = rec.measured_pull - rec.measured_pull.mean(1, keepdims=True)  # (10, 10)
        predicted = rec.predicted_pull - rec.predicted_pull.mean(1, keepdims=True)  # (10, 10)
        scale = float(np.abs(measured).max()) or 1.0
        for col, (title, grid) in enumerate((("measured", measured), ("predicted -eta A K G", predicted))):
            ax = axes[row, col]
            image = ax.imshow(grid, cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.set_title(f"{kind}: {title}", fontsize=9)
            ax.set_xticks(range(NUM_CLASSES))
            ax.set_yticks(range(NUM_CLASSES))
            ax.set_xlabel("class of observed x_o")
            ax.set_ylabel("class of updated x_u")
        fig.colorbar(image, ax=axes[row].tolist(), shrink=0.8,
                     label="sum_t Delta log pi(y_u | x_o), row-centred")
    r = ", ".join(f"{k}: r={result.summary[k]['map_pearson_pull']:.3f}" for k in kinds)
    fig.suptitle(f"Per-step influence accumulated over training ({r})", fontsize=10)
    return fig


def map_table(result: Result) -> list[dict]:
    """Tidy rows of the maps :func:`plot` draws: model, map (measured / predicted), x_u class, x_o class, value.

    Each row of a map is centred on its mean, as in the figure: the shared "raise this label everywhere" offset
    would hide the class structure.
    """
    rows = []
    for kind, rec in result.influence.items():
        for title, grid in (("measured", rec.measured_pull), ("predicted -eta A K G", rec.predicted_pull)):
            centred = grid - grid.mean(1, keepdims=True)  # (10, 10)
            rows.extend({"model": kind, "map": title, "x_u class": u, "x_o class": o, "value": float(centred[u, o])}
                        for u in range(NUM_CLASSES) for o in range(NUM_CLASSES))
    return rows
