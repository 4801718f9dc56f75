"""Overlapping runs of the forward-mode-AD experiments from two threads (as Streamlit's overlapping reruns do).

torch's forward-AD levels are process-wide, so two threads inside torch.func.jvp at once used to fail with
"Trying to access a forward AD level with an invalid index"; toykit.forward_ad serialises the transforms.
"""

import threading

import numpy as np

from toykit.experiments import digits_influence, one_step


def _in_threads(fn, configs):
    results, errors = [None] * len(configs), []
    barrier = threading.Barrier(len(configs))

    def work(i):
        try:
            barrier.wait()
            results[i] = fn(configs[i])
        except Exception as err:  # noqa: BLE001 - the test reports whatever a thread raised
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"a thread raised: {errors[0]!r}"
    return results


def test_one_step_runs_overlapping_in_two_threads_match_serial_runs():
    configs = [one_step.Config(eta=eta, num_etas=12) for eta in (0.05, 0.1)] * 2
    for _ in range(3):
        results = _in_threads(one_step.run, configs)
    for cfg, result in zip(configs, results):
        serial = one_step.run(cfg)
        np.testing.assert_allclose(result.summary["correlation"], serial.summary["correlation"], rtol=1e-12)


def test_digits_runs_overlapping_in_two_threads_match_serial_runs():
    configs = [digits_influence.Config(models=("mlp",), steps=s, num_train=100) for s in (12, 13)]
    results = _in_threads(digits_influence.run, configs)
    for cfg, result in zip(configs, results):
        serial = digits_influence.run(cfg)
        np.testing.assert_allclose(result.summary["mlp"]["map_pearson_pull"], serial.summary["mlp"]["map_pearson_pull"],
                                   rtol=1e-10)
