"""llm: real SFT/DPO finetuning of Hugging Face causal LMs with learning-dynamics probes."""
