"""Pretraining a small transformer from scratch on the synthetic world's corpus (before any finetuning phase)."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["pretrain"]


def pretrain(model, tokenizer, texts: Sequence[str], *, epochs: int, lr: float, batch_size: int, seed: int,
             device: torch.device, bf16: bool = False) -> list[float]:
    """Train ``model`` from scratch as a language model on ``texts`` (each ends with eos); return epoch losses.

    Math: minimise the mean next-token cross-entropy over all non-pad tokens (AdamW, 5% linear warm-up).
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    total = epochs * ((len(seqs) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)))
    model.to(device).train()
    losses = []
    for _ in range(epochs):
        order, total_loss = torch.randperm(len(seqs), generator=gen).tolist(), 0.0
        for start in range(0, len(order), batch_size):
            batch = [seqs[i] for i in order[start: start + batch_size]]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (N, L)
            attn = torch.zeros_like(ids)
            for n, s in enumerate(batch):
                ids[n, : len(s)], attn[n, : len(s)] = torch.tensor(s), 1
            labels = ids.masked_fill(attn == 0, -100)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
                loss = model(input_ids=ids.to(device), attention_mask=attn.to(device), labels=labels.to(device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(batch)
        losses.append(total_loss / len(seqs))
    model.eval()
    return losses
