"""CPU time of a training config's explicit warm start at several `warm_start_batch_size`s (docs/DESIGN.md, section 5,
"The passes' memory"): the same model warm-started in one process, one thread, once per batch size; prints the CPU
seconds, the seconds of each step (wall clock, `WarmStartReport.seconds`) and the validation perplexity of the first
--curve-blocks blocks (the same for every batch size: the counts are sums).

usage: python benchmarks/beyond/warm_start_time.py [--config configs/brown.yaml] [--data-dir BROWN]
       [--batch-sizes 64 32 16]
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: training/
from training import harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=harness.DEFAULT_CONFIG)
    parser.add_argument("--data-dir", type=Path, default=None, help="the Brown split (default: ../shared/data/brown)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 32, 16])
    parser.add_argument("--curve-blocks", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = harness.read_config(args.config)
    tokenizer, data = harness.load_data(harness.data_dir_or_exit(args.data_dir), recipe.vocab_size, recipe.block_size)
    curve = data["validation"].select(range(min(args.curve_blocks, len(data["validation"]))))
    for batch_size in args.batch_sizes:
        sized = dataclasses.replace(recipe, warm_start_batch_size=batch_size)
        torch.manual_seed(sized.seed)
        model = harness.saffu_model(tokenizer, sized.model)
        seconds, report = harness.warm_start(model, data["train"], sized)
        steps = ", ".join(f"{step} {value:.2f}" for step, value in report.seconds.items())
        print(
            f"warm_start_batch_size {batch_size}: {seconds:.2f} CPU-s; validation ({len(curve)} blocks) "
            f"{harness.perplexity(model, curve):.2f}; wall seconds per step: {steps}",
            flush=True,
        )


if __name__ == "__main__":
    main()
