"""digits-influence: the IDX reader, measured vs -eta A K G influence maps, the pair ranking, determinism."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from toykit.experiments import digits_influence, run_experiment
from toykit.experiments.digits_influence import NUM_CLASSES, Config, coupled_pairs, load_images, read_idx, run

# Both models, few steps, float64: the first-order prediction is compared with the real step, not rounding noise.
SMALL = dict(num_train=60, probes_per_class=2, steps=30, hidden=16, channels=4, dtype="float64")


def _write_idx(path, array: np.ndarray, code: int, compress: bool = False) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    raw = header + big_endian.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("dtype, code", [(np.uint8, 0x08), (np.int16, 0x0B), (np.float64, 0x0E)])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips(tmp_path, dtype, code, compress):
    array = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * 7 % 251).astype(dtype)
    path = tmp_path / ("x-idx3-ubyte" + (".gz" if compress else ""))
    _write_idx(path, array, code, compress)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, array)


def test_read_idx_refuses_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    _write_idx(short, np.zeros(5, np.uint8), 0x08)
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(ValueError, match="does not match header shape"):
        read_idx(short)


def _tiny_mnist(folder, per_class: int = 4, side: int = 8):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(NUM_CLASSES), per_class).astype(np.uint8)
    images = rng.integers(0, 256, size=(len(labels), side, side)).astype(np.uint8)
    _write_idx(folder / "train-images-idx3-ubyte", images, 0x08)
    _write_idx(folder / "train-labels-idx1-ubyte.gz", labels, 0x08, compress=True)  # mixed spellings on purpose
    return images, labels


def test_mnist_folder_is_read_and_trained_on(tmp_path):
    images, labels = _tiny_mnist(tmp_path)
    x, y = load_images(str(tmp_path))
    np.testing.assert_allclose(x, images / 255.0)
    np.testing.assert_array_equal(y, labels)
    result = run(Config(data_dir=str(tmp_path), models=("mlp",), num_train=20, probes_per_class=1, steps=3))
    assert result.summary["data"] == "mnist-idx"
    assert result.influence["mlp"].measured_pull.shape == (NUM_CLASSES, NUM_CLASSES)


def test_missing_mnist_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="no train-images-idx3-ubyte"):
        load_images(str(tmp_path))


@pytest.fixture(scope="module")
def small_result():
    return run(Config(**SMALL))


def test_predicted_influence_agrees_with_the_real_step(small_result):
    # Proposition 1 leaves an O(eta^2) remainder; at eta = 0.1 on these tiny nets the measured step correlations are
    # about 0.99. 0.9 leaves room for the remainder while a wrong A, K or G (a sign, a transpose, a missing
    # pi term) drives the correlation to ~0 or below.
    for kind, rec in small_result.influence.items():
        assert np.all(np.isfinite(rec.step_pearson))
        assert np.median(rec.step_pearson) > 0.9, kind
        assert small_result.summary[kind]["map_pearson_pull"] > 0.9, kind
        assert small_result.summary[kind]["map_pearson_true"] > 0.9, kind


def test_learning_a_class_raises_that_label_most_on_its_own_class(small_result):
    # The diagonal of the pull map is where K(x_o, x_u) is largest, same-class images looking alike; early in
    # training a shared offset dominates, so only the average over classes is asserted, not every class.
    for kind, rec in small_result.influence.items():
        m = rec.measured_pull
        off = m[~np.eye(NUM_CLASSES, dtype=bool)].reshape(NUM_CLASSES, NUM_CLASSES - 1)
        trained = np.unique(small_result.train_classes)
        assert np.mean(np.diag(m)[trained] - off.mean(1)[trained]) > 0, kind


def test_coupled_pairs_finds_a_planted_pair():
    rng = np.random.default_rng(0)
    m = rng.normal(0, 0.1, (NUM_CLASSES, NUM_CLASSES)) + 5.0  # a shared offset that must not matter
    m[4, 9] += 3.0
    m[9, 4] += 2.0
    m[3, 5] -= 4.0
    most, least = coupled_pairs(m, top=2)
    assert most[0]["pair"] == "4-9"
    assert least[0]["pair"] == "3-5"
    assert most[0]["coupling"] > most[1]["coupling"]


def test_same_seed_gives_identical_metrics(tmp_path, undrawn_figures):
    cfg = Config(models=("mlp",), num_train=30, probes_per_class=1, steps=5, hidden=8)
    _, first = run_experiment("digits-influence", cfg, out_dir=tmp_path / "a")
    undrawn_figures(digits_influence)  # the other runs' numbers only
    _, second = run_experiment("digits-influence", cfg, out_dir=tmp_path / "b")
    _, other = run_experiment("digits-influence", Config(**{**cfg.__dict__, "seed": 1}), out_dir=tmp_path / "c")
    assert (first / "metrics.jsonl").read_bytes() == (second / "metrics.jsonl").read_bytes()
    assert (first / "summary.json").read_bytes() == (second / "summary.json").read_bytes()
    assert (first / "metrics.jsonl").read_bytes() != (other / "metrics.jsonl").read_bytes()
    assert (first / "influence.png").is_file() and (first / "maps.npz").is_file()


@pytest.mark.parametrize("kwargs, message", [
    ({"eta": -0.1}, "eta must be a finite number > 0"),
    ({"models": ("mlp", "resnet")}, "models must be one of"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"models": ()}, "at least one"),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Config(**kwargs)


def test_prediction_error_shrinks_with_eta():
    # The remainder of Proposition 1 is O(eta^2) against an O(eta) signal: a 5x smaller step must bring the
    # per-step correlation closer to 1 (a bug in A, K or G would leave an eta-independent error).
    small_cfg = dict(models=("mlp",), num_train=30, probes_per_class=2, steps=15, hidden=16, dtype="float64")
    coarse = run(Config(eta=0.2, **small_cfg)).influence["mlp"].step_pearson
    fine = run(Config(eta=0.04, **small_cfg)).influence["mlp"].step_pearson
    assert np.median(1 - fine) < 0.5 * np.median(1 - coarse)
    assert np.median(fine) > 0.99
