"""What the caches of the text being read add to a Kneser-Ney trigram (issue 24, BEYOND_COUNTING.md, fifteenth session).

usage: python benchmarks/beyond/cache_probe.py --data-dir BROWN [--window 128]

The long-budget benchmark's blocks (training/long_budget.py: the BPE of configs/brown.yaml, 128-token blocks) and its
interpolated Kneser-Ney trigram fitted on the training blocks; at every predicted token the caches of orders 1 and 2 of
the block's last --window tokens (`SaffuTokenCache` with uniform recency, as `long_budget.cache_log_probs` reads them).
Prints the trigram alone, mixed with the order-1 cache, and mixed with both (`long_budget.cached_mixture_nll`, the
SAFFU's nested rule with constant weights), the weights chosen on the validation split and scored on it and on the test
split.
"""

import argparse
import itertools
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: training/
from training import harness
from training.kneser_ney import KneserNeyLM
from training.long_budget import CACHE_WEIGHTS, cache_log_probs, cached_mixture_nll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=harness.DEFAULT_DATA_DIR)
    parser.add_argument("--window", type=int, default=128)
    args = parser.parse_args()
    recipe = harness.read_config()
    tokenizer, data = harness.load_data(harness.data_dir_or_exit(args.data_dir), recipe.vocab_size, recipe.block_size)
    train = data["train"][:]
    trigram = KneserNeyLM(3, len(tokenizer)).fit(train["input_ids"], train["attention_mask"])
    scored = {}
    for split in ("validation", "test"):
        blocks = data[split]
        counts = trigram.token_log_probs(blocks[:]["input_ids"], blocks[:]["attention_mask"])
        scored[split] = counts, [cache_log_probs(blocks, args.window, order) for order in (1, 2)]
    for orders in (0, 1, 2):
        kappas = min(itertools.product(*CACHE_WEIGHTS[:orders]), key=lambda k: nll(scored["validation"], orders, k))
        perplexities = ", ".join(
            f"{split} {math.exp(nll(terms, orders, kappas)):.2f}" for split, terms in scored.items()
        )
        print(
            f"Kneser-Ney trigram + {['no cache', 'the cache of order 1', 'the caches of orders 1-2'][orders]} (kappas "
            f"{list(kappas)}): "
            f"{perplexities}"
        )


def nll(scored: tuple, orders: int, kappas) -> float:
    """-mean ln p of the trigram mixed in turn with its first `orders` caches, at the weights `kappas`."""
    counts, caches = scored
    return float(cached_mixture_nll(counts, counts, caches[:orders], 0.0, kappas))


if __name__ == "__main__":
    main()
