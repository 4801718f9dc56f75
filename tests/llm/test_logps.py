"""llm.logps: batched sequence log-probs and response statistics against naive per-token loops."""

import math

import torch

from llm.encoding import collate, encode_sequence
from llm.logps import encoded_logps, greedy_decode, greedy_statistics, logps_from_logits, response_statistics


def _naive(model, seq, norms=False):
    """Per-token loop: one unpadded forward per prefix, float64 softmax (||A||_F built densely when ``norms``)."""
    ids = list(seq.prompt_ids + seq.response_ids)
    values, argmax, entropy, a_norm = [], [], [], []
    extra = {"peakiness": [], "top1_share": [], "valley_share": []}
    for pos in range(len(seq.prompt_ids), len(ids)):
        with torch.no_grad():
            z = model(input_ids=torch.tensor([ids[:pos]])).logits[0, -1].double()
        pi = torch.softmax(z, -1)
        values.append(math.log(pi[ids[pos]]))
        argmax.append(math.log(pi.max()))
        entropy.append(float(-(pi * pi.log()).sum()))
        extra["peakiness"].append(sum(float(p) ** 2 for p in pi))
        extra["top1_share"].append(float(int(pi.argmax()) == ids[pos]))
        extra["valley_share"].append(float(float(pi[ids[pos]]) < 1.0 / len(pi)))
        if not norms:
            continue
        eye = torch.eye(len(pi), dtype=torch.float64)
        a_norm.append(float(torch.linalg.matrix_norm(eye - torch.outer(torch.ones_like(pi), pi))))
    return values, argmax, entropy, a_norm, extra


def test_sequence_logps_equals_a_per_token_loop(gpt2, tokenizer, pairs, policy):
    gpt2.eval()
    seqs = [encode_sequence(tokenizer, p.prompt, r, policy) for p in pairs[:3] for r in (p.chosen, p.rejected)]
    with torch.no_grad():
        got = encoded_logps(gpt2, collate(seqs, tokenizer.pad_token_id))
    for n, seq in enumerate(seqs):
        values, *_ = _naive(gpt2, seq)
        assert got.lengths[n] == len(values) == len(seq.response_ids)
        assert math.isclose(float(got.summed[n]), sum(values), rel_tol=1e-5)
        assert math.isclose(float(got.mean[n]), sum(values) / len(values), rel_tol=1e-5)
        nonzero = got.token_logps[n][got.token_logps[n] != 0].tolist()
        assert torch.allclose(torch.tensor(nonzero, dtype=torch.float64), torch.tensor(values, dtype=torch.float64), atol=1e-5)


def test_response_statistics_equal_the_loop(gpt2, tokenizer, pairs, policy):
    gpt2.eval()
    seqs = [encode_sequence(tokenizer, p.prompt, p.chosen, policy) for p in pairs[:3]]
    batch = collate(seqs, tokenizer.pad_token_id)
    with torch.no_grad():
        stats = response_statistics(gpt2(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                    batch.input_ids, batch.response_mask)
    for n, seq in enumerate(seqs):
        values, argmax, entropy, a_norm, extra = _naive(gpt2, seq, norms=True)
        assert math.isclose(float(stats["argmax_logp_sum"][n]), sum(argmax), rel_tol=1e-5)
        assert float(stats["argmax_logp_sum"][n]) >= float(stats["logp_sum"][n])  # argmax dominates y+ per token
        assert math.isclose(float(stats["entropy"][n]), sum(entropy) / len(entropy), rel_tol=1e-4)
        assert math.isclose(float(stats["A_norm"][n]), sum(a_norm) / len(a_norm), rel_tol=1e-5)
        for name, per_token in extra.items():
            assert math.isclose(float(stats[name][n]), sum(per_token) / len(per_token), rel_tol=1e-4, abs_tol=1e-7), name


def _float64_statistics(logits, ids, mask):
    """Every per-token statistic in float64 straight from its definition (log_softmax, no shift trick)."""
    log_pi = torch.log_softmax(logits.double(), -1)[:, :-1]  # (N, L-1, V)
    pi, y, m = log_pi.exp(), ids[:, 1:, None], mask[:, 1:].bool()
    per_token = {"logp": log_pi.gather(-1, y)[..., 0], "argmax_logp": log_pi.max(-1).values,
                 "entropy": -(pi * log_pi).sum(-1), "peakiness": (pi * pi).sum(-1),
                 "top1_share": (log_pi.argmax(-1) == y[..., 0]).double()}
    lengths = m.sum(1)
    out = {k: (v * m).sum(1) for k, v in per_token.items()}
    return {"logp_sum": out["logp"], "argmax_logp_sum": out["argmax_logp"],
            **{k: out[k] / lengths for k in ("entropy", "peakiness", "top1_share")}}


def test_response_statistics_stay_exact_for_far_offset_logits_across_blocks(monkeypatch):
    # Real models' logits sit far from 0 (GPT-2's near -60): an entropy taken as lse - sum pi z without the shift
    # by max z loses ~1e-3 nats there; the block loop must also give the same numbers for any block size.
    import llm.logps as logps

    torch.manual_seed(0)
    logits = torch.randn(3, 9, 5000) * 3 - 60
    logits[..., :4] += 12  # a few likely tokens
    ids = torch.randint(0, 5000, (3, 9))
    ids[0, 3] = int(logits[0, 2].argmax())  # one scored token that is the argmax
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1, 1]])
    ref = _float64_statistics(logits, ids, mask)
    whole = response_statistics(logits, ids, mask)
    monkeypatch.setitem(logps.STAT_BLOCK_ELEMENTS, "cpu", 1)  # 16 positions a block: two blocks here
    blocks = response_statistics(logits, ids, mask)
    for name, want in ref.items():
        for got in (whole, blocks):
            assert torch.allclose(got[name].double(), want, atol=2e-5, rtol=1e-6), name
    assert float(whole["top1_share"][0]) > 0
    assert whole["logp_sum"].dtype == torch.float32


