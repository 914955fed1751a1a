"""Out-of-domain perplexity of saved models on one text file (one document a non-blank line), packed into 128-token
blocks with each model's own tokenizer as the long-budget benchmark packs its out-of-domain set
(`training.long_budget.ood_blocks`).

usage: python benchmarks/beyond/ood.py FILE MODEL_DIR [MODEL_DIR ...]
"""

import math
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from hf_saffu.modeling_saffu import SaffuForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: training/
from training.long_budget import ood_blocks


@torch.no_grad()
def ood_perplexity(path: Path, model_dir: str) -> tuple[float, int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = SaffuForCausalLM.from_pretrained(model_dir).eval()
    blocks = ood_blocks(path, tokenizer, 128)
    total, count = 0.0, 0
    for start in range(0, len(blocks), 64):
        batch = blocks[start : start + 64]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        log_probs = torch.log_softmax(logits.double(), -1)[keep].gather(1, targets[keep][:, None])
        total, count = total - log_probs.sum().item(), count + int(keep.sum())
    return math.exp(total / count), count


if __name__ == "__main__":
    for model_dir in sys.argv[2:]:
        perplexity, tokens = ood_perplexity(Path(sys.argv[1]), model_dir)
        print(f"{model_dir}: out-of-domain perplexity {perplexity:.1f} over {tokens} tokens", flush=True)
