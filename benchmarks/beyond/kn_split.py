"""Kneser-Ney bigram/trigram perplexities on a run's split and blocks, with the tokenizer that run saved, or
(TOKENIZER_DIR "train") the one `hf-saffu train` trains for that config.
`python benchmarks/beyond/kn_split.py TOKENIZER_DIR CONFIG.yaml [--train_files ... (the data flags of the run)]`."""

import json
import sys

from transformers import AutoTokenizer

from hf_saffu.data import load_text_datasets, tokenize_and_pack
from hf_saffu.train import build_tokenizer, parse_arguments
from training.kneser_ney import KneserNeyLM

_, data_args, _ = parse_arguments([sys.argv[2], "--output_dir", "/tmp/kn_unused", *sys.argv[3:]])
raw = load_text_datasets(data_args)
tokenizer = build_tokenizer(data_args, raw) if sys.argv[1] == "train" else AutoTokenizer.from_pretrained(sys.argv[1])
packed = tokenize_and_pack(raw, tokenizer, data_args)
columns = {split: packed[split].with_format("torch")[:] for split in packed}
results = {}
for order in (2, 3):
    model = KneserNeyLM(order, len(tokenizer)).fit(columns["train"]["input_ids"], columns["train"]["attention_mask"])
    for split in ("validation", "test"):
        if split in columns:
            batch = columns[split]
            results[f"kn{order}_{split}"] = model.perplexity(batch["input_ids"], batch["attention_mask"])
print(json.dumps(results, indent=2))
