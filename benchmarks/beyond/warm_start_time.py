"""CPU time of a training config's explicit warm start at several `warm_start_batch_size`s (docs/DESIGN.md, section 5,
"The passes' memory"): the same model warm-started in one process, one thread, once per batch size; prints the CPU
seconds (with the system time and page faults among them: on a VM whose fresh memory is slow to fault in, they can
double the warm start's CPU time, docs/DESIGN.md section 5), the seconds of each step (wall clock,
`WarmStartReport.seconds`) and the validation perplexity of the first --curve-blocks blocks (the same for every batch
size: the counts are sums). Then the CPU seconds of one epoch of GPT-2 2x128 (issue 24's target 5: the warm start
within 1/20 of it), from --gpt2-steps AdamW steps of 32 blocks (the long-budget benchmark's batch) after one untimed
step, and the ratio: timed in a fresh process, as the warm start is (the first thing its process does) and as a GPT-2
trains, and also in this process after the warm starts, whose freed memory makes its steps cheaper (fewer page
faults).

usage: python benchmarks/beyond/warm_start_time.py [--config configs/brown.yaml] [--data-dir BROWN]
       [--batch-sizes 64 32 16] [--gpt2-steps 30]
"""

import argparse
import dataclasses
import math
import multiprocessing
import resource
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: training/
from training import harness


def gpt2_epoch_seconds(tokenizer, train, block_size: int, steps: int, batch_size: int = 32) -> float:
    """CPU seconds of one epoch over `train` of GPT-2 2x128 (`harness.gpt2_model`, AdamW at 1e-3): the mean CPU
    seconds of `steps` steps of `batch_size` blocks times the steps of an epoch."""
    model = harness.gpt2_model(tokenizer, block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    blocks = train.with_format("torch", columns=["input_ids", "attention_mask", "labels"])

    def train_step(step: int) -> None:
        first = step * batch_size % len(blocks)
        model(**blocks[first : first + batch_size]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    train_step(0)  # untimed: it allocates the optimizer's state
    start = harness.CLOCK.now()
    for step in range(1, steps + 1):
        train_step(step)
    return (harness.CLOCK.now() - start) / steps * math.ceil(len(blocks) / batch_size)


def fresh_gpt2_epoch_seconds(data_dir: Path, vocab_size: int, block_size: int, seed: int, steps: int) -> float:
    """`gpt2_epoch_seconds` in this fresh process (one thread): the data read again, untimed."""
    torch.set_num_threads(1)
    tokenizer, data = harness.load_data(data_dir, vocab_size, block_size)
    set_seed(seed)
    return gpt2_epoch_seconds(tokenizer, data["train"], block_size, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=harness.DEFAULT_CONFIG)
    parser.add_argument("--data-dir", type=Path, default=None, help="the Brown split (default: ../shared/data/brown)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 32, 16])
    parser.add_argument("--curve-blocks", type=int, default=128)
    parser.add_argument("--gpt2-steps", type=int, default=30, help="0: no GPT-2 epoch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = harness.read_config(args.config)
    data_dir = harness.data_dir_or_exit(args.data_dir)
    tokenizer, data = harness.load_data(data_dir, recipe.vocab_size, recipe.block_size)
    warm_starts = []
    curve = data["validation"].select(range(min(args.curve_blocks, len(data["validation"]))))
    for batch_size in args.batch_sizes:
        sized = dataclasses.replace(recipe, model={**recipe.model, "warm_start_batch_size": batch_size})
        torch.manual_seed(sized.seed)
        model = harness.saffu_model(tokenizer, sized.model)
        before = resource.getrusage(resource.RUSAGE_SELF)
        seconds, report = harness.warm_start(model, data["train"])
        after = resource.getrusage(resource.RUSAGE_SELF)
        warm_starts.append(seconds)
        steps = ", ".join(f"{step} {value:.2f}" for step, value in report.seconds.items())
        print(
            f"warm_start_batch_size {batch_size}: {seconds:.2f} CPU-s ({after.ru_stime - before.ru_stime:.2f} of them "
            f"system time, {after.ru_minflt - before.ru_minflt:,} page faults); validation ({len(curve)} blocks) "
            f"{harness.perplexity(model, curve):.2f}; wall seconds per step: {steps}",
            flush=True,
        )
    if args.gpt2_steps:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=spawn) as fresh:
            setting = (data_dir, recipe.vocab_size, recipe.block_size, recipe.seed, args.gpt2_steps)
            epochs = {"a fresh process": fresh.submit(fresh_gpt2_epoch_seconds, *setting).result()}
        set_seed(recipe.seed)
        epochs["this process"] = gpt2_epoch_seconds(tokenizer, data["train"], recipe.block_size, args.gpt2_steps)
        for where, epoch in epochs.items():
            print(
                f"GPT-2 2x128 in {where}: {epoch:.1f} CPU-s an epoch ({args.gpt2_steps} steps timed); the fastest "
                f"warm start is {min(warm_starts) / epoch:.4f} of it (target 5: <= 1/20 = 0.05)",
                flush=True,
            )


if __name__ == "__main__":
    main()
