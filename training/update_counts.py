"""What `hf-saffu update` loses against a warm start on all the text: it re-solves the pivot's tables from the
added counts, and leaves the parts solved from later passes (embeddings, contexts, head) as they were.

    python -m training.update_counts [--data-dir DIR] [--eval-blocks 600]

The training blocks are split in two halves, A (the first) and B. Arms, warm start only (the config's model,
default configs/brown.yaml): a warm start on A; the same updated with B's counts (`hf_saffu.counts`, the code
path of `hf-saffu update`); a warm start on A and B. Validation perplexity of each on the same validation blocks,
and the largest difference between the updated tables and those of the warm start on A and B (0 up to float
rounding: the tables are exact). Writes benchmarks/UPDATE.md and update.json.
"""

import argparse

import numpy as np
import torch

from hf_saffu.counts import combine, count_batches, solve_tables

from . import harness


def table_difference(model, reference) -> float:
    """The largest absolute difference between the two models' table tensors (inf when their shapes differ)."""
    largest = 0.0
    for name, tensor in reference.state_dict().items():
        if name.startswith(("pivot_bigrams.", "pivot_trigrams.")):
            other = model.state_dict()[name]
            if other.shape != tensor.shape:
                return float("inf")
            largest = max(largest, (other.double() - tensor.double()).abs().max().item())
    return largest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser)
    parser.add_argument("--eval-blocks", type=int, help="score a seeded random subset of the validation blocks")
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    recipe = harness.read_config(args.config)
    tokenizer, data = harness.load_data(harness.data_dir_or_exit(args.data_dir), recipe.vocab_size, recipe.block_size)
    validation = data["validation"]
    if args.eval_blocks is not None and args.eval_blocks < len(validation):
        rows = np.sort(np.random.default_rng(recipe.seed).permutation(len(validation))[: args.eval_blocks])
        validation = validation.select(rows)
    train = data["train"]
    half = len(train) // 2
    parts = {"A": train.select(range(half)), "B": train.select(range(half, len(train))), "A + B": train}
    results, models = [], {}
    for name, blocks, update in (
        ("A", "A", False),
        ("A, updated with B's counts", "A", True),
        ("A + B", "A + B", False),
    ):
        torch.manual_seed(recipe.seed)
        model = harness.saffu_model(tokenizer, recipe.model)
        seconds, report = harness.warm_start(model, parts[blocks])
        if update:
            batches = harness.warm_start_batches(parts["B"], None, recipe.warm_start_recipe.warm_start_batch_size)
            added = count_batches(model, batches, int(report.statistics["order"]))
            solve_tables(model, combine(report.statistics, added, 1))
        models[name] = model
        results.append(
            {
                "arm": name,
                "warm_start_tokens": report.tokens,
                "validation_perplexity": harness.perplexity(model, validation),
            }
        )
        print(results[-1], flush=True)
    difference = table_difference(models["A, updated with B's counts"], models["A + B"])
    rows = [[r["arm"], f"{r['warm_start_tokens']:,}", f"{r['validation_perplexity']:.2f}"] for r in results]
    lines = [
        f"- data: `{args.data_dir or harness.DEFAULT_DATA_DIR}`, {len(train)} training blocks: A = the first {half}, "
        f"B = the rest; {len(validation)} validation blocks; SAFFU: the model section of `{args.config.name}`, warm "
        "start only",
        f"- largest difference between the updated tables and those of the warm start on A + B: {difference:.3g}",
        "",
        *harness.markdown_table(["arm", "warm-start tokens", "validation perplexity"], rows),
        "",
        "The update re-solves the tables from the counts of A and B (exact); the embeddings, the contexts and the "
        "head stay those solved on A. The gap between the updated model and the warm start on A + B is what those "
        "parts would gain from B.",
    ]
    payload = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": results,
        "table_difference": difference,
    }
    out = args.output_dir
    harness.write_results(
        out / "UPDATE.md", out / "update.json", "Update: counts added against a warm start on all", lines, payload
    )
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
