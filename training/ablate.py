"""Ablation roadmap: a grid of SAFFU configurations warm-started on ~1M Brown tokens (issue 5).

Every configuration is built on the benchmark's 8192-token BPE, warm-started explicitly on the first
`--warm-start-max-tokens` training tokens (default 1M, about all of Brown train), optionally trained by
backprop for `--backprop-steps` AdamW steps (embeddings included, as in the benchmark), and scored
(exact token-level perplexity) on the first `--eval-blocks` validation blocks. The grid (>= 50
configurations) is ordered so that a limited run (`--limit N`) covers the most informative ones first:
one factor at a time around the default, then single-context diagnostics, then a factorial block.

Resumable: each finished configuration is appended to benchmarks/ablation.jsonl at once; a rerun
skips configurations already there (same configuration and run settings).

    python training/ablate.py --limit 20                   # the first 20 unfinished configurations
    python training/ablate.py --match "windows=[1]"        # only configurations whose label contains this
    python training/ablate.py --limit 0 --diagnose-steps 100   # which sub-layer's explicit solution is weak
    python training/ablate.py --report-only                # rewrite ABLATION.md / ablation.png from the JSONL

Writes benchmarks/ABLATION.md (ranked table, Pareto front) and benchmarks/ablation.png.
"""

import argparse
import copy
import itertools
import json
import math
import time
from pathlib import Path

import matplotlib
import torch
from bench_common import (
    REPO_ROOT,
    brown_data,
    command_line,
    count_parameters,
    git_revision,
    machine_description,
    perplexity,
    saffu_model,
    warm_start_batches,
)
from benchmark import bigram_counts, bigram_perplexity

from hf_saffu.warm_start import explicit_warm_start

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASE = {
    "windows": [1, 4, 16],
    "use_document_context": True,
    "embed_bits": 64,
    "hidden_bits": 128,
    "num_layers": 1,
    "contextual_embeddings": False,
    "explicit_smoothing": 0.01,
    "explicit_hidden_priming": None,
    "attention_iters": 1,
}
ONE_FACTOR = {
    "windows": [[1], [4], [16], [1, 4], [4, 16, 64], [1, 4, 16, 64], [1, 2, 4, 8, 16], [2, 8, 32]],
    "use_document_context": [False],
    "embed_bits": [16, 32, 128, 256],
    "hidden_bits": [32, 64, 256, 512],
    "num_layers": [2, 3],
    "contextual_embeddings": [True],
    "explicit_smoothing": [1e-4, 1e-3, 0.1, 1.0],
    "explicit_hidden_priming": [2.0, 4.0, 8.0, 16.0],
    "attention_iters": [0, 2],
}
FACTORIAL = {
    "windows": [[1], [1, 4, 16]],
    "use_document_context": [True, False],
    "embed_bits": [32, 128],
    "hidden_bits": [64, 256],
    "num_layers": [1, 2],
}


def grid() -> list[dict]:
    """The ablation grid, most informative first, without duplicates."""
    configs = [dict(BASE)]
    for name, values in ONE_FACTOR.items():
        configs += [{**BASE, name: value} for value in values]
    configs.append({**BASE, "windows": [], "use_document_context": True})  # the document context alone
    for embed_bits, hidden_bits in itertools.product([16, 256], [128, 512]):  # the pivot alone: a bigram model
        configs.append(
            {
                **BASE,
                "windows": [1],
                "use_document_context": False,
                "embed_bits": embed_bits,
                "hidden_bits": hidden_bits,
            }
        )
    for values in itertools.product(*FACTORIAL.values()):
        configs.append({**BASE, **dict(zip(FACTORIAL, values, strict=True))})
    unique = {config_key(c): c for c in reversed(configs)}
    return sorted(unique.values(), key=lambda c: configs.index(c))


def config_key(config: dict) -> str:
    """A configuration as a canonical JSON string (the resume key)."""
    return json.dumps(config, sort_keys=True)


def describe(config: dict) -> str:
    """A compact label: differences from the default configuration."""
    changed = {k: v for k, v in config.items() if BASE[k] != v}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "default"