def test_bf16_logits_are_reduced_in_float32():
    torch.manual_seed(0)
    logits = (torch.randn(2, 5, 11) * 4).to(torch.bfloat16)
    ids = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    got = logps_from_logits(logits, ids, mask)
    ref = torch.log_softmax(logits.double(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
    assert got.summed.dtype == torch.float32
    assert torch.allclose(got.summed.double(), ref.sum(1), atol=1e-5)


def test_greedy_decoding_equals_a_naive_argmax_loop(gpt2, tokenizer, pairs, policy):
    gpt2.eval()
    seqs = [encode_sequence(tokenizer, p.prompt, p.chosen, policy) for p in pairs[:4]]
    decoded, lp = greedy_decode(gpt2, seqs, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)
    for n, seq in enumerate(seqs):
        ids, total, out = list(seq.prompt_ids), 0.0, []
        for _ in range(6):
            with torch.no_grad():
                log_pi = torch.log_softmax(gpt2(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
            tok = int(log_pi.argmax())
            total += float(log_pi[tok])
            out.append(tok)
            ids.append(tok)
            if tok == tokenizer.eos_token_id:
                break
        assert list(decoded[n].response_ids) == out
        assert math.isclose(float(lp.summed[n]), total, rel_tol=1e-5)


def test_greedy_decoding_may_stop_at_once_when_eos_is_the_argmax(gpt2, tokenizer, pairs, policy):
    # Free-running greedy means the argmax at every step, the first included: no forced minimum length.
    gpt2.eval()
    eos = tokenizer.eos_token_id
    boost = torch.zeros(gpt2.config.vocab_size)
    boost[eos] = 50.0
    hook = gpt2.get_output_embeddings().register_forward_hook(lambda module, args, out: out + boost)
    try:
        seqs = [encode_sequence(tokenizer, p.prompt, p.chosen, policy) for p in pairs[:3]]
        decoded, lp = greedy_decode(gpt2, seqs, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=eos)
    finally:
        hook.remove()
    assert [list(d.response_ids) for d in decoded] == [[eos]] * 3
    assert torch.all(lp.summed > -1e-3)  # log pi(eos) ~ 0 under the boost


def test_greedy_statistics_score_the_greedy_response_like_greedy_decode(gpt2, tokenizer, pairs, policy):
    gpt2.eval()
    seqs = [encode_sequence(tokenizer, p.prompt, p.chosen, policy) for p in pairs[:4]]
    decoded, lp = greedy_decode(gpt2, seqs, max_new_tokens=5, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)
    again, stats = greedy_statistics(gpt2, seqs, max_new_tokens=5, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
    assert again == decoded
    assert torch.allclose(stats["logp_sum"], lp.summed, atol=1e-5)
    # Along its own greedy response every target is the argmax, so the teacher-forced argmax is the response.
    assert torch.all(stats["top1_share"] == 1.0)
    assert torch.allclose(stats["argmax_logp_sum"], stats["logp_sum"], atol=1e-5)
    assert torch.all((stats["peakiness"] > 0) & (stats["peakiness"] <= 1))


def test_uniform_logits_give_the_uniform_statistics_and_every_target_ties_for_top1():
    logits = torch.full((1, 4, 7), -30.0)
    ids = torch.tensor([[0, 3, 6, 2]])
    stats = response_statistics(logits, ids, torch.tensor([[0, 1, 1, 1]]))
    assert math.isclose(float(stats["entropy"][0]), math.log(7), rel_tol=1e-6)
    assert math.isclose(float(stats["peakiness"][0]), 1 / 7, rel_tol=1e-6)
    assert math.isclose(float(stats["logp_sum"][0]), 3 * -math.log(7), rel_tol=1e-6)
    assert float(stats["top1_share"][0]) == 1.0  # every target attains the max (a tie counts)
