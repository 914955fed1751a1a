"""How the explicit warm start scales with the corpus: CPU time, peak memory, table sizes and saved-model size
at 1M and 4M tokens of real text and at 16M and 64M tokens of resampled text, plus the quality against an
unpruned Kneser-Ney trigram and the perplexity lost to pruning the tables to a memory budget.

    python -m training.scale [--data-dir ../shared/data/mixed] [--sizes 1M 4M 16M 64M] [--budgets-mb 8 16 35]

The SAFFU is the model section of the training config (default configs/brown.yaml), warm start only, on a
ByteLevel BPE trained once on the corpus's train split (`hf_saffu.data.train_tokenizer`, as `hf-saffu train`
and the harness train it). The tokenised documents and each size's packed blocks are cached on disk
(--cache-dir), so no size re-tokenises.

- Sizes up to the train split's token count are real text: whole documents in a seeded random order, packed
  as `hf_saffu.data.pack_token_ids` packs them, the first ceil(N / block size) blocks. Larger sizes resample
  the documents with replacement (seeded): honest for the cost (the same passes over N tokens), not for
  quality or table growth, since resampled text holds no n-gram the corpus does not.
- Each size runs in a fresh subprocess (`--worker`) that reads its blocks from disk one batch at a time, so
  its peak RSS (`resource.getrusage` maxrss, read right after the warm start) is the warm start's own.
- At the real sizes, validation perplexity (exact, over the packed validation blocks) of the warm-started
  SAFFU and of an unpruned interpolated modified Kneser-Ney trigram (training/kneser_ney.py) on the same blocks.
- Pruning (largest real size): the tables re-solved within each --budgets-mb (`SaffuConfig.pivot_table_mb`),
  entries kept by contribution (n ln(P / P_backoff), the shipped rule) and, for comparison, by frequency.

Writes benchmarks/SCALE.md, scale.json and scale.png (after every size, so partial results survive).
"""

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast

from hf_saffu import SaffuConfig
from hf_saffu import warm_start as warm_start_module
from hf_saffu.data import DataArguments, load_text_datasets, pack_token_ids, text_batches, train_tokenizer
from hf_saffu.warm_start import ExplicitWarmStart

from . import harness, scale_distributed
from .kneser_ney import KneserNeyLM

DEFAULT_DATA = harness.REPO_ROOT.parent / "shared" / "data" / "mixed"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "hf_saffu_scale"
PACKING_BATCH = 10_000  # documents per packing batch, as hf_saffu.data packs them