def train_briefly(model, train, steps: int, learning_rate: float = 3e-3, batch_size: int = 32, parameters=None):
    """A short AdamW run from the warm start on `parameters` (default: all trainable), `steps` batches in order."""
    if steps == 0:
        return
    parameters = [p for p in model.parameters() if p.requires_grad] if parameters is None else parameters
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    model.train()
    for step in range(steps):
        start = (step * batch_size) % max(1, len(train) - batch_size)
        batch = train[start : start + batch_size]
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def run_config(config: dict, tokenizer, data, eval_data, args) -> dict:
    """Warm start (+ short backprop) one configuration; its parameters, perplexities and CPU seconds."""
    model_kwargs = {k: v for k, v in config.items() if k != "attention_iters"} | {"freeze_embeddings": False}
    torch.manual_seed(0)
    model = saffu_model(tokenizer, **model_kwargs)
    start = time.process_time()
    batches = warm_start_batches(data["train"], args.warm_start_max_tokens)
    report = explicit_warm_start(model, batches, attention_iters=config["attention_iters"], show_progress=False)
    seconds = time.process_time() - start
    result = {
        "config": config,
        "settings": settings_key(args),
        "parameters": count_parameters(model),
        "warm_start_tokens": report.tokens,
        "warm_start_cpu_seconds": seconds,
        "warm_start_validation_perplexity": perplexity(model, eval_data),
        "priming_numbers": report.priming_numbers,
    }
    if args.backprop_steps:
        start = time.process_time()
        train_briefly(model, data["train"], args.backprop_steps, args.backprop_learning_rate)
        result["backprop_cpu_seconds"] = time.process_time() - start
        result["backprop_validation_perplexity"] = perplexity(model, eval_data)
    return result


PIVOT_ONLY = {**BASE, "windows": [1], "use_document_context": False}


