"""Data efficiency: SAFFU warm start + backprop vs backprop only on growing shares of the training blocks.

For each fraction of the (shuffled) train blocks: the warm start alone, backprop alone and warm start +
backprop of the config's SAFFU, each backprop arm under the same CPU-second budget; the same validation
and test blocks for every row.

    python -m training.data_efficiency --quick
    python -m training.data_efficiency --fractions 0.1 0.3 1.0 --budget-cpu-seconds 300

Writes benchmarks/DATA_EFFICIENCY.md, data_efficiency.json and data_efficiency.png.
"""

import argparse
import copy
from dataclasses import asdict

import torch

from . import harness


def run_fractions(fractions, recipe: harness.SaffuRecipe, budget: harness.Budget, tokenizer, data) -> list[dict]:
    shuffled = data["train"].shuffle(seed=recipe.seed)
    rows = []
    for fraction in fractions:
        subset = {**data, "train": shuffled.select(range(max(1, round(fraction * len(shuffled)))))}
        torch.manual_seed(recipe.seed)
        initial = harness.saffu_model(tokenizer, recipe.model)
        warm = copy.deepcopy(initial)
        ws = harness.warm_start_arm(warm, subset, recipe, budget)
        bp = {"arm": "SAFFU backprop only", **harness.train_with_budget(initial, subset, budget, recipe.learning_rate)}
        wsbp = harness.train_warm_saffu(warm, subset, budget, recipe, offset=ws["cpu_seconds"])
        tokens = harness.real_tokens(subset["train"])
        for row in (ws, bp, {"arm": "SAFFU warm start + backprop", **wsbp}):
            rows.append({**row, "fraction": fraction, "train_tokens": tokens})
            print(f"{fraction:.0%} {row['arm']}: validation ppl {row['validation_perplexity']:.1f}", flush=True)
    return rows


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        points = [(r["train_tokens"], r["validation_perplexity"]) for r in rows if r["arm"] == arm]
        ax.plot(*zip(*points, strict=True), marker="o", label=arm)
    ax.set(xscale="log", yscale="log", xlabel="training tokens", ylabel="validation perplexity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="8000 train documents, 600 eval, 40 CPU-s budgets")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--budget-cpu-seconds", type=float, help="per backprop arm (default 300; quick 40)")
    parser.add_argument("--train-documents", type=int)
    parser.add_argument("--eval-documents", type=int)
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    data_dir = harness.data_dir_or_exit(args.data_dir)
    recipe = harness.read_config(args.config)
    quick = {"train_documents": 8000, "eval_documents": 600, "budget": 40.0} if args.quick else {}
    train_documents = args.train_documents or quick.get("train_documents")
    eval_documents = args.eval_documents or quick.get("eval_documents")
    seconds = args.budget_cpu_seconds or quick.get("budget", 300.0)
    budget = harness.Budget(seconds, (), curve_blocks=32 if args.quick else 128, seed=recipe.seed)
    tokenizer, data = harness.load_data(data_dir, recipe.vocab_size, recipe.block_size, train_documents, eval_documents)
    rows = run_fractions(args.fractions, recipe, budget, tokenizer, data)
    table = harness.markdown_table(
        ["train fraction", "train tokens", "arm", "validation ppl", "test ppl", "CPU s", "steps"],
        [
            [
                f"{r['fraction']:.0%}",
                f"{r['train_tokens']:,}",
                r["arm"],
                f"{r['validation_perplexity']:.1f}",
                f"{r['test_perplexity']:.1f}",
                f"{r['cpu_seconds']:.1f}",
                r.get("steps", 0),
            ]
            for r in rows
        ],
        "rrlrrrr",
    )
    lines = [
        f"- data: {data_dir} ({train_documents or 'all'} train documents, {eval_documents or 'all'} eval documents);"
        f" SAFFU `{args.config.name}` model `{recipe.model}`; {seconds:.0f} CPU-s per backprop arm",
        "",
        *table,
        "",
        "![data efficiency](data_efficiency.png)",
    ]
    payload = {"budget": asdict(budget), "recipe": asdict(recipe), "rows": rows}
    out = args.output_dir
    title = "Data efficiency: SAFFU warm start + backprop vs backprop only" + (" (--quick)" if args.quick else "")
    harness.write_results(out / "DATA_EFFICIENCY.md", out / "data_efficiency.json", title, lines, payload)
    plot(rows, out / "data_efficiency.png")
    return rows


if __name__ == "__main__":
    main()