def parse_size(text: str) -> int:
    """'4M' -> 4_000_000, '16k' -> 16_000, '1000' -> 1000."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_name(tokens: int) -> str:
    return f"{tokens / 1e6:g}M" if tokens >= 10**6 else f"{tokens / 1e3:g}k"


# -- data: the tokenizer, the tokenised documents and each size's blocks, cached on disk --------------------------


def prepare(data_dir: Path, recipe: harness.SaffuRecipe, cache: Path) -> Path:
    """The cache folder of this corpus, tokenizer and block size: tokenizer, documents (flat ids + offsets),
    packed validation blocks. Built once."""
    folder = cache / f"{data_dir.resolve().name}-v{recipe.vocab_size}-b{recipe.block_size}"
    if (folder / "documents.npz").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"{split}_files": [str(data_dir / f"{split}.txt")] for split in ("train", "validation")}
    data_args = DataArguments(**files, tokenizer_vocab_size=recipe.vocab_size, block_size=recipe.block_size)
    raw = load_text_datasets(data_args)
    tokenizer = train_tokenizer(text_batches(raw["train"], "text"), recipe.vocab_size)
    if len(tokenizer) > 2**16:
        raise SystemExit(f"error: the blocks are stored as uint16; vocab_size {len(tokenizer)} is too large")
    tokenizer.save_pretrained(folder / "tokenizer")
    ids = [tokenizer(texts, add_special_tokens=False)["input_ids"] for texts in text_batches(raw["validation"], "text")]
    validation = pack_token_ids(
        [doc for batch in ids for doc in batch], recipe.block_size, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    np.savez(folder / "validation.npz", **{key: np.asarray(value, dtype=np.int64) for key, value in validation.items()})
    documents = [
        doc
        for texts in text_batches(raw["train"], "text")
        for doc in tokenizer(texts, add_special_tokens=False)["input_ids"]
    ]
    offsets = np.cumsum([0, *map(len, documents)])
    flat = np.fromiter((token for doc in documents for token in doc), dtype=np.uint16, count=int(offsets[-1]))
    np.savez(folder / "documents.npz", flat=flat, offsets=offsets)
    return folder


def document_order(num_documents: int, resample: bool, seed: int):
    """Document indices: a seeded permutation (each once), or draws with replacement without end."""
    rng = np.random.default_rng(seed)
    if not resample:
        yield from rng.permutation(num_documents)
        return
    while True:
        yield from rng.integers(0, num_documents, 100_000)


def build_blocks(folder: Path, tokens: int, block_size: int, eos: int, pad: int, seed: int) -> tuple[Path, bool]:
    """The first ceil(tokens / block_size) blocks of the documents in `document_order` (resampled when the corpus
    is too small), written as raw uint16 ids (`.ids`) and uint8 masks (`.mask`); (file stem, resampled)."""
    documents = np.load(folder / "documents.npz")
    flat, offsets = documents["flat"], documents["offsets"]
    resample = tokens > len(flat) + len(offsets) - 1  # the corpus's tokens, an EOS after each document
    stem = folder / f"blocks-{tokens}"
    if stem.with_suffix(".mask").is_file():
        return stem, resample
    wanted, written = math.ceil(tokens / block_size), 0
    order = document_order(len(offsets) - 1, resample, seed)
    eos_row = np.asarray([eos], dtype=np.uint16)
    with open(stem.with_suffix(".ids.part"), "wb") as ids_file, open(stem.with_suffix(".mask.part"), "wb") as mask_file:
        while written < wanted:
            batch = [index for _, index in zip(range(PACKING_BATCH), order, strict=False)]
            if not batch:
                break
            stream = np.concatenate([part for i in batch for part in (flat[offsets[i] : offsets[i + 1]], eos_row)])
            blocks = min(math.ceil(len(stream) / block_size), wanted - written)
            ids = np.full(blocks * block_size, pad, dtype=np.uint16)
            used = min(len(stream), len(ids))
            ids[:used] = stream[:used]
            mask = np.zeros(len(ids), dtype=np.uint8)
            mask[:used] = 1
            ids.tofile(ids_file)
            mask.tofile(mask_file)
            written += blocks
    stem.with_suffix(".ids.part").rename(stem.with_suffix(".ids"))
    stem.with_suffix(".mask.part").rename(stem.with_suffix(".mask"))
    return stem, resample


class BlockFile:
    """Re-iterable batches of the blocks stored at `stem` (.ids, .mask), read from disk one batch at a time."""

    def __init__(self, stem: Path, block_size: int, batch_size: int):
        self.stem, self.block_size, self.batch_size = stem, block_size, batch_size
        self.blocks = stem.with_suffix(".mask").stat().st_size // block_size

    def __iter__(self):
        with open(self.stem.with_suffix(".ids"), "rb") as ids_file, open(self.stem.with_suffix(".mask"), "rb") as masks:
            for start in range(0, self.blocks, self.batch_size):
                shape = (min(self.batch_size, self.blocks - start), self.block_size)
                ids = np.fromfile(ids_file, dtype=np.uint16, count=shape[0] * shape[1]).reshape(shape)
                mask = np.fromfile(masks, dtype=np.uint8, count=shape[0] * shape[1]).reshape(shape)
                yield {"input_ids": torch.from_numpy(ids.astype(np.int64)), "attention_mask": torch.from_numpy(mask)}

    def whole(self) -> tuple[torch.Tensor, torch.Tensor]:
        batches = list(self)
        return torch.cat([b["input_ids"] for b in batches]), torch.cat([b["attention_mask"] for b in batches])


def validation_dataset(folder: Path, blocks: int | None = None, seed: int = 0) -> Dataset:
    """The packed validation blocks; with `blocks`, a seeded random subset of that many (in order)."""
    arrays = np.load(folder / "validation.npz")
    rows = np.arange(len(arrays["input_ids"]))
    if blocks is not None and blocks < len(rows):
        rows = np.sort(np.random.default_rng(seed).permutation(len(rows))[:blocks])
    return Dataset.from_dict({key: arrays[key][rows] for key in arrays.files}).with_format("torch")


# -- one size, in a fresh process --------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def table_megabytes(model) -> float:
    tables = model.ngram_tables
    return sum(x.numel() * x.element_size() for t in tables for x in (*t.parameters(), *t.buffers())) / 2**20


def by_frequency(keys, counts, values, capacity: int):
    """The rule contribution pruning replaced, for comparison: the `capacity` most frequent entries (values
    solved over all entries, as the shipped rule keeps them)."""
    if len(keys) <= capacity:
        return keys, values
    kept = torch.sort(torch.argsort(counts, descending=True, stable=True)[:capacity]).values
    return keys[kept], values[kept]


def run_worker(args, recipe: harness.SaffuRecipe) -> dict:
    """Warm-start the size's model and measure it (the parent reads the JSON this writes)."""
    folder, stem = args.folder, args.stem
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    torch.manual_seed(recipe.seed)
    model = harness.saffu_model(tokenizer, recipe.model)
    batches = BlockFile(stem, recipe.block_size, recipe.warm_start_recipe.warm_start_batch_size)
    rss_before = peak_rss_mb()
    cpu, wall = time.process_time(), time.perf_counter()
    run = ExplicitWarmStart(model, batches, show_progress=False)
    report = run.run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = {
        "tokens": report.tokens,
        "blocks": batches.blocks,
        "warm_start_cpu_seconds": cpu,
        "warm_start_wall_seconds": wall,
        "cpu_microseconds_per_token": 1e6 * cpu / report.tokens,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_warm_start_mb": rss_before,
        "step_seconds": report.seconds,
        "pivot_bigrams": report.pivot_bigrams,
        "pivot_trigrams": report.pivot_trigrams,
        "table_mb": table_megabytes(model),
        "parameters": harness.count_parameters(model),
    }
    with tempfile.TemporaryDirectory() as saved:
        model.save_pretrained(saved)
        result["saved_model_mb"] = sum(p.stat().st_size for p in Path(saved).iterdir()) / 2**20
    if args.evaluate:
        validation = validation_dataset(folder, args.eval_blocks, recipe.seed)
        result["validation_tokens"] = int(validation[:]["labels"][:, 1:].ne(-100).sum())
        result["validation_perplexity"] = harness.perplexity(model, validation)
        ids, mask = batches.whole()
        kneser_ney = KneserNeyLM(3, len(tokenizer)).fit(ids, mask)
        result["kneser_ney_trigram_perplexity"] = kneser_ney.perplexity(
            validation[:]["input_ids"], validation[:]["attention_mask"]
        )
        if args.budgets_mb:
            result["pruning"] = pruning_curve(run, model, validation, args.budgets_mb)
    return result


