"""What caps the SAFFU after long training: how far each model can fit a small training set.

Every arm trains by backprop alone (AdamW, cosine, the same CPU budget) on the first --blocks Brown training
blocks, many epochs over them, and is scored on those same blocks (the fit: how low a model can drive its
training perplexity) and on held-out validation blocks. A model that cannot fit 32k tokens is capped by its
architecture, not by data or training time. Arms: the SAFFU of the training config (default
configs/brown.yaml); the same with one part changed (--variants KEY=VALUE ...: each a SAFFU with that
model setting); GPT-2 2x128 and a GPT-2 of about the SAFFU's size (4 x 320).

    python -m training.capacity_probe [--blocks 256] [--budget-cpu-seconds 150] [--variants hidden_bits=256]

Writes benchmarks/CAPACITY_PROBE.md and capacity_probe.json.
"""

import argparse

import torch

from . import harness
from .long_budget import parse_setting


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser)
    parser.add_argument("--blocks", type=int, default=256, help="training blocks to fit")
    parser.add_argument("--held-out-blocks", type=int, default=256)
    parser.add_argument("--budget-cpu-seconds", type=float, default=150.0, help="per arm")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="every arm's (AdamW)")
    parser.add_argument("--variants", nargs="*", default=["hidden_bits=256"], metavar="KEY=VALUE")
    parser.add_argument("--gpt2-dims", type=int, nargs=2, default=[320, 5], metavar=("DIMS", "HEADS"))
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    recipe = harness.read_config(args.config)
    tokenizer, data = harness.load_data(harness.data_dir_or_exit(args.data_dir), recipe.vocab_size, recipe.block_size)
    fit = data["train"].select(range(min(args.blocks, len(data["train"]))))
    held_out = data["validation"].select(range(min(args.held_out_blocks, len(data["validation"]))))
    # train_with_budget scores "validation" and "test": here, the fitted blocks and the held-out ones
    probe = {"train": fit, "validation": fit, "test": held_out}
    budget = harness.Budget(args.budget_cpu_seconds, (), curve_blocks=len(fit), seed=recipe.seed)
    positions = recipe.block_size
    arms = {"SAFFU (config)": lambda: harness.saffu_model(tokenizer, recipe.model)}
    for item in args.variants:
        key, value = parse_setting(item)
        arms[f"SAFFU, {key}={value}"] = lambda key=key, value=value: harness.saffu_model(
            tokenizer, {**recipe.model, key: value}
        )
    arms["GPT-2 2x128"] = lambda: harness.gpt2_model(tokenizer, positions, 2, 128, 4)
    dims, heads = args.gpt2_dims
    arms[f"GPT-2 4x{dims}"] = lambda: harness.gpt2_model(tokenizer, positions, 4, dims, heads)
    results = []
    for name, build in arms.items():
        torch.manual_seed(recipe.seed)
        result = harness.train_with_budget(build(), probe, budget, args.learning_rate)
        results.append({"arm": name, **result})
        print(f"{name}: fit {result['validation_perplexity']:.1f}, held out {result['test_perplexity']:.1f}")
    rows = [
        [
            r["arm"],
            f"{r['parameters']:,}",
            f"{r['epochs']:.1f}",
            f"{r['validation_perplexity']:.1f}",
            f"{r['test_perplexity']:.1f}",
        ]
        for r in results
    ]
    lines = [
        f"- fit: the first {len(fit)} training blocks ({harness.real_tokens(fit):,} tokens); held out: the first "
        f"{len(held_out)} validation blocks; every arm by backprop alone, AdamW lr {args.learning_rate}, cosine, "
        f"{args.budget_cpu_seconds:g} CPU-s, batch 32, torch threads {args.threads}",
        f"- SAFFU: `{args.config.name}` model `{recipe.model}`",
        "",
        *harness.markdown_table(
            ["arm", "parameters", "epochs", "perplexity on the fitted blocks", "held-out perplexity"], rows
        ),
    ]
    payload = {"settings": vars(args), "results": results}
    out = args.output_dir
    harness.write_results(
        out / "CAPACITY_PROBE.md",
        out / "capacity_probe.json",
        "What caps the SAFFU: fitting a small set",
        lines,
        payload,
    )
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
