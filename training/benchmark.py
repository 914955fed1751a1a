"""Brown benchmark: the explicit warm start against backprop and GPT-2, side by side (issue 5).

Arms, all on one 8192-token ByteLevel BPE and the same packed blocks of 128 tokens:

1. bigram: explicit counts + log with additive smoothing alpha (chosen on validation);
2. SAFFU warm start only (`explicit_warm_start`, no backprop), in the paper's form and, as a second row,
   with the sharper hidden layers of `explicit_hidden_priming` (`Settings.sharpened_priming`);
3. SAFFU backprop only, from the untrained initialisation (bit-cipher embeddings by token id, random dense);
4. SAFFU warm start + backprop;
5. GPT-2 (`GPT2LMHeadModel`, 2 layers x 128 dims, fewer parameters than the SAFFU) trained with the Trainer.

Budget and time: every backprop arm gets the same budget of *process CPU seconds*
(`time.process_time()`, the sum over all threads) for warm start + training; evaluation CPU time is
measured separately and excluded. The validation-perplexity curve is taken on a fixed validation
subset (the first `curve_blocks` blocks) at fixed fractions of the budget; the final validation and
test perplexities are on the whole (packed) splits. Training tokens/s are real tokens per CPU second.

    python training/benchmark.py --quick            # < 5 minutes on 2 cores
    python training/benchmark.py                    # the full run (< 60 minutes)
    python training/benchmark.py --data-efficiency  # warm start + backprop vs backprop on 10/30/100% of train

Writes benchmarks/RESULTS.md, benchmarks/brown.png and benchmarks/brown.json (or DATA_EFFICIENCY.md,
data_efficiency.png and data_efficiency.json).
"""

import argparse
import copy
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
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
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments, default_data_collator

from hf_saffu.warm_start import explicit_warm_start

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BIGRAM_ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
CURVE_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Settings:
    """Everything a benchmark run depends on (written into the results)."""

    vocab_size: int = 8192
    block_size: int = 128
    train_documents: int | None = None  # None: all of Brown train
    eval_documents: int | None = None  # None: all of validation / test
    budget_cpu_seconds: float = 300.0  # per backprop arm, warm start included
    curve_blocks: int = 128  # validation blocks scored at every curve point
    batch_size: int = 32
    saffu_learning_rate: float = 3e-2  # best of 3e-3 / 1e-2 / 3e-2 / 1e-1 in 60-80-step probes on Brown
    gpt2_learning_rate: float = 1e-3
    gpt2_layers: int = 2
    gpt2_dims: int = 128
    gpt2_heads: int = 4
    warm_start_max_tokens: int | None = None
    attention_iters: int = 1
    # SaffuConfig overrides of every SAFFU arm: backprop trains the embeddings too (frozen, the warm start +
    # backprop arm stalls: 1068 -> 931 in 60 steps against 1068 -> 633 with them trained)
    saffu: dict = field(default_factory=lambda: {"freeze_embeddings": False})
    sharpened_priming: float | None = 8.0  # the extra warm-start-only row (None: no such row)
    fractions: tuple[float, ...] = (0.1, 0.3, 1.0)  # data-efficiency mode
    seed: int = 0


QUICK = Settings(train_documents=8000, eval_documents=600, budget_cpu_seconds=40.0, curve_blocks=32)
FULL = Settings()


# -- arms ---------------------------------------------------------------------------------------