def pruning_curve(run: ExplicitWarmStart, model, validation, budgets: list[float]) -> list[dict]:
    """The tables re-solved within each budget, by contribution and by frequency: size and validation perplexity."""
    triples = run.count_ngrams(3)
    shipped, points = warm_start_module.strongest_entries, []
    for rule, select in (("contribution", shipped), ("frequency", by_frequency)):
        for budget in budgets:
            warm_start_module.strongest_entries = select
            try:
                model.config.pivot_table_mb = budget
                run.solve_tables(triples)
            finally:
                warm_start_module.strongest_entries = shipped
            points.append(
                {
                    "rule": rule,
                    "budget_mb": budget,
                    "pairs_kept": run.report.pivot_bigrams["pairs_kept"],
                    "triples_kept": run.report.pivot_trigrams["triples_kept"],
                    "table_mb": table_megabytes(model),
                    "parameters": harness.count_parameters(model),
                    "validation_perplexity": harness.perplexity(model, validation),
                }
            )
            print(f"pruning by {rule}, {budget:g} MB: {points[-1]['validation_perplexity']:.2f}", flush=True)
    return points


# -- the parent: every size in its own process, the report ---------------------------------------------------------


def measure_size(args, tokens: int, folder: Path, recipe: harness.SaffuRecipe, tokenizer) -> dict:
    """Build the size's blocks (cached) and measure its warm start in a fresh subprocess."""
    stem, resampled = build_blocks(
        folder, tokens, recipe.block_size, tokenizer.eos_token_id, tokenizer.pad_token_id, recipe.seed
    )
    output = stem.with_suffix(".json")
    command = [
        *(sys.executable, "-m", "training.scale", "--worker", str(output), "--folder", str(folder)),
        *("--stem", str(stem), "--config", str(args.config), "--threads", str(args.threads)),
        *(["--eval-blocks", str(args.eval_blocks)] if args.eval_blocks else []),
    ]
    if not resampled:
        command += ["--evaluate", "--budgets-mb", *(map(str, args.budgets_mb) if tokens == args.prune_at else [])]
    subprocess.run(command, cwd=harness.REPO_ROOT, check=True)
    result = json.loads(output.read_text())
    return {"size": size_name(tokens), "requested_tokens": tokens, "resampled": resampled, **result}


