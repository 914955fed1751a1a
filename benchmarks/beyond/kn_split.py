"""Kneser-Ney bigram/trigram perplexities on a run's split, with the tokenizer that run saved (the SAFFU's tokens
and blocks). `python benchmarks/beyond/kn_split.py TOKENIZER_DIR CONFIG.yaml [train/validation/test files]`."""

import json
import sys

from transformers import AutoTokenizer

from hf_saffu.data import load_text_datasets, tokenize_and_pack
from hf_saffu.train import parse_arguments
from training.kneser_ney import KneserNeyLM

tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
_, data_args, _ = parse_arguments([sys.argv[2], "--output_dir", "/tmp/kn_unused", *sys.argv[3:]])
packed = tokenize_and_pack(load_text_datasets(data_args), tokenizer, data_args)
columns = {split: packed[split].with_format("torch")[:] for split in packed}
results = {}
for order in (2, 3):
    model = KneserNeyLM(order, len(tokenizer)).fit(columns["train"]["input_ids"], columns["train"]["attention_mask"])
    for split in ("validation", "test"):
        if split in columns:
            batch = columns[split]
            results[f"kn{order}_{split}"] = model.perplexity(batch["input_ids"], batch["attention_mask"])
print(json.dumps(results, indent=2))
