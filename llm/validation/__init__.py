"""llm.validation: does the paper hold on a real transformer? The science, kept apart from the finetuning engine.

| module | what |
|---|---|
| ``world`` | the synthetic HH-like language world: corpus, preference pairs, every probe type of the paper |
| ``judge`` | the world's programmatic judge (the paper's GPT/Claude judges' stand-in; win rates, rewards) |
| ``prop1`` | Proposition 1 on a causal LM: the gradient inner product vs the measured one-step change |
| ``report`` | the pre-registered claims, their pass rules and the report |
| ``pipeline`` | pretrain -> SFT / extend -> off- and on-policy DPO over seeds; ``python -m llm validate`` |

The engine (``llm.training`` and below) never imports this package; this package imports the engine.
"""
