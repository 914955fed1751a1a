"""Ablation: a grid of SAFFU configurations around the training config's model section, warm-started.

The default configuration is the config's model section (configs/brown.yaml unless --config says
otherwise) plus its explicit_attention_iters. Each grid point changes one factor, then come single-context
diagnostics and a small factorial block; the grid is ordered so that `--limit N` covers the most
informative points first. Every point is warm-started on the config's warm-start tokens, optionally
trained for `--backprop-steps` AdamW steps, and scored on the first `--eval-blocks` validation blocks.

Resumable: each finished configuration is appended to benchmarks/ablation.jsonl at once; a rerun skips
configurations already there (same configuration and run settings).

    python -m training.ablate --limit 20                  # the first 20 unfinished configurations
    python -m training.ablate --match "windows=[1]"       # only configurations whose label contains this
    python -m training.ablate --limit 0 --diagnose-steps 100  # which sub-layer's explicit solution is weak
    python -m training.ablate --report-only               # rewrite the results from the JSONL

Writes benchmarks/ablation.jsonl, ABLATION.md, ablation.json, ablation.png (and ablation_diagnosis.json).
"""

import argparse
import copy
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import harness

ONE_FACTOR = {
    "windows": [[1], [4], [16], [1, 4], [4, 16, 64], [1, 4, 16, 64], [1, 2, 4, 8, 16], [2, 8, 32]],
    "use_document_context": [False, True],
    "embed_bits": [16, 32, 128, 256],
    "hidden_bits": [32, 64, 256, 512],
    "num_layers": [2, 3],
    "contextual_embeddings": [True],
    "explicit_smoothing": [1e-4, 1e-3, 0.1, 1.0],
    "explicit_hidden_priming": [2.0, 4.0, 8.0, 16.0],
    "explicit_attention_iters": [0, 2],
}
FACTORIAL = {
    "windows": [[1], [1, 4, 16]],
    "use_document_context": [True, False],
    "embed_bits": [32, 128],
    "hidden_bits": [64, 256],
    "num_layers": [1, 2],
}


def default_config(recipe: harness.SaffuRecipe) -> dict:
    """The grid's centre: the recipe's model section and its attention iterations."""
    return {**recipe.model, "explicit_attention_iters": recipe.warm_start_recipe.explicit_attention_iters}


def grid(base: dict) -> list[dict]:
    """The ablation grid around `base`, most informative first, without duplicates."""
    configs = [dict(base)]
    for name, values in ONE_FACTOR.items():
        configs += [{**base, name: value} for value in values]
    configs.append({**base, "windows": [], "use_document_context": True})  # the document context alone
    for embed_bits, hidden_bits in itertools.product([16, 256], [128, 512]):  # the pivot alone: a bigram model
        configs.append({**pivot_only(base), "embed_bits": embed_bits, "hidden_bits": hidden_bits})
    for values in itertools.product(*FACTORIAL.values()):
        configs.append({**base, **dict(zip(FACTORIAL, values, strict=True))})
    unique = {}
    for config in configs:
        unique.setdefault(config_key(config), config)
    return list(unique.values())


def pivot_only(base: dict) -> dict:
    return {**base, "windows": [1], "use_document_context": False}


def config_key(config: dict) -> str:
    """A configuration as a canonical JSON string (the resume key)."""
    return json.dumps(config, sort_keys=True)


def describe(config: dict, base: dict) -> str:
    """A compact label: the differences from `base`."""
    return ", ".join(f"{k}={v}" for k, v in config.items() if base.get(k) != v) or "default"