def diagnose(tokenizer, data, eval_data, args) -> list[dict]:
    """Which sub-layer's explicit solution is weak: warm-start the pivot-only SAFFU (a bigram model through
    the hidden layer), then retrain by AdamW only O, only U, or both, with the rest kept explicit."""
    rows = []
    for trained in ("nothing", "output O", "hidden U", "U and O"):
        torch.manual_seed(0)
        model = saffu_model(tokenizer, **{k: v for k, v in PIVOT_ONLY.items() if k != "attention_iters"})
        batches = warm_start_batches(data["train"], args.warm_start_max_tokens)
        explicit_warm_start(model, batches, attention_iters=1, show_progress=False)
        hidden = list(model.model.layers[0].windows[0].hidden.parameters())
        output = list(model.lm_head.parameters())
        chosen = {"nothing": [], "output O": output, "hidden U": hidden, "U and O": hidden + output}[trained]
        if chosen:
            train_briefly(model, data["train"], args.diagnose_steps, learning_rate=1e-2, parameters=chosen)
        rows.append({"retrained by backprop": trained, "validation_perplexity": perplexity(model, eval_data)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def settings_key(args) -> dict:
    """What, besides the configuration, a stored result depends on."""
    return {
        "warm_start_max_tokens": args.warm_start_max_tokens,
        "backprop_steps": args.backprop_steps,
        "backprop_learning_rate": args.backprop_learning_rate,
        "eval_blocks": args.eval_blocks,
    }


def read_results(path: Path, settings: dict) -> dict[str, dict]:
    """Finished configurations of this run's settings, by configuration key (a torn last line is ignored)."""
    results = {}
    if path.exists():
        for line in path.read_text().splitlines():
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


def write_report(path: Path, rows: list[dict], references: dict, diagnosis: dict | None, total: int, args) -> None:
    front = {config_key(r["config"]) for r in pareto_front(rows)}
    with_bp = bool(args.backprop_steps)
    lines = [
        "# SAFFU ablation on Brown (explicit warm start"
        + (f" + {args.backprop_steps} AdamW steps, lr {args.backprop_learning_rate:g})" if with_bp else ")"),
        "",
        f"- command: `{command_line()}`",
        f"- commit: `{git_revision()}`",
        f"- machine: {machine_description()}",
        f"- {len(rows)} of the grid's {total} configurations finished; warm start on the first "
        f"{args.warm_start_max_tokens:,} train tokens; validation perplexity (exact, token-level) on the first "
        f"{args.eval_blocks} validation blocks of 128 tokens",
        "- references on the same blocks (same train data): "
        + ", ".join(f"{name} {value:.1f}" for name, value in references.items())
        + " (bigram: additive alpha in 0.01 .. 1, the best on these blocks; unigram: add-one)",
        "- changes are relative to the default: " + config_key(BASE),
        "",
        "| rank | configuration | parameters | warm-start val ppl |"
        + (" backprop val ppl |" if with_bp else "")
        + " warm-start CPU s | Pareto |",
        "|---:|---|---:|---:|" + ("---:|" if with_bp else "") + "---:|---|",
    ]
    for rank, row in enumerate(sorted(rows, key=score), start=1):
        bp = f" {row['backprop_validation_perplexity']:.1f} |" if with_bp else ""
        pareto = "yes" if config_key(row["config"]) in front else ""
        lines.append(
            f"| {rank} | {describe(row['config'])} | {row['parameters']:,} | "
            f"{row['warm_start_validation_perplexity']:.1f} |{bp} {row['warm_start_cpu_seconds']:.1f} | {pareto} |"
        )
    if diagnosis:
        lines += [
            "",
            f"## Which sub-layer is weak: the pivot-only SAFFU ({describe(PIVOT_ONLY)}), explicit warm start, "
            f"then {diagnosis['steps']} AdamW steps (lr 1e-2) on the named weights only",
            "",
            "| retrained by backprop | validation ppl |",
            "|---|---:|",
            *(f"| {r['retrained by backprop']} | {r['validation_perplexity']:.1f} |" for r in diagnosis["rows"]),
        ]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, rows: list[dict], bigram: float) -> None:
    """Validation perplexity against parameters; the Pareto front joined (labelled by rank); the bigram as a line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["parameters"] for r in rows], [score(r) for r in rows], s=14, label="configurations")
    front = pareto_front(rows)
    ax.plot([r["parameters"] for r in front], [score(r) for r in front], color="C3", marker="o", label="Pareto front")
    ranks = {config_key(r["config"]): rank for rank, r in enumerate(sorted(rows, key=score), start=1)}
    for row in front:  # labelled by their rank in ABLATION.md
        ax.annotate(f"#{ranks[config_key(row['config'])]}", (row["parameters"], score(row)), fontsize=8)
    ax.axhline(bigram, color="gray", linestyle="--", label="smoothed bigram")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation perplexity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def unigram_perplexity(data, eval_data, vocab_size: int) -> float:
    """The add-one unigram on the same predicted tokens (what a model that ignores its context reaches)."""
    counts = torch.ones(vocab_size, dtype=torch.float64)
    train, scored = data["train"][:], eval_data[:]
    counts.index_add_(
        0,
        train["labels"][train["labels"] != -100],
        torch.ones((train["labels"] != -100).sum().item(), dtype=torch.float64),
    )
    labels = scored["labels"][:, 1:]
    return math.exp(-torch.log(counts / counts.sum())[labels[labels != -100]].mean().item())


def best_bigram(data, eval_data, vocab_size: int) -> float:
    model = bigram_counts(data["train"], vocab_size)
    return min(bigram_perplexity(model, eval_data, vocab_size, alpha) for alpha in (0.01, 0.03, 0.1, 0.3, 1.0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="run at most this many unfinished configurations")
    parser.add_argument("--match", help="run only configurations whose label (see ABLATION.md) contains this")
    parser.add_argument("--warm-start-max-tokens", type=int, default=1_000_000)
    parser.add_argument("--backprop-steps", type=int, default=0, help="AdamW steps after the warm start")
    parser.add_argument("--backprop-learning-rate", type=float, default=3e-2)
    parser.add_argument("--eval-blocks", type=int, default=256, help="validation blocks scored")
    parser.add_argument("--train-documents", type=int, help="use only the first N train sentences (tests)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from the JSONL")
    parser.add_argument("--diagnose-steps", type=int, help="run the sub-layer diagnosis with this many AdamW steps")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "benchmarks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    git_revision()  # the commit this run starts from (cached for the report)
    torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.output_dir / "ablation.jsonl"
    tokenizer, data = brown_data(args.vocab_size, train_documents=args.train_documents)
    eval_data = data["validation"].select(range(min(args.eval_blocks, len(data["validation"]))))
    configs = grid()
    done = read_results(results_path, settings_key(args))
    todo = [] if args.report_only else [c for c in configs if config_key(c) not in done]
    todo = [c for c in todo if args.match is None or args.match in describe(c)]
    for config in todo[: args.limit]:
        row = run_config(copy.deepcopy(config), tokenizer, data, eval_data, args)
        with results_path.open("a") as stream:
            stream.write(json.dumps(row) + "\n")
        done[config_key(config)] = row
        print(f"{score(row):9.1f}  {row['parameters']:>10,}  {describe(config)}", flush=True)
    rows = [done[config_key(c)] for c in configs if config_key(c) in done]
    diagnosis_path = args.output_dir / "ablation_diagnosis.json"
    if args.diagnose_steps:
        diagnosis = {"steps": args.diagnose_steps, "rows": diagnose(tokenizer, data, eval_data, args)}
        diagnosis_path.write_text(json.dumps(diagnosis, indent=1))
    references = {
        "smoothed bigram": best_bigram(data, eval_data, len(tokenizer)),
        "unigram": unigram_perplexity(data, eval_data, len(tokenizer)),
    }
    diagnosis = json.loads(diagnosis_path.read_text()) if diagnosis_path.exists() else None
    write_report(args.output_dir / "ABLATION.md", rows, references, diagnosis, len(configs), args)
    if rows:
        plot(args.output_dir / "ablation.png", rows, references["smoothed bigram"])
    return rows


if __name__ == "__main__":
    main()