def targets(results: list[dict]) -> list[dict]:
    """The issue's targets, met / MISSED / not measured, from the sizes measured so far."""
    by_size = {r["size"]: r for r in results}
    first, last, four = by_size.get("1M"), by_size.get("64M"), by_size.get("4M")
    rows = []
    if first and last:
        ratio = last["cpu_microseconds_per_token"] / first["cpu_microseconds_per_token"]
        rows.append(("CPU time per token within 1.5x from 1M to 64M tokens", ratio <= 1.5, f"64M / 1M = {ratio:.2f}x"))
    else:
        rows.append(("CPU time per token within 1.5x from 1M to 64M tokens", None, "needs 1M and 64M"))
    if four and last:
        ratio = last["peak_rss_mb"] / four["peak_rss_mb"]
        numbers = f"{last['peak_rss_mb']:.0f} MB vs {four['peak_rss_mb']:.0f} MB = {ratio:.2f}x"
        rows.append(("peak RSS at 64M within 2x of 4M", ratio <= 2, numbers))
    else:
        rows.append(("peak RSS at 64M within 2x of 4M", None, "needs 4M and 64M"))
    if last:
        numbers = f"{last['warm_start_wall_seconds']:.0f} s wall, {last['warm_start_cpu_seconds']:.0f} CPU-s"
        rows.append(("64M-token warm start under 15 minutes", last["warm_start_wall_seconds"] < 900, numbers))
    else:
        rows.append(("64M-token warm start under 15 minutes", None, "needs 64M"))
    for r in results:
        if "kneser_ney_trigram_perplexity" in r:
            saffu, kn = r["validation_perplexity"], r["kneser_ney_trigram_perplexity"]
            rows.append((f"{r['size']}: warm start <= unpruned KN trigram", saffu <= kn, f"{saffu:.1f} vs {kn:.1f}"))
    return [{"target": t, "met": met, "numbers": n} for t, met, n in rows]