def train_briefly(model, train, steps: int, learning_rate: float, batch_size: int = 32, parameters=None) -> None:
    """AdamW on `parameters` (default: all trainable) for `steps` batches in order."""
    parameters = [p for p in model.parameters() if p.requires_grad] if parameters is None else parameters
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    model.train()
    for step in range(steps):
        start = (step * batch_size) % max(1, len(train) - batch_size)
        model(**train[start : start + batch_size]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def warm_started(config: dict, tokenizer, train, recipe: harness.SaffuRecipe, max_tokens: int):
    """The SAFFU of `config`, warm-started; (model, CPU seconds, WarmStartReport)."""
    torch.manual_seed(recipe.seed)
    model = harness.saffu_model(tokenizer, config)
    seconds, report = harness.warm_start(model, train, max_tokens)
    return model, seconds, report


def run_config(config: dict, tokenizer, data, eval_data, recipe, args) -> dict:
    model, seconds, report = warm_started(config, tokenizer, data["train"], recipe, args.warm_start_max_tokens)
    row = {
        "config": config,
        "settings": settings_key(args),
        "parameters": harness.count_parameters(model),
        "warm_start_tokens": report.tokens,
        "warm_start_cpu_seconds": seconds,
        "warm_start_validation_perplexity": harness.perplexity(model, eval_data),
    }
    if args.backprop_steps:
        start = time.process_time()
        train_briefly(model, data["train"], args.backprop_steps, args.backprop_learning_rate)
        row["backprop_cpu_seconds"] = time.process_time() - start
        row["backprop_validation_perplexity"] = harness.perplexity(model, eval_data)
    return row


def diagnose(base: dict, tokenizer, data, eval_data, recipe, args) -> list[dict]:
    """Which sub-layer's explicit solution is weak: warm-start the pivot-only SAFFU, then retrain by AdamW
    only its output O, only its hidden U, or both, the rest kept explicit."""
    rows = []
    for trained in ("nothing", "output O", "hidden U", "U and O"):
        model, _, _ = warm_started(pivot_only(base), tokenizer, data["train"], recipe, args.warm_start_max_tokens)
        hidden = list(model.model.layers[0].windows[0].hidden.parameters())
        output = list(model.lm_head.parameters())
        chosen = {"nothing": [], "output O": output, "hidden U": hidden, "U and O": hidden + output}[trained]
        if chosen:
            train_briefly(model, data["train"], args.diagnose_steps, 1e-2, parameters=chosen)
        rows.append({"retrained by backprop": trained, "validation_perplexity": harness.perplexity(model, eval_data)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def settings_key(args) -> dict:
    """What, besides the configuration, a stored result depends on."""
    names = ("warm_start_max_tokens", "backprop_steps", "backprop_learning_rate", "eval_blocks", "train_documents")
    return {name: getattr(args, name) for name in names}


def read_results(path: Path, settings: dict) -> dict[str, dict]:
    """Finished configurations of these settings, by configuration key (a torn last line is ignored)."""
    results = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("settings") == settings:
            results[config_key(row["config"])] = row
    return results


def score(row: dict) -> float:
    return row.get("backprop_validation_perplexity", row["warm_start_validation_perplexity"])


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both parameters and perplexity, by increasing parameters."""
    front, best = [], float("inf")
    for row in sorted(rows, key=lambda r: (r["parameters"], score(r))):
        if score(row) < best:
            front.append(row)
            best = score(row)
    return front


def report_lines(rows, base, references, diagnosis, total, args) -> list[str]:
    front = {config_key(r["config"]) for r in pareto_front(rows)}
    with_bp = bool(args.backprop_steps)
    header = ["rank", "configuration", "parameters", "warm-start val ppl"]
    header += ["backprop val ppl"] * with_bp + ["warm-start CPU s", "Pareto"]
    table = []
    for rank, row in enumerate(sorted(rows, key=score), start=1):
        cells = [rank, describe(row["config"], base), f"{row['parameters']:,}"]
        cells.append(f"{row['warm_start_validation_perplexity']:.1f}")
        if with_bp:
            cells.append(f"{row['backprop_validation_perplexity']:.1f}")
        cells += [f"{row['warm_start_cpu_seconds']:.1f}", "yes" if config_key(row["config"]) in front else ""]
        table.append(cells)
    lines = [
        f"- {len(rows)} of the grid's {total} configurations finished; settings `{settings_key(args)}`",
        "- references on the same blocks: " + ", ".join(f"{k} {v:.1f}" for k, v in references.items()),
        f"- changes are relative to the default (`{args.config.name}`): `{config_key(base)}`",
        "",
        *harness.markdown_table(header, table, "rlrr" + "r" * with_bp + "rl"),
    ]
    if diagnosis:
        lines += [
            "",
            f"## The pivot-only SAFFU, warm-started, then {diagnosis['steps']} AdamW steps on the named weights only",
            "",
            *harness.markdown_table(
                ["retrained by backprop", "validation ppl"],
                [[r["retrained by backprop"], f"{r['validation_perplexity']:.1f}"] for r in diagnosis["rows"]],
            ),
        ]
    return lines


def plot(path: Path, rows: list[dict], reference: float) -> None:
    """Validation perplexity against parameters; the Pareto front joined (labelled by rank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["parameters"] for r in rows], [score(r) for r in rows], s=14, label="configurations")
    front = pareto_front(rows)
    ax.plot([r["parameters"] for r in front], [score(r) for r in front], color="C3", marker="o", label="Pareto front")
    ranks = {config_key(r["config"]): rank for rank, r in enumerate(sorted(rows, key=score), start=1)}
    for row in front:
        ax.annotate(f"#{ranks[config_key(row['config'])]}", (row["parameters"], score(row)), fontsize=8)
    ax.axhline(reference, color="gray", linestyle="--", label="Kneser-Ney bigram")
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="validation perplexity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser, threads=2)
    parser.add_argument("--limit", type=int, help="run at most this many unfinished configurations")
    parser.add_argument("--match", help="run only configurations whose label (see ABLATION.md) contains this")
    parser.add_argument("--warm-start-max-tokens", type=int, help="default: the config's")
    parser.add_argument("--backprop-steps", type=int, default=0, help="AdamW steps after the warm start")
    parser.add_argument("--backprop-learning-rate", type=float, help="default: the config's learning_rate")
    parser.add_argument("--eval-blocks", type=int, default=256, help="validation blocks scored")
    parser.add_argument("--train-documents", type=int, help="use only the first N train documents")
    parser.add_argument("--vocab-size", type=int, help="default: the config's tokenizer_vocab_size")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the results from the JSONL")
    parser.add_argument("--diagnose-steps", type=int, help="run the sub-layer diagnosis with this many AdamW steps")
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    data_dir = harness.data_dir_or_exit(args.data_dir)
    recipe = harness.read_config(args.config)
    recipe = replace(recipe, vocab_size=args.vocab_size or recipe.vocab_size)
    args.warm_start_max_tokens = args.warm_start_max_tokens or recipe.warm_start_recipe.warm_start_max_tokens
    args.backprop_learning_rate = args.backprop_learning_rate or recipe.learning_rate
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, data = harness.load_data(data_dir, recipe.vocab_size, recipe.block_size, args.train_documents)
    eval_data = data["validation"].select(range(min(args.eval_blocks, len(data["validation"]))))
    base = default_config(recipe)
    configs = grid(base)
    done = read_results(out / "ablation.jsonl", settings_key(args))
    todo = [] if args.report_only else [c for c in configs if config_key(c) not in done]
    todo = [c for c in todo if args.match is None or args.match in describe(c, base)]
    for config in todo[: args.limit]:
        row = run_config(copy.deepcopy(config), tokenizer, data, eval_data, recipe, args)
        with (out / "ablation.jsonl").open("a") as stream:
            stream.write(json.dumps(row) + "\n")
        done[config_key(config)] = row
        print(f"{score(row):9.1f}  {row['parameters']:>10,}  {describe(config, base)}", flush=True)
    rows = [done[config_key(c)] for c in configs if config_key(c) in done]
    diagnosis_path = out / "ablation_diagnosis.json"
    if args.diagnose_steps:
        diagnosis = {"steps": args.diagnose_steps, "rows": diagnose(base, tokenizer, data, eval_data, recipe, args)}
        diagnosis_path.write_text(json.dumps(diagnosis, indent=1))
    diagnosis = json.loads(diagnosis_path.read_text()) if diagnosis_path.exists() else None
    scored = {"train": data["train"], "validation": eval_data, "test": eval_data}
    baselines = [harness.bigram_arm(scored, len(tokenizer))]
    baselines += [harness.kneser_ney_arm(scored, len(tokenizer), order) for order in (1, 2, 3)]
    references = {b["arm"]: b["validation_perplexity"] for b in baselines}
    lines = report_lines(rows, base, references, diagnosis, len(configs), args)
    payload = {"default": base, "settings": settings_key(args), "references": references, "rows": rows}
    title = "SAFFU ablation: warm start" + (f" + {args.backprop_steps} AdamW steps" if args.backprop_steps else "")
    harness.write_results(out / "ABLATION.md", out / "ablation.json", title, lines, payload)
    if rows:
        plot(out / "ablation.png", rows, references["Kneser-Ney 2-gram"])
    return rows


if __name__ == "__main__":
    main()