def bigram_counts(dataset, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted unique pair keys (previous * V + next), their counts, and the counts of previous tokens."""
    keys = pair_keys(dataset, vocab_size)
    unique, counts = torch.unique(keys, return_counts=True)
    previous = torch.zeros(vocab_size, dtype=torch.float64).index_add_(
        0, unique // vocab_size, counts.to(torch.float64)
    )
    return unique, counts.to(torch.float64), previous


def pair_keys(dataset, vocab_size: int) -> torch.Tensor:
    """previous * V + next for every predicted token of the packed blocks (the same tokens as `perplexity`)."""
    columns = dataset[:]
    inputs, labels = columns["input_ids"][:, :-1], columns["labels"][:, 1:]
    predicted = labels != -100
    return inputs[predicted] * vocab_size + labels[predicted]


def bigram_perplexity(model: tuple, dataset, vocab_size: int, alpha: float) -> float:
    """exp(mean NLL) of the additively smoothed bigram P(b | a) = (C(a, b) + alpha) / (C(a) + alpha V)."""
    unique, counts, previous = model
    keys = pair_keys(dataset, vocab_size)
    position = torch.searchsorted(unique, keys).clamp_max(len(unique) - 1)
    pair_counts = torch.where(unique[position] == keys, counts[position], 0.0)
    log_probs = torch.log(pair_counts + alpha) - torch.log(previous[keys // vocab_size] + alpha * vocab_size)
    return math.exp(-log_probs.mean().item())


def run_bigram(data, settings: Settings) -> dict:
    """Counts on train, alpha chosen on validation, then validation and test perplexity."""
    start = time.process_time()
    model = bigram_counts(data["train"], settings.vocab_size)
    fit_seconds = time.process_time() - start
    scores = {
        alpha: bigram_perplexity(model, data["validation"], settings.vocab_size, alpha) for alpha in BIGRAM_ALPHAS
    }
    alpha = min(scores, key=scores.get)
    tokens = int((data["train"][:]["labels"][:, 1:] != -100).sum())
    return {
        "arm": "bigram",
        "alpha": alpha,
        "alpha_scores": scores,
        "cpu_seconds": fit_seconds,
        "parameters": settings.vocab_size**2,
        "train_tokens_per_cpu_second": tokens / max(fit_seconds, 1e-9),
        "validation_perplexity": scores[alpha],
        "test_perplexity": bigram_perplexity(model, data["test"], settings.vocab_size, alpha),
        "curve": [],
    }


def warm_start(model, train, settings: Settings) -> tuple[float, int]:
    """Run the explicit warm start; (process CPU seconds, tokens read)."""
    start = time.process_time()
    batches = warm_start_batches(train, settings.warm_start_max_tokens)
    report = explicit_warm_start(model, batches, attention_iters=settings.attention_iters, show_progress=False)
    return time.process_time() - start, report.tokens


def gpt2_model(tokenizer, settings: Settings) -> GPT2LMHeadModel:
    """The GPT-2 arm: `gpt2_layers` x `gpt2_dims`, context = one block, tied output embeddings."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=settings.block_size,
        n_embd=settings.gpt2_dims,
        n_layer=settings.gpt2_layers,
        n_head=settings.gpt2_heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


# -- backprop under a CPU budget -----------------------------------------------------------------


class CpuBudget(TrainerCallback):
    """Stops training when the arm's CPU budget is spent; evaluates the curve at fixed CPU times.

    CPU time spent evaluating is excluded from the budget. `offset` is CPU time spent before training
    (the warm start), counted against the budget and on the curve's x axis.
    """

    def __init__(self, budget: float, offset: float, evaluate, checkpoints: list[float]):
        self.budget = budget
        self.offset = offset
        self.evaluate = evaluate
        self.checkpoints = sorted(c for c in checkpoints if c > offset)
        self.curve: list[dict] = []
        self.eval_seconds = 0.0
        self.start = 0.0

    def spent(self) -> float:
        """CPU seconds of the arm so far: warm start + training, evaluation excluded."""
        return self.offset + time.process_time() - self.start - self.eval_seconds

    def record(self, model, step: int) -> None:
        spent = self.spent()
        eval_start = time.process_time()
        self.curve.append({"cpu_seconds": spent, "step": step, "validation_perplexity": self.evaluate(model)})
        self.eval_seconds += time.process_time() - eval_start

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = time.process_time()
        self.record(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        spent = self.spent()
        if self.checkpoints and spent >= self.checkpoints[0]:
            while self.checkpoints and spent >= self.checkpoints[0]:
                self.checkpoints.pop(0)
            self.record(model, state.global_step)
        if spent >= self.budget:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.curve[-1]["step"] != state.global_step:
            self.record(model, state.global_step)


def seconds_per_step(model, train, batch_size: int) -> float:
    """CPU seconds of one forward + backward pass on a training batch (to size the cosine schedule)."""
    batch = train[:batch_size]
    model.train()
    model(**batch).loss.backward()  # the first pass allocates: not timed
    start = time.process_time()
    for _ in range(3):
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return (time.process_time() - start) / 3


def train_with_budget(model, train, curve_data, settings: Settings, learning_rate: float, offset: float) -> dict:
    """Trainer (AdamW, cosine, 5% warm-up) until the CPU budget is spent; the curve and throughput."""
    budget = settings.budget_cpu_seconds
    remaining = max(budget - offset, 0.0)
    # the optimizer step and the Trainer add about 10% to the forward + backward pass
    max_steps = max(1, round(remaining / (1.1 * seconds_per_step(model, train, settings.batch_size))))
    callback = CpuBudget(budget, offset, lambda m: perplexity(m, curve_data), [budget * f for f in CURVE_FRACTIONS])
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=max_steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=settings.seed,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=train, data_collator=default_data_collator, callbacks=[callback]
        )
        state = trainer.train()
    train_seconds = callback.spent() - offset
    tokens = state.global_step * settings.batch_size * settings.block_size
    return {
        "steps": state.global_step,
        "planned_steps": max_steps,
        "cpu_seconds": callback.spent(),
        "backprop_cpu_seconds": train_seconds,
        "train_tokens_per_cpu_second": tokens / max(train_seconds, 1e-9),
        "curve": callback.curve,
    }


def run_backprop_arm(name: str, model, data, settings: Settings, learning_rate: float, offset: float = 0.0):
    """Train one arm under the budget and score it on the full validation and test splits."""
    torch.manual_seed(settings.seed)
    curve_data = data["validation"].select(range(min(settings.curve_blocks, len(data["validation"]))))
    result = train_with_budget(model, data["train"], curve_data, settings, learning_rate, offset)
    return {
        "arm": name,
        "parameters": count_parameters(model),
        **result,
        "validation_perplexity": perplexity(model, data["validation"]),
        "test_perplexity": perplexity(model, data["test"]),
    }


def run_warm_start_arm(model, data, settings: Settings, name: str = "SAFFU warm start") -> dict:
    """The explicit warm start alone: its CPU time, throughput and perplexities (no backprop)."""
    seconds, tokens = warm_start(model, data["train"], settings)
    curve_data = data["validation"].select(range(min(settings.curve_blocks, len(data["validation"]))))
    return {
        "arm": name,
        "parameters": count_parameters(model),
        "cpu_seconds": seconds,
        "warm_start_tokens": tokens,
        "train_tokens_per_cpu_second": tokens / seconds,
        "validation_perplexity": perplexity(model, data["validation"]),
        "test_perplexity": perplexity(model, data["test"]),
        "curve": [{"cpu_seconds": seconds, "step": 0, "validation_perplexity": perplexity(model, curve_data)}],
    }


def run_arms(settings: Settings, tokenizer, data) -> list[dict]:
    """The five arms of the benchmark, in order (and the sharpened warm start after the paper's)."""
    results = [run_bigram(data, settings)]
    torch.manual_seed(settings.seed)
    initial = saffu_model(tokenizer, **settings.saffu)
    warm = copy.deepcopy(initial)
    results.append(run_warm_start_arm(warm, data, settings))
    ws_seconds = results[-1]["cpu_seconds"]
    if settings.sharpened_priming is not None:
        sharpened = saffu_model(tokenizer, **settings.saffu, explicit_hidden_priming=settings.sharpened_priming)
        name = f"SAFFU warm start, hidden priming {settings.sharpened_priming:g}"
        results.append(run_warm_start_arm(sharpened, data, settings, name))
    results.append(run_backprop_arm("SAFFU backprop only", initial, data, settings, settings.saffu_learning_rate))
    results.append(
        run_backprop_arm("SAFFU warm start + backprop", warm, data, settings, settings.saffu_learning_rate, ws_seconds)
    )
    results[-1]["warm_start_cpu_seconds"] = ws_seconds
    torch.manual_seed(settings.seed)
    gpt2 = gpt2_model(tokenizer, settings)
    if count_parameters(gpt2) > count_parameters(initial):
        raise ValueError(
            f"GPT-2 ({count_parameters(gpt2):,} parameters) must not be larger than the SAFFU "
            f"({count_parameters(initial):,}): lower gpt2_dims or gpt2_layers"
        )
    results.append(run_backprop_arm("GPT-2", gpt2, data, settings, settings.gpt2_learning_rate))
    return results


# -- targets and reports -------------------------------------------------------------------------


def first_time_at_or_below(curve: list[dict], target: float) -> float | None:
    """CPU seconds of the first curve point with validation perplexity <= target (None: never)."""
    return next((p["cpu_seconds"] for p in curve if p["validation_perplexity"] <= target), None)


def check_targets(results: list[dict], train_tokens: int) -> list[dict]:
    """Met / missed for the issue's targets on perplexity and CPU time, with the numbers (the warm-start
    targets for every warm-start-only row)."""
    arms = {r["arm"]: r for r in results}
    bigram, wsbp, gpt2 = (arms[k] for k in ("bigram", "SAFFU warm start + backprop", "GPT-2"))
    epoch_seconds = train_tokens / gpt2["train_tokens_per_cpu_second"]
    gpt2_final = gpt2["curve"][-1]["validation_perplexity"]
    reached = first_time_at_or_below(wsbp["curve"], gpt2_final)
    targets = []
    for ws in (r for r in results if r["arm"].startswith("SAFFU warm start") and "backprop" not in r["arm"]):
        targets += [
            {
                "target": f"{ws['arm']} alone: validation ppl below the bigram's",
                "met": ws["validation_perplexity"] < bigram["validation_perplexity"],
                "numbers": f"{ws['validation_perplexity']:.1f} vs bigram {bigram['validation_perplexity']:.1f}",
            },
            {
                "target": f"{ws['arm']} alone: validation ppl below GPT-2's (after its budget)",
                "met": ws["validation_perplexity"] < gpt2["validation_perplexity"],
                "numbers": f"{ws['validation_perplexity']:.1f} vs GPT-2 {gpt2['validation_perplexity']:.1f}",
            },
            {
                "target": f"{ws['arm']} alone: < 1/20 of the CPU time of one GPT-2 epoch",
                "met": ws["cpu_seconds"] < epoch_seconds / 20,
                "numbers": f"{ws['cpu_seconds']:.1f} CPU-s vs {epoch_seconds / 20:.1f} "
                f"(GPT-2 epoch = {train_tokens} tokens / {gpt2['train_tokens_per_cpu_second']:.0f} tok/CPU-s "
                f"= {epoch_seconds:.0f} CPU-s)",
            },
        ]
    return targets + [
        {
            "target": "warm start + backprop: <= 0.8x GPT-2's validation ppl at equal CPU time",
            "met": wsbp["validation_perplexity"] <= 0.8 * gpt2["validation_perplexity"],
            "numbers": f"{wsbp['validation_perplexity']:.1f} vs 0.8 x {gpt2['validation_perplexity']:.1f} = "
            f"{0.8 * gpt2['validation_perplexity']:.1f} (both at {gpt2['cpu_seconds']:.0f} CPU-s)",
        },
        {
            "target": "warm start + backprop: GPT-2's final ppl reached >= 10x sooner",
            "met": reached is not None and reached * 10 <= gpt2["cpu_seconds"],
            "numbers": (
                f"GPT-2 final (curve subset) {gpt2_final:.1f} at {gpt2['cpu_seconds']:.0f} CPU-s; SAFFU reached it "
                + (
                    f"at {reached:.1f} CPU-s ({gpt2['cpu_seconds'] / max(reached, 1e-9):.1f}x sooner)"
                    if reached
                    else "never"
                )
            ),
        },
    ]


def plot_curves(results: list[dict], path: Path, title: str) -> None:
    """Validation perplexity (curve subset) against CPU seconds; the bigram as a horizontal line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for result in results:
        if result["arm"] == "bigram":
            ax.axhline(result["validation_perplexity"], color="gray", linestyle="--", label="bigram (full validation)")
        elif result["curve"]:
            xs = [p["cpu_seconds"] for p in result["curve"]]
            ys = [p["validation_perplexity"] for p in result["curve"]]
            ax.plot(xs, ys, marker="o", markersize=3, label=result["arm"])
    ax.set_yscale("log")
    ax.set_xlabel("process CPU seconds (warm start + training)")
    ax.set_ylabel("validation perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_table(results: list[dict]) -> list[str]:
    """The main Markdown table: one row per arm."""
    lines = [
        "| arm | validation ppl | test ppl | CPU s | parameters | training tokens / CPU-s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['arm']} | {r['validation_perplexity']:.1f} | {r['test_perplexity']:.1f} | {r['cpu_seconds']:.1f} | "
            f"{r['parameters']:,} | {r['train_tokens_per_cpu_second']:,.0f} |"
        )
    return lines


def curve_table(results: list[dict]) -> list[str]:
    """Every curve point of every arm as Markdown rows."""
    lines = ["| arm | step | CPU s | validation ppl (curve subset) |", "|---|---:|---:|---:|"]
    for r in results:
        for p in r["curve"]:
            lines.append(f"| {r['arm']} | {p['step']} | {p['cpu_seconds']:.1f} | {p['validation_perplexity']:.1f} |")
    return lines


def header(title: str, settings: Settings, data, quick: bool) -> list[str]:
    """Title, command, commit, machine, data and settings lines of a report."""
    label = " (--quick: a reduced run, not the full benchmark)" if quick else ""
    return [
        f"# {title}{label}",
        "",
        f"- command: `{command_line()}`",
        f"- commit: `{git_revision()}`",
        f"- machine: {machine_description()}",
        f"- data: Brown, train {len(data['train'])} blocks, validation {len(data['validation'])}, "
        f"test {len(data['test'])} (blocks of {settings.block_size} tokens, one {settings.vocab_size}-token "
        "ByteLevel BPE for every arm)",
        "- time: process CPU seconds (`time.process_time()`, all threads summed); evaluation excluded; "
        "the warm start counts against the warm start + backprop arm's budget",
        f"- settings: `{json.dumps(asdict(settings))}`",
        "",
    ]


def write_report(path: Path, settings: Settings, data, results: list[dict], targets: list[dict], quick: bool):
    """benchmarks/RESULTS.md: the table, the targets (met / missed) and the curve."""
    lines = header("Brown benchmark: explicit warm start vs backprop vs GPT-2", settings, data, quick)
    lines += ["## Results", "", *results_table(results), ""]
    lines += [
        f"Perplexity is exact token-level, exp(sum NLL / predicted tokens), over the full packed splits. "
        f"Every backprop arm had a budget of {settings.budget_cpu_seconds:.0f} CPU-s. The bigram's parameters are "
        f"its V x V count table (alpha = {results[0]['alpha']} chosen on validation).",
        "",
        "## Targets (issue 5)",
        "",
        "| target | met? | numbers (this run) |",
        "|---|---|---|",
        *(f"| {t['target']} | {'met' if t['met'] else 'MISSED'} | {t['numbers']} |" for t in targets),
        "",
        "Reference points of the issue (other runs, for orientation only): bigram 305 in 0.3 s; "
        "GPT-2 2 x 128 one epoch 421 in 355 s wall on 2 cores.",
        "",
        f"## Validation perplexity against CPU seconds (first {settings.curve_blocks} validation blocks)",
        "",
        "![curves](brown.png)",
        "",
        *curve_table(results),
        "",
    ]
    path.write_text("\n".join(lines))


# -- data efficiency -----------------------------------------------------------------------------


def run_data_efficiency(settings: Settings, tokenizer, data) -> list[dict]:
    """Warm start + backprop vs backprop only on the first fraction of (shuffled) train blocks."""
    shuffled = data["train"].shuffle(seed=settings.seed)
    rows = []
    for fraction in settings.fractions:
        subset = {**data, "train": shuffled.select(range(max(1, round(fraction * len(shuffled)))))}
        torch.manual_seed(settings.seed)
        initial = saffu_model(tokenizer, **settings.saffu)
        warm = copy.deepcopy(initial)
        ws = run_warm_start_arm(warm, subset, settings)
        bp = run_backprop_arm("SAFFU backprop only", initial, subset, settings, settings.saffu_learning_rate)
        wsbp = run_backprop_arm(
            "SAFFU warm start + backprop", warm, subset, settings, settings.saffu_learning_rate, ws["cpu_seconds"]
        )
        tokens = int(subset["train"][:]["attention_mask"].sum())
        rows += [{**r, "fraction": fraction, "train_tokens": tokens} for r in (ws, bp, wsbp)]
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "curve"}), flush=True)
    return rows


def write_data_efficiency(path: Path, settings: Settings, data, rows: list[dict], quick: bool) -> None:
    """benchmarks/DATA_EFFICIENCY.md: one row per (train fraction, arm)."""
    lines = header("Brown data efficiency: warm start + backprop vs backprop only", settings, data, quick)
    lines += [
        f"Same validation set for every row; each backprop arm had {settings.budget_cpu_seconds:.0f} CPU-s.",
        "",
        "| train fraction | train tokens | arm | validation ppl | test ppl | CPU s | steps |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['fraction']:.0%} | {r['train_tokens']:,} | {r['arm']} | {r['validation_perplexity']:.1f} | "
            f"{r['test_perplexity']:.1f} | {r['cpu_seconds']:.1f} | {r.get('steps', 0)} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot_data_efficiency(rows: list[dict], path: Path) -> None:
    """Validation perplexity against training tokens, one line per arm."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        points = [(r["train_tokens"], r["validation_perplexity"]) for r in rows if r["arm"] == arm]
        ax.plot(*zip(*points, strict=True), marker="o", label=arm)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation perplexity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- entry point ---------------------------------------------------------------------------------


def run(settings: Settings, output_dir: Path, quick: bool = False, data_efficiency: bool = False) -> dict:
    """Run the benchmark (or the data-efficiency study) and write its files into `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, data = brown_data(
        settings.vocab_size, settings.block_size, settings.train_documents, settings.eval_documents
    )
    if data_efficiency:
        rows = run_data_efficiency(settings, tokenizer, data)
        write_data_efficiency(output_dir / "DATA_EFFICIENCY.md", settings, data, rows, quick)
        plot_data_efficiency(rows, output_dir / "data_efficiency.png")
        (output_dir / "data_efficiency.json").write_text(
            json.dumps({"settings": asdict(settings), "rows": rows}, indent=1)
        )
        return {"rows": rows}
    results = run_arms(settings, tokenizer, data)
    targets = check_targets(results, int(data["train"][:]["attention_mask"].sum()))
    write_report(output_dir / "RESULTS.md", settings, data, results, targets, quick)
    plot_curves(results, output_dir / "brown.png", "Brown" + (" (--quick)" if quick else ""))
    payload = {"settings": asdict(settings), "results": results, "targets": targets}
    (output_dir / "brown.json").write_text(json.dumps(payload, indent=1))
    return payload


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a reduced run (< 5 minutes on 2 cores)")
    parser.add_argument("--data-efficiency", action="store_true", help="10/30/100%% of train instead of the arms")
    parser.add_argument("--budget", type=float, help="CPU seconds per backprop arm (default: 300, quick: 40)")
    parser.add_argument("--warm-start-max-tokens", type=int, help="cap the tokens the warm start reads")
    parser.add_argument("--saffu-learning-rate", type=float, help="peak AdamW learning rate of the SAFFU arms")
    parser.add_argument("--gpt2-learning-rate", type=float, help="peak AdamW learning rate of the GPT-2 arm")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; CPU time sums over them and counts their spin-waits"
    )
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "benchmarks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    git_revision()  # the commit this run starts from (cached for the report)
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    if args.budget is not None:
        settings = replace(settings, budget_cpu_seconds=args.budget)
    for name in ("warm_start_max_tokens", "saffu_learning_rate", "gpt2_learning_rate"):
        if getattr(args, name) is not None:
            settings = replace(settings, **{name: getattr(args, name)})
    payload = run(settings, args.output_dir, quick=args.quick, data_efficiency=args.data_efficiency)
    print(json.dumps(payload.get("targets", payload.get("rows")), indent=1, default=str))
    return payload


if __name__ == "__main__":
    main()
