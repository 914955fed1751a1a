"""Brown benchmark: count-based n-grams, the SAFFU (warm start, backprop, both) and GPT-2 side by side.

Arms, all on one BPE and the same packed blocks: the additive bigram (alpha chosen on validation);
interpolated modified Kneser-Ney of orders 2, 3 and 4; the SAFFU of the training config (default
configs/brown.yaml) after the explicit warm start alone, after backprop alone, and after warm start +
backprop (the config's learning rates per part and frozen phase); a small GPT-2 (no more parameters than the
SAFFU). Every backprop arm gets the same budget of process CPU seconds (the warm start counts against it,
evaluation does not).

    python -m training.benchmark --quick                       # a reduced run, minutes on 2 cores
    python -m training.benchmark                               # the full run (about an hour)
    python -m training.benchmark --budget-cpu-seconds 2400     # longer; curve points at --eval-checkpoints

Writes benchmarks/RESULTS.md, brown.json and brown.png (the validation curves).
"""

import argparse
import copy
from dataclasses import asdict, dataclass, replace

import torch

from . import harness

CURVE_FRACTIONS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75)  # curve points besides --eval-checkpoints
KNESER_NEY_ORDERS = (2, 3, 4)


@dataclass(frozen=True)
class Settings:
    """What a run depends on besides the training config (written into the results)."""

    train_documents: int | None = None  # None: all of train
    eval_documents: int | None = None  # None: all of validation / test
    budget_cpu_seconds: float = 300.0  # per backprop arm, warm start included
    eval_checkpoints: tuple[float, ...] = (300.0, 600.0, 1200.0, 2400.0)
    curve_blocks: int = 128
    batch_size: int = 32
    gpt2_learning_rate: float = 1e-3
    backprop_only_learning_rate: float | None = None  # the SAFFU backprop-only arm (None: the config's)
    gpt2_layers: int = 2
    gpt2_dims: int = 128
    gpt2_heads: int = 4

    def budget(self, seed: int) -> harness.Budget:
        points = {self.budget_cpu_seconds * f for f in CURVE_FRACTIONS} | set(self.eval_checkpoints)
        return harness.Budget(self.budget_cpu_seconds, tuple(sorted(points)), self.batch_size, self.curve_blocks, seed)


QUICK = Settings(train_documents=8000, eval_documents=600, budget_cpu_seconds=40.0, curve_blocks=32)


def run_arms(settings: Settings, recipe: harness.SaffuRecipe, tokenizer, data) -> list[dict]:
    """Every arm, count-based ones first."""
    vocab_size = len(tokenizer)
    budget = settings.budget(recipe.seed)
    results = [harness.bigram_arm(data, vocab_size)]
    results += [harness.kneser_ney_arm(data, vocab_size, order) for order in KNESER_NEY_ORDERS]
    torch.manual_seed(recipe.seed)
    initial = harness.saffu_model(tokenizer, recipe.model)
    warm = copy.deepcopy(initial)
    results.append(harness.warm_start_arm(warm, data, recipe, budget))
    ws_seconds = results[-1]["cpu_seconds"]
    backprop_lr = settings.backprop_only_learning_rate or recipe.learning_rate
    backprop = harness.train_with_budget(initial, data, budget, backprop_lr)
    results.append({"arm": "SAFFU backprop only", **backprop})
    both = harness.train_warm_saffu(warm, data, budget, recipe, offset=ws_seconds)
    results.append({"arm": "SAFFU warm start + backprop", "warm_start_cpu_seconds": ws_seconds, **both})
    torch.manual_seed(recipe.seed)
    gpt2 = harness.gpt2_model(
        tokenizer, data["train"][0]["input_ids"].shape[0], settings.gpt2_layers, settings.gpt2_dims, settings.gpt2_heads
    )
    if harness.count_parameters(gpt2) > harness.count_parameters(initial):
        raise ValueError(
            f"GPT-2 ({harness.count_parameters(gpt2):,} parameters) must not be larger than the SAFFU "
            f"({harness.count_parameters(initial):,}): lower --gpt2-dims"
        )
    results.append({"arm": "GPT-2", **harness.train_with_budget(gpt2, data, budget, settings.gpt2_learning_rate)})
    return results