def report_lines(args, recipe, results: list[dict]) -> list[str]:
    rows = []
    for r in results:
        b, t = r["pivot_bigrams"], r["pivot_trigrams"]
        rows.append(
            [
                r["size"] + (" (resampled)" if r["resampled"] else ""),
                f"{r['tokens']:,}",
                f"{r['warm_start_cpu_seconds']:.1f}",
                f"{r['warm_start_wall_seconds']:.1f}",
                f"{r['cpu_microseconds_per_token']:.2f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{b['pairs_kept']:,} / {b['pairs_seen']:,}",
                f"{t['triples_kept']:,} / {t['triples_seen']:,}",
                f"{r['table_mb']:.1f}",
                f"{r['saved_model_mb']:.1f}",
                f"{r['validation_perplexity']:.1f}" if "validation_perplexity" in r else "-",
                f"{r['kneser_ney_trigram_perplexity']:.1f}" if "kneser_ney_trigram_perplexity" in r else "-",
            ]
        )
    header = [
        "size", "tokens", "warm-start CPU-s", "wall s", "CPU us / token", "peak RSS MB", "pairs kept / seen",
        "triples kept / seen", "tables MB", "saved model MB", "SAFFU validation", "KN trigram validation",
    ]  # fmt: skip
    lines = [
        f"- data: `{args.data_dir}`; SAFFU: the model section of `{args.config.name}` (`pivot_table_mb` "
        f"{recipe.model.get('pivot_table_mb', SaffuConfig().pivot_table_mb)}), warm start only, torch threads "
        f"{args.threads}; BPE "
        f"{recipe.vocab_size} trained once on the train split; blocks of {recipe.block_size}",
        "- real sizes: whole train documents in a seeded random order (no repeats); sizes past the corpus: documents "
        "resampled with replacement. **Resampled sizes are honest for cost (the same passes over as many tokens), "
        "not for quality or table growth**: they hold no n-gram the corpus lacks, so their distinct n-grams (and "
        "the counting memory that follows them) stop growing at the corpus's; real text of 64M tokens would hold "
        "more distinct n-grams, and the budget bounds the tables, not the counting.",
        "- each size in a fresh process reading its blocks from disk one batch at a time; peak RSS = "
        "`getrusage` maxrss right after the warm start (it includes Python, torch and the process's imports: "
        f"{results[0]['rss_before_warm_start_mb']:.0f} MB before the warm start at {results[0]['size']})"
        if results
        else "",
        f"- validation: {'all' if not args.eval_blocks else f'a seeded random {args.eval_blocks}'} packed "
        f"validation blocks ({next((r['validation_tokens'] for r in results if 'validation_tokens' in r), 0):,} "
        "predicted tokens), the same for the SAFFU and the KN trigram",
        "- CPU-s = process CPU time; wall s on this shared 2-core machine (other jobs ran at the same time)",
        "",
        *harness.markdown_table(header, rows),
        "",
        "## Targets",
        "",
        *harness.targets_table(targets(results)),
    ]
    for r in (r for r in results if r.get("pruning")):
        lines += [
            "",
            f"## Pruning at {r['size']} tokens: perplexity lost against table size",
            "",
            f"Unpruned ({r['table_mb']:.1f} MB of tables): validation {r['validation_perplexity']:.2f}. Each row "
            "re-solves both tables from the same counts within the budget (`pivot_table_mb`; the bigram table is "
            "sized first); `contribution` keeps the entries of largest n ln(P / P_backoff) (shipped), `frequency` "
            "the most frequent (the previous rule; here with the values solved over all entries).",
            "",
            *harness.markdown_table(
                ["rule", "budget MB", "pairs kept", "triples kept", "tables MB", "validation", "lost to pruning"],
                [
                    [
                        p["rule"],
                        f"{p['budget_mb']:g}",
                        f"{p['pairs_kept']:,}",
                        f"{p['triples_kept']:,}",
                        f"{p['table_mb']:.1f}",
                        f"{p['validation_perplexity']:.2f}",
                        f"{100 * (p['validation_perplexity'] / r['validation_perplexity'] - 1):+.1f}%",
                    ]
                    for p in r["pruning"]
                ],
            ),
        ]
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    tokens = [r["tokens"] for r in results]
    axes[0].plot(tokens, [r["cpu_microseconds_per_token"] for r in results], marker="o")
    axes[0].set(xscale="log", xlabel="training tokens", ylabel="warm-start CPU us / token", title="CPU per token")
    axes[1].plot(tokens, [r["peak_rss_mb"] for r in results], marker="o", label="peak RSS")
    axes[1].plot(tokens, [r["table_mb"] for r in results], marker="s", label="tables")
    axes[1].set(xscale="log", xlabel="training tokens", ylabel="MB", title="memory")
    axes[1].legend()
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylim(bottom=0)
    for pruned in (r for r in results if r.get("pruning")):
        for rule in ("contribution", "frequency"):
            points = [p for p in pruned["pruning"] if p["rule"] == rule]
            axes[2].plot(
                [p["table_mb"] for p in points],
                [p["validation_perplexity"] for p in points],
                marker="o",
                label=f"{pruned['size']}, {rule}",
            )
        axes[2].axhline(
            pruned["validation_perplexity"], linestyle="--", color="gray", label=f"{pruned['size']} unpruned"
        )
        axes[2].axhline(
            pruned["kneser_ney_trigram_perplexity"], linestyle=":", color="black", label=f"{pruned['size']} KN"
        )
        axes[2].set(xscale="log", xlabel="table MB", ylabel="validation perplexity", title="pruning")
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(args, recipe, results: list[dict], note: str = "", run: dict | None = None) -> None:
    """SCALE.md, scale.json and the plot; `run`: the metadata to name (default: this run's)."""
    out = args.output_dir
    lines = report_lines(args, recipe, results) + ([f"\n{note}"] if note else [])
    distributed = out / "scale_distributed.json"
    if distributed.is_file():  # issue 25, item 6: training/scale_distributed.py's results
        title = "## Past one machine: the warm start in 1 and 2 processes (`python -m training.scale_distributed`)"
        lines += ["", title, "", *scale_distributed.section_lines(json.loads(distributed.read_text()))]
    harness.write_results(
        out / "SCALE.md",
        out / "scale.json",
        "Scale: the explicit warm start from 1M to 64M tokens",
        lines,
        {"settings": {k: str(v) for k, v in vars(args).items()}, "results": results, "targets": targets(results)},
        run,
    )
    if results:
        plot(results, out / "scale.png")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser)
    parser.add_argument("--sizes", nargs="+", default=["1M", "4M", "16M", "64M"], help="training tokens per size")
    parser.add_argument("--budgets-mb", type=float, nargs="*", default=[8.0, 16.0, 35.0], help="pruning budgets")
    parser.add_argument("--prune-at", default="4M", help="the (real) size whose tables are pruned to the budgets")
    parser.add_argument("--eval-blocks", type=int, help="score a seeded random subset of the validation blocks")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="tokenizer, ids and blocks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (2k real, 12k resampled), one budget")
    parser.add_argument("--rewrite", action="store_true", help="rewrite SCALE.md and the plot from scale.json")
    parser.add_argument("--note", default="", help="with --rewrite: a note appended to the report")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # one size, in a fresh process
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stem", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    recipe = harness.read_config(args.config)
    if args.worker is not None:
        result = run_worker(args, recipe)
        args.worker.write_text(json.dumps(result, indent=1))
        return [result]
    if args.rewrite:  # the report of the run that wrote scale.json, with its own command and commit
        payload = json.loads((args.output_dir / "scale.json").read_text())
        args.data_dir, args.eval_blocks = Path(payload["settings"]["data_dir"]), payload["settings"]["eval_blocks"]
        args.eval_blocks = None if args.eval_blocks == "None" else int(args.eval_blocks)
        note = f"(This report was regenerated from scale.json by `python -m training.scale --rewrite`.) {args.note}"
        write_report(args, recipe, payload["results"], note, run=payload["run"])
        return payload["results"]
    if args.quick:
        args.sizes, args.budgets_mb, args.prune_at = ["2k", "12k"], [0.005], "2k"
    args.data_dir = DEFAULT_DATA if args.data_dir is None else args.data_dir
    harness.data_dir_or_exit(args.data_dir)
    args.prune_at = parse_size(args.prune_at)
    folder = prepare(args.data_dir, recipe, args.cache_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    results = []
    for size in sorted(map(parse_size, args.sizes)):
        results.append(measure_size(args, size, folder, recipe, tokenizer))
        write_report(args, recipe, results)
        print(json.dumps({k: v for k, v in results[-1].items() if k != "pruning"}), flush=True)
    return results


if __name__ == "__main__":
    main()
