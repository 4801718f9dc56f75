"""llm.chat and llm.sources: TRL's conversational formats through a chat template; JSONL/JSON/Parquet/datasets data."""

import dataclasses
import json

import pytest

from llm.chat import add_chatml_template, pairs_from_chat_records, render_record
from llm.config import TrainConfig
from llm.encoding import TruncationPolicy, encode_record
from llm.inputs import build_inputs
from llm.sources import parse_columns, read_records
from llm.tokenization import train_bpe_tokenizer
from llm.training import train
from toykit.runs import read_metrics

_WORDS = "what is the capital of france paris is it lyon maybe tell me a joke no thanks why sure here one".split()


def _msg(role, text):
    return {"role": role, "content": text}


def _records(n=12):
    out = []
    for k in range(n):
        q = " ".join(_WORDS[(k + j) % len(_WORDS)] for j in range(4))
        out.append({"prompt": [_msg("system", "be brief"), _msg("user", q)],
                    "chosen": [_msg("assistant", f"{_WORDS[k % 7]} is {_WORDS[(k + 3) % 9]}")],
                    "rejected": [_msg("assistant", f"no {_WORDS[(k + 5) % 11]} maybe")]})
    return out


@pytest.fixture(scope="module")
def chat_tok():
    texts = [m["content"] for r in _records() for key in ("prompt", "chosen", "rejected") for m in r[key]]
    return add_chatml_template(train_bpe_tokenizer(texts + ["system user assistant"], vocab_size=320))


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_chat_encoding_equals_the_templates_own_rendering(chat_tok):
    rec = _records()[0]
    pair = render_record(chat_tok, rec, "rec")
    chosen, rejected = encode_record(chat_tok, pair.prompt, [pair.chosen, pair.rejected],
                                     TruncationPolicy(256, 256, append_eos=False))
    full = chat_tok.apply_chat_template(rec["prompt"] + rec["chosen"], tokenize=True)
    full = full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full
    prompt = chat_tok.apply_chat_template(rec["prompt"], tokenize=False, add_generation_prompt=True)
    assert list(chosen.prompt_ids) + list(chosen.response_ids) == list(full)
    assert list(chosen.prompt_ids) == _ids(chat_tok, prompt) and chosen.prompt_ids == rejected.prompt_ids
    assert chat_tok.convert_ids_to_tokens(list(chosen.response_ids))[-2:] == ["<|im_end|>", "\u010a"]


def test_response_tokens_are_those_trl_dpo_trains(chat_tok):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from llm.models import tiny_model

    recs = _records(4)
    args = trl.DPOConfig(output_dir="unused", per_device_train_batch_size=2, max_steps=1, report_to=[],
                         use_cpu=True, bf16=False, save_strategy="no", disable_tqdm=True)
    model = tiny_model("gpt2", len(chat_tok), seed=0)
    trainer = trl.DPOTrainer(model=model, ref_model=tiny_model("gpt2", len(chat_tok), seed=0), args=args,
                             train_dataset=datasets.Dataset.from_list(recs), processing_class=chat_tok)
    policy = TruncationPolicy(256, 256, append_eos=False)
    for k, rec in enumerate(recs):
        pair = render_record(chat_tok, rec, f"rec {k}")
        chosen, rejected = encode_record(chat_tok, pair.prompt, [pair.chosen, pair.rejected], policy)
        row = trainer.train_dataset[k]
        assert list(chosen.prompt_ids) == row["prompt_ids"]
        assert list(chosen.response_ids) == row["chosen_ids"] and list(rejected.response_ids) == row["rejected_ids"]


def test_sft_messages_response_is_the_completion_trl_sft_trains(chat_tok):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from llm.models import tiny_model

    recs = _records(3)
    messages = [{"messages": r["prompt"] + r["chosen"]} for r in recs]
    completions = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in recs]
    args = trl.SFTConfig(output_dir="unused", per_device_train_batch_size=2, max_steps=1, report_to=[],
                         use_cpu=True, bf16=False, save_strategy="no", disable_tqdm=True)
    trainer = trl.SFTTrainer(model=tiny_model("gpt2", len(chat_tok), seed=0), args=args,
                             train_dataset=datasets.Dataset.from_list(completions), processing_class=chat_tok)
    pairs = pairs_from_chat_records(list(enumerate(messages, 1)), chat_tok, "messages")
    for k, pair in enumerate(pairs):
        (seq,) = encode_record(chat_tok, pair.prompt, [pair.chosen], TruncationPolicy(256, 256, append_eos=False))
        row = trainer.train_dataset[k]
        assert list(seq.prompt_ids) + list(seq.response_ids) == row["input_ids"]
        assert [label for label in row["labels"] if label != -100] == list(seq.response_ids)  # the trained tokens
        assert pair.rejected == ""


