"""CPU seconds of the leave-one-out corrections of one 32 x 128 Brown batch (one thread), for the warm-started
model in MODEL_DIR: `python benchmarks/beyond/prof.py MODEL_DIR BROWN_DIR` from the repository root."""

import sys
import time

import torch
from transformers import AutoTokenizer

from hf_saffu.data import load_text_datasets, tokenize_and_pack
from hf_saffu.leave_one_out import TableLeaveOneOut
from hf_saffu.modeling_saffu import SaffuForCausalLM, previous_tokens
from hf_saffu.train import parse_arguments

torch.set_num_threads(1)
model_dir, brown = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = SaffuForCausalLM.from_pretrained(model_dir)
files = ["--train_files", f"{brown}/train.txt", "--validation_files", f"{brown}/validation.txt"]
_, data_args, _ = parse_arguments(["configs/brown.yaml", "--output_dir", "/tmp/unused", *files])
train = tokenize_and_pack(load_text_datasets(data_args), tokenizer, data_args)["train"].with_format("torch")[:]
ids, mask, vocab = train["input_ids"], train["attention_mask"].bool(), len(tokenizer)
real = mask[:, :-2] & mask[:, 1:-1] & mask[:, 2:]
triples = (ids[:, :-2][real] * vocab + ids[:, 1:-1][real]) * vocab + ids[:, 2:][real]
start = time.process_time()
loo = TableLeaveOneOut(model, *torch.unique(triples, return_counts=True))
print("build", time.process_time() - start)
batch, labels = ids[:32], train["labels"][:32]
previous = previous_tokens(batch, train["attention_mask"][:32], None)
targets = torch.cat([labels[:, 1:], labels.new_full((32, 1), -100)], 1).reshape(-1)
start = time.process_time()
positions, _, _ = loo.corrections(batch.reshape(-1), previous.reshape(-1), targets)
print("corrections", time.process_time() - start, "entries", len(positions))
