"""The engine's forward-mode passes (llm.linearize, the forecast's LinearisedLM) from overlapping threads.

torch's forward-AD levels are process-wide; both take toykit.forward_ad's lock, so threads running them at once
(as overlapping Streamlit reruns would) get the serial results.
"""

import torch

from llm.encoding import collate, encode_sequence
from llm.forecast import LinearisedLM
from llm.linearize import directional_changes
from tests.toykit.test_forward_ad_threads import _in_threads


def test_directional_changes_and_the_linearised_model_in_overlapping_threads_match_serial(gpt2, tokenizer, pairs,
                                                                                           policy):
    gpt2.eval()
    batch = collate([encode_sequence(tokenizer, p.prompt, p.chosen, policy) for p in pairs[:4]],
                    tokenizer.pad_token_id)
    params = {n: p.detach() for n, p in gpt2.named_parameters()}
    torch.manual_seed(0)
    directions = [{n: 1e-3 * torch.randn_like(p) for n, p in params.items()} for _ in range(2)]
    lin = LinearisedLM(gpt2)
    with torch.no_grad():
        for t in lin.theta:
            t.add_(1e-3 * torch.randn_like(t))  # away from theta_0: the forward-mode branch runs

    def both(_):
        with torch.no_grad():
            changes = directional_changes(gpt2, params, batch, directions)[1]
            logits = lin(batch.input_ids, attention_mask=batch.attention_mask).logits
        return changes, logits

    serial = both(0)
    for _ in range(3):
        for changes, logits in _in_threads(both, [0, 1, 2, 3]):
            torch.testing.assert_close(changes, serial[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(logits, serial[1], rtol=1e-5, atol=1e-6)
