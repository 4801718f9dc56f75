"""A token-level view of a phase: per-token change of log pi along chosen probes, and where the mass went.

For the first ``n`` probe prompts and one probe type (default y+), each response position gets log pi of its token
before and after the phase (teacher forcing), the change, and the tokens whose probability gained the most there
(top gainers: largest pi_after(v) - pi_before(v)). Shared by SFT/DPO runs (``llm.training``) and RL runs
(``llm.rl``) through ``--token-view N``; written to ``token_view.json`` in the run directory.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from llm.encoding import encode_record

__all__ = ["TOKEN_VIEW_FILE", "token_view", "load_token_view", "token_view_rows", "TokenViewHook"]

TOKEN_VIEW_FILE = "token_view.json"


@torch.no_grad()
def _position_probs(model, ids: list[int], n_prompt: int) -> torch.Tensor:
    """Softmax at every position that predicts a response token, (M, V) float32."""
    logits = model(input_ids=torch.tensor([ids], device=next(model.parameters()).device)).logits[0]  # (L, V)
    return torch.softmax(logits[n_prompt - 1:len(ids) - 1].float(), -1).cpu()


def token_view(model_before, model_after, tokenizer, probes, policy, *, probe_type: str = "chosen", n: int = 4,
               top_k: int = 3) -> dict[str, Any]:
    """Return the token view of ``n`` probes of ``probe_type`` between two models (module docstring).

    Math: Delta log pi(y_m | x, y_<m) = log pi_after - log pi_before per position m; gainers: top_k of
    pi_after(v | x, y_<m) - pi_before(v | x, y_<m) over v.
    """
    if probe_type not in probes.responses:
        raise ValueError(f"token view: probe type {probe_type!r} is not in the probe set ({list(probes.responses)})")
    out = []
    for i in range(min(n, len(probes))):
        response = probes.responses[probe_type][i]
        if response is None:
            continue
        (seq,) = encode_record(tokenizer, probes.prompts[i], (response,), policy, f"token view probe {i}")
        ids = list(seq.prompt_ids) + list(seq.response_ids)
        before = _position_probs(model_before, ids, len(seq.prompt_ids))  # (M, V)
        after = _position_probs(model_after, ids, len(seq.prompt_ids))
        gain = after - before  # (M, V)
        positions = []
        for m, tok_id in enumerate(seq.response_ids):
            top = torch.topk(gain[m], top_k)
            positions.append({"token": tokenizer.decode([tok_id]), "logp_before": float(torch.log(before[m, tok_id])),
                              "logp_after": float(torch.log(after[m, tok_id])),
                              "delta_logp": float(torch.log(after[m, tok_id]) - torch.log(before[m, tok_id])),
                              "top_gainers": [{"token": tokenizer.decode([int(v)]), "delta_p": float(d)}
                                              for d, v in zip(top.values, top.indices)]})
        out.append({"probe": i, "prompt": probes.prompts[i], "response": response, "positions": positions})
    return {"probe_type": probe_type, "top_k": top_k, "probes": out}


def load_token_view(run_dir: str | Path) -> dict[str, Any] | None:
    """Read a run's token_view.json, or None when the run has none."""
    path = Path(run_dir) / TOKEN_VIEW_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def token_view_rows(view: dict[str, Any], probe: int) -> list[dict[str, Any]]:
    """Rows for a table of one probe: position, token, log pi before/after, change, top gainers as text."""
    [entry] = [p for p in view["probes"] if p["probe"] == probe]
    return [{"position": m, "token": pos["token"], "logp_before": round(pos["logp_before"], 4),
             "logp_after": round(pos["logp_after"], 4), "delta_logp": round(pos["delta_logp"], 4),
             "top_gainers": ", ".join(f"{g['token']!r} {g['delta_p']:+.3f}" for g in pos["top_gainers"])}
            for m, pos in enumerate(entry["positions"])]


class TokenViewHook:
    """A run hook (llm.hooks) that writes ``token_view.json`` at the end: the run's start vs its final model.

    The start model's weights are saved once (``token_view_start.pt``), so a resumed run compares with the same start.
    """

    def __init__(self, num_probes: int, probe_type: str = "chosen"):
        self.num_probes, self.probe_type, self.start = num_probes, probe_type, None

    def on_train_begin(self, run) -> None:
        from llm.checkpoint import load_tensors, save_tensors

        path = Path(run.run_dir) / "token_view_start.pt"
        self.start = copy.deepcopy(run.model).eval().requires_grad_(False)
        if path.exists():
            self.start.load_state_dict(load_tensors(path, map_location=next(run.model.parameters()).device))
        else:
            save_tensors(run.model.state_dict(), path)

    def on_train_end(self, run) -> None:
        from toykit.runs import write_json

        was_training = run.model.training
        run.model.eval()
        view = token_view(self.start, run.model, run.tokenizer, run.probes, run.policy, probe_type=self.probe_type,
                          n=self.num_probes)
        run.model.train(was_training)
        write_json(Path(run.run_dir) / TOKEN_VIEW_FILE, view)