def test_implicit_prompt_and_bad_records(chat_tok):
    rec = _records(1)[0]
    implicit = {"chosen": rec["prompt"] + rec["chosen"], "rejected": rec["prompt"] + rec["rejected"]}
    assert render_record(chat_tok, implicit, "r") == render_record(chat_tok, rec, "r")
    with pytest.raises(ValueError, match="data.jsonl:3: 'chosen' must be a non-empty list"):
        render_record(chat_tok, {"prompt": rec["prompt"], "chosen": "text", "rejected": rec["rejected"]},
                      "data.jsonl:3")
    with pytest.raises(ValueError, match="assistant message"):
        render_record(chat_tok, {"messages": [_msg("user", "hi")]}, "r")
    plain = train_bpe_tokenizer(["a b c"], vocab_size=300)
    with pytest.raises(ValueError, match="chat template"):
        pairs_from_chat_records([(1, rec)], plain, "r")


def _write_all(tmp_path, rows):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:2])}).save_to_disk(str(tmp_path / "dsdir"))


def test_every_local_source_reads_the_same_records(tmp_path):
    rows = [{"question": f"q{k}", "good": f" yes {k}", "bad": f" no {k}"} for k in range(5)]
    _write_all(tmp_path, rows)
    columns = parse_columns("prompt=question,chosen=good,rejected=bad")
    want = [(k + 1, {"prompt": f"q{k}", "chosen": f" yes {k}", "rejected": f" no {k}"}) for k in range(5)]
    for name in ("d.jsonl", "d.json", "d.parquet", "dsdir"):
        records, source = read_records(str(tmp_path / name), columns=columns)
        assert records == want, name
    assert len(read_records(str(tmp_path / "dsdir"), split="test")[0]) == 2
    with pytest.raises(ValueError, match=r"no split 'dev'; splits: \['test', 'train'\]"):
        read_records(str(tmp_path / "dsdir"), split="dev")
    with pytest.raises(ValueError, match=r"column\(s\) \['answer'\] that the data lacks"):
        read_records(str(tmp_path / "d.parquet"), columns=parse_columns("chosen=answer"))
    with pytest.raises(ValueError, match="NAME=COLUMN"):
        parse_columns("prompt")
    with pytest.raises(ValueError, match="does not exist"):
        read_records(str(tmp_path / "missing.parquet"))


def test_hub_name_offline_gives_one_clear_message(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(ValueError, match=r"cannot load dataset 'nobody/no-such-set' \(split 'train'\).*offline"):
        read_records("nobody/no-such-set")


def test_engine_trains_dpo_on_a_conversational_parquet_with_chat_probes(tmp_path, chat_tok):
    datasets = pytest.importorskip("datasets")
    recs = _records(12)
    datasets.Dataset.from_list(recs).to_parquet(str(tmp_path / "chat.parquet"))
    with open(tmp_path / "probes.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs[8:12])
    chat_tok.save_pretrained(str(tmp_path / "tok"))
    cfg = TrainConfig(loss="dpo", model="tiny-gpt2", tokenizer=str(tmp_path / "tok"), data=str(tmp_path / "chat.parquet"),
                      data_format="chat", held_out=2, num_probes=3, tiny_hidden=32, batch_size=4, epochs=1,
                      max_prompt_tokens=64, max_response_tokens=32, progress=False, save_model=False,
                      out_dir=str(tmp_path / "run"))
    inputs = build_inputs(cfg)
    assert inputs.train_pairs[0] == render_record(inputs.tokenizer, recs[0], "r")
    assert inputs.probes.prompts[0] == inputs.train_pairs[0].prompt and not inputs.policy.append_eos
    result = train(cfg)
    assert result.status == "completed"
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert {"chosen", "rejected"} <= {r["probe"] for r in rows if "probe" in r}
    separate = build_inputs(dataclasses.replace(cfg, probes=str(tmp_path / "probes.jsonl")))
    assert separate.probes.prompts[0] == render_record(chat_tok, recs[8], "p").prompt and len(separate.probes) == 3