def check_targets(results: list[dict], train_tokens: int) -> list[dict]:
    """Met / missed for the benchmark's targets, with the numbers of this run."""
    arms = {r["arm"]: r for r in results}
    bigram, ws, wsbp, gpt2 = (
        arms[k] for k in ("additive bigram", "SAFFU warm start", "SAFFU warm start + backprop", "GPT-2")
    )
    epoch_seconds = train_tokens / gpt2["train_tokens_per_cpu_second"]
    gpt2_final = gpt2["curve"][-1]["validation_perplexity"]
    reached = next((p["cpu_seconds"] for p in wsbp["curve"] if p["validation_perplexity"] <= gpt2_final), None)
    ppl = {k: r["validation_perplexity"] for k, r in arms.items()}
    return [
        {
            "target": "warm start alone: validation ppl below the additive bigram's",
            "met": ppl["SAFFU warm start"] < ppl["additive bigram"],
            "numbers": f"{ppl['SAFFU warm start']:.1f} vs {bigram['validation_perplexity']:.1f}",
        },
        *(
            {
                "target": f"warm start alone: validation ppl below the Kneser-Ney {order}-gram's",
                "met": ppl["SAFFU warm start"] < ppl[f"Kneser-Ney {order}-gram"],
                "numbers": f"{ppl['SAFFU warm start']:.1f} vs {ppl[f'Kneser-Ney {order}-gram']:.1f}",
            }
            for order in KNESER_NEY_ORDERS
        ),
        {
            "target": "warm start alone: validation ppl below GPT-2's (after its budget)",
            "met": ppl["SAFFU warm start"] < ppl["GPT-2"],
            "numbers": f"{ppl['SAFFU warm start']:.1f} vs {ppl['GPT-2']:.1f}",
        },
        {
            "target": "warm start alone: < 1/20 of the CPU time of one GPT-2 epoch",
            "met": ws["cpu_seconds"] < epoch_seconds / 20,
            "numbers": f"{ws['cpu_seconds']:.1f} CPU-s vs {epoch_seconds / 20:.1f} (epoch {epoch_seconds:.0f} CPU-s)",
        },
        {
            "target": "warm start + backprop: below backprop alone and below GPT-2 at equal CPU time",
            "met": ppl["SAFFU warm start + backprop"] < min(ppl["SAFFU backprop only"], ppl["GPT-2"]),
            "numbers": f"{ppl['SAFFU warm start + backprop']:.1f} vs backprop only "
            f"{ppl['SAFFU backprop only']:.1f}, GPT-2 {ppl['GPT-2']:.1f}",
        },
        {
            "target": "warm start + backprop: <= 0.8x GPT-2's validation ppl at equal CPU time",
            "met": ppl["SAFFU warm start + backprop"] <= 0.8 * ppl["GPT-2"],
            "numbers": f"{ppl['SAFFU warm start + backprop']:.1f} vs 0.8 x {ppl['GPT-2']:.1f}",
        },
        {
            "target": "warm start + backprop: GPT-2's final ppl reached >= 10x sooner",
            "met": reached is not None and reached * 10 <= gpt2["cpu_seconds"],
            "numbers": f"GPT-2 {gpt2_final:.1f} (curve subset) at {gpt2['cpu_seconds']:.0f} CPU-s; SAFFU "
            + (f"at {reached:.1f} CPU-s" if reached is not None else "never"),
        },
    ]


def curve_table(results: list[dict]) -> list[str]:
    rows = [
        [r["arm"], p["step"], f"{p['cpu_seconds']:.1f}", f"{p['validation_perplexity']:.1f}"]
        for r in results
        for p in r["curve"]
    ]
    return harness.markdown_table(["arm", "step", "CPU s", "validation ppl (curve subset)"], rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="part of the data, a 40 CPU-s budget")
    parser.add_argument("--budget-cpu-seconds", type=float, help="per backprop arm (default 300; quick 40)")
    parser.add_argument("--eval-checkpoints", type=float, nargs="*", help="CPU-second points of the curves")
    parser.add_argument("--train-documents", type=int, help="use only the first N train documents")
    parser.add_argument("--eval-documents", type=int, help="use only the first N validation / test documents")
    parser.add_argument("--gpt2-learning-rate", type=float)
    parser.add_argument("--backprop-only-learning-rate", type=float, help="the SAFFU backprop-only arm's")
    parser.add_argument("--gpt2-dims", type=int)
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    data_dir = harness.data_dir_or_exit(args.data_dir)
    settings = QUICK if args.quick else Settings()
    overrides = {
        "budget_cpu_seconds": args.budget_cpu_seconds,
        "eval_checkpoints": None if args.eval_checkpoints is None else tuple(args.eval_checkpoints),
        "train_documents": args.train_documents,
        "eval_documents": args.eval_documents,
        "gpt2_learning_rate": args.gpt2_learning_rate,
        "backprop_only_learning_rate": args.backprop_only_learning_rate,
        "gpt2_dims": args.gpt2_dims,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    recipe = harness.read_config(args.config)
    tokenizer, data = harness.load_data(
        data_dir, recipe.vocab_size, recipe.block_size, settings.train_documents, settings.eval_documents
    )
    results = run_arms(settings, recipe, tokenizer, data)
    targets = check_targets(results, harness.real_tokens(data["train"]))
    title = "Brown benchmark: n-grams, SAFFU warm start / backprop, GPT-2" + (" (--quick)" if args.quick else "")
    lines = [
        f"- data: {data_dir}, train {len(data['train'])} blocks, validation {len(data['validation'])}, test "
        f"{len(data['test'])} (blocks of {recipe.block_size} tokens, one {len(tokenizer)}-token BPE for every arm)",
        f"- SAFFU: `{args.config.name}` model `{recipe.model}`; warm start on "
        f"{recipe.warm_start_recipe.warm_start_max_tokens or 'all the'} training tokens; after it, backprop as the "
        f"config trains: lr {recipe.learning_rate}, per part {recipe.group_learning_rates()}, embeddings frozen for "
        f"the first {recipe.frozen_fraction:.0%} of the steps",
        f"- settings: `{asdict(settings)}`; time = process CPU seconds, evaluation excluded",
        "",
        "## Results",
        "",
        *harness.results_table(results),
        "",
        "## Targets",
        "",
        *harness.targets_table(targets),
        "",
        f"## Validation perplexity against CPU seconds (first {settings.curve_blocks} validation blocks)",
        "",
        "![curves](brown.png)",
        "",
        *curve_table(results),
    ]
    payload = {"settings": asdict(settings), "recipe": asdict(recipe), "results": results, "targets": targets}
    out = args.output_dir
    harness.write_results(out / "RESULTS.md", out / "brown.json", title, lines, payload)
    harness.plot_curves(results, out / "brown.png", "Brown" + (" (--quick)" if args.quick else ""))
    for t in targets:
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['numbers']}")
    return payload


if __name__ == "__main__":
    main()
