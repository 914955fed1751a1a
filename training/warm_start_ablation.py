"""What each part of the explicit warm start is worth: the shipped Brown config against itself with one part
removed or replaced by the paper's form, plus the count-based references, on the same tokens.

    python -m training.warm_start_ablation [--data-dir DIR] [--max-tokens N] [--rows NAME ...]

Every row is a warm start only (no backprop) of a model built from the config's model section (default
configs/brown.yaml) with the row's overrides; validation perplexity is exact over the packed validation
blocks. Writes benchmarks/WARM_START.md and benchmarks/warm_start.json.
"""

import argparse

import torch

from hf_saffu import SaffuConfig, SaffuForCausalLM

from .harness import (
    add_common_arguments,
    count_parameters,
    data_dir_or_exit,
    kneser_ney_arm,
    load_data,
    markdown_table,
    perplexity,
    read_config,
    saffu_model,
    start_run,
    warm_start,
    write_results,
)

# (row, overrides of the shipped config, what the comparison measures)
ROWS = [
    ("shipped", {}, "configs/brown.yaml"),
    ("solved attention", {"explicit_attention_iters": 1}, "solved W against uniform attention (W = 0)"),
    ("no windows > 1", {"windows": []}, "window contexts"),
    ("no document context", {"use_document_context": False}, "document context"),
    ("second layer", {"num_layers": 2}, "a second SAFFU layer"),
    ("contexts off (tables only)", {"explicit_context_weight": 0.0}, "class evidence of the contexts"),
    ("no trigram table", {"pivot_trigrams": 0}, "[ours] the (previous, pivot) table"),
    ("no pivot channel", {"pivot_bigrams": 0, "pivot_trigrams": 0}, "[ours] the pivot's tables"),
    (
        "pivot head on 384-bit codes",
        {"pivot_bigrams": 0, "pivot_trigrams": 0, "pivot_head": True, "embed_bits": 384},
        "[ours] the tables against the previous design's v_t Q",
    ),
    ("first 1M tokens", {"max_tokens": 1_000_000}, "warm-start data: 1M of 1.2M tokens"),
    ("frequency-rank codes", {"embedding_codes": "frequency_rank"}, "[ours] anchored codes"),
    ("additive floor", {"explicit_discount": None}, "[ours] discounting"),
    ("bit-cipher label targets", {"hidden_targets": "bit_cipher"}, "[ours] class targets"),
    ("priming = features", {"explicit_hidden_priming": "features"}, "authors' K = inputs per prediction"),
    (
        "paper form, 64/128 bits, windows 1/4/16",
        {**SaffuConfig.PAPER_FORM, "embed_bits": 64, "hidden_bits": 128, "windows": [1, 4, 16]},
        "the paper's warm start",
    ),
]


def warm_start_row(tokenizer, data, recipe, overrides: dict, max_tokens: int | None) -> dict:
    """Warm-start one model (no backprop): CPU seconds, parameters, validation perplexity."""
    overrides = dict(overrides)
    max_tokens = overrides.pop("max_tokens", max_tokens)
    torch.manual_seed(recipe.seed)
    model: SaffuForCausalLM = saffu_model(tokenizer, {**recipe.model, **overrides})
    seconds, report = warm_start(model, data["train"], max_tokens)
    return {
        "cpu_seconds": seconds,
        "parameters": count_parameters(model),
        "validation_perplexity": perplexity(model, data["validation"]),
        "warm_start_seconds": report.seconds,
        "warm_start_tokens": report.tokens,
    }


def report_lines(rows: list[dict], counts: list[dict], recipe) -> list[str]:
    shipped = rows[0]["validation_perplexity"]
    table = [
        [
            r["row"],
            r["measures"],
            f"{r['validation_perplexity']:.1f}",
            f"{r['validation_perplexity'] / shipped:.3f}x",
            f"{r['cpu_seconds']:.1f}",
            f"{r['parameters']:,}",
        ]
        for r in rows
    ]
    return [
        f"- shipped model fields: `{recipe.model}`; warm start on {rows[0]['warm_start_tokens']:,} training tokens; "
        "validation perplexity exact over all packed validation blocks; no backprop in any row; Kneser-Ney "
        "counted on the whole training split",
        "",
        *markdown_table(
            ["row", "what it measures", "validation ppl", "vs shipped", "CPU s", "parameters"], table, "llrrrr"
        ),
        "",
        "Count-based references on the same training blocks and predicted tokens:",
        "",
        *markdown_table(
            ["model", "validation ppl", "CPU s"],
            [[c["arm"], f"{c['validation_perplexity']:.1f}", f"{c['cpu_seconds']:.1f}"] for c in counts],
        ),
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--max-tokens", type=int, help="warm-start tokens (default: the config's)")
    parser.add_argument("--rows", nargs="*", help="only these rows (names as in the table)")
    args = parser.parse_args(argv)
    start_run(args, argv, "training.warm_start_ablation")
    recipe = read_config(args.config)
    tokenizer, data = load_data(data_dir_or_exit(args.data_dir), recipe.vocab_size, recipe.block_size)
    rows = []
    for name, overrides, measures in ROWS:
        if args.rows and name not in args.rows:
            continue
        row = {
            "row": name,
            "measures": measures,
            "overrides": overrides,
            **warm_start_row(tokenizer, data, recipe, overrides, args.max_tokens),
        }
        print(row, flush=True)
        rows.append(row)
    counts = [kneser_ney_arm(data, len(tokenizer), order) for order in (1, 2, 3, 4)]
    write_results(
        args.output_dir / "WARM_START.md",
        args.output_dir / "warm_start.json",
        "Explicit warm start: what each part is worth (Brown)",
        report_lines(rows, counts, recipe),
        {"rows": rows, "counts": counts},
    )
    return rows


if __name__ == "__main__":
    main()
