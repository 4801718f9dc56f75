"""rewards/accuracies ignores float32 rounding noise while policy = reference, and counts real margins."""

import torch

from llm.objective import trl_metrics


def _parts(chosen, rejected, ref_chosen, ref_rejected):
    return {"logps_chosen": chosen, "logps_rejected": rejected, "ref_chosen": ref_chosen, "ref_rejected": ref_rejected}


def test_rounding_noise_at_policy_equals_reference_is_no_win():
    ref_c = torch.tensor([-40.6977, -35.25, -52.0, -8.5])
    ref_r = torch.tensor([-52.1179, -60.0, -41.0, -9.25])
    up = torch.nextafter(ref_c, torch.zeros_like(ref_c))  # one ULP towards 0: the other batching's rounding
    down = torch.nextafter(ref_r, torch.full_like(ref_r, -1e9))
    metrics = trl_metrics(torch.zeros(4), _parts(up, down, ref_c, ref_r), beta=0.1)
    assert metrics["rewards/margins"] > 0 and metrics["rewards/accuracies"] == 0.0


def test_real_margins_count():
    ref_c, ref_r = torch.tensor([-40.0, -30.0]), torch.tensor([-50.0, -20.0])
    metrics = trl_metrics(torch.zeros(2), _parts(ref_c + 0.01, ref_r - 0.01, ref_c, ref_r), beta=0.1)
    assert metrics["rewards/accuracies"] == 1.0
    metrics = trl_metrics(torch.zeros(2), _parts(ref_c - 0.5, ref_r, ref_c, ref_r), beta=0.1)
    assert metrics["rewards/accuracies"] == 0.0
