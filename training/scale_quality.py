"""Quality at scale (issue 25, item 4): the SAFFU against counting and GPT-2 on the mixed corpus, by source.

On /work/shared/data/mixed (about 4.5M BPE tokens of train text; one BPE of `--config`'s vocabulary trained
on mixed's whole train split, used by every arm and both sizes), at two training sizes (`--size`): the whole
train split, and a seeded random subset of its packed blocks holding 1M tokens (the same validation). Arms:

- `counts`: interpolated modified Kneser-Ney of orders 2, 3 and 4 (training/kneser_ney.py), one counting pass;
- `saffu`: the SAFFU of the config (default configs/brown.yaml: its model, rates and frozen phase), the explicit
  warm start alone (the curve's first point) and then backprop, cosine over the budget (`harness.train_warm_saffu`);
- `gpt2`: GPT-2 2x128 (AdamW at 1e-3, cosine over the budget).

Each backprop arm is one run whose curve is read at --budget-points CPU-s (process CPU time, warm start included,
evaluation excluded; `harness.CpuBudget`); at every point the model is scored on the overall validation subset
(a seeded random --eval-blocks of the packed validation blocks) and on each source's validation documents (packed
apart, a seeded random --source-blocks of them). Sources: mixed's files carry no labels, so a validation document
is `brown` when it is a line of Brown's validation split, `movie_reviews` when it is lower-cased throughout (the
only lower-cased, pre-tokenised source), and `other` otherwise (abc, state_union, webtext, inaugural, which hold
no mark that tells them apart reliably).

Every arm writes OUTPUT/scale_quality/SIZE-ARM.json at every curve point (partial results survive):

    python -m training.scale_quality --size 4.5M --arms counts saffu &
    python -m training.scale_quality --size 4.5M --arms gpt2 &
    python -m training.scale_quality --report     # SCALE_QUALITY.md, scale_quality.json, scale_quality.png

`--quick` runs a tiny version end to end (data from --data-dir, budget points 0.3 / 0.6 CPU-s) for the test.
"""

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_from_disk
from transformers import AutoTokenizer

from hf_saffu.data import DataArguments, tokenize_and_pack

from . import harness
from .kneser_ney import KneserNeyLM

MIXED_DIR = harness.REPO_ROOT.parent / "shared" / "data" / "mixed"
BROWN_DIR = harness.DEFAULT_DATA_DIR
ARMS = ("counts", "saffu", "gpt2")
ARM_NAMES = {"saffu": "SAFFU warm start + backprop", "gpt2": "GPT-2 2x128"}
SOURCES = ("brown", "movie_reviews", "other")
SIZES = {"4.5M": None, "1M": 1_000_000}  # train tokens (None: the whole train split)
KNESER_NEY_ORDERS = (2, 3, 4)


@dataclass(frozen=True)
class Settings:
    budget_points: tuple[float, ...] = (300.0, 1200.0, 2400.0)
    eval_blocks: int = 400  # overall validation subset (packed blocks, seeded random)
    source_blocks: int = 200  # per source
    batch_size: int = 32
    gpt2_learning_rate: float = 1e-3
    seed: int = 0


# -- data ---------------------------------------------------------------------------------------


def source_of(line: str, brown: set[str]) -> str:
    """The source of a mixed document (see the module docstring)."""
    if line in brown:
        return "brown"
    return "movie_reviews" if line == line.lower() else "other"


def source_documents(data_dir: Path, brown_dir: Path) -> dict[str, list[str]]:
    """mixed's validation documents by source (blank lines dropped)."""
    brown = set((brown_dir / "validation.txt").read_text().splitlines())
    by_source = {source: [] for source in SOURCES}
    for line in (data_dir / "validation.txt").read_text().splitlines():
        if line.strip():
            by_source[source_of(line, brown)].append(line)
    return by_source


def pack_texts(lines: list[str], tokenizer, block_size: int):
    """Documents packed into blocks with the benchmark's tokenizer, as the splits are packed."""
    args = DataArguments(train_files=["unused.txt"], block_size=block_size)
    return tokenize_and_pack(DatasetDict({"train": Dataset.from_dict({"text": lines})}), tokenizer, args)["train"]


def random_blocks(dataset, count: int, seed: int):
    """A seeded random subset of `count` blocks (all when there are fewer)."""
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    return dataset.select(sorted(order[: min(count, len(order))]))


def blocks_with_tokens(dataset, tokens: int, seed: int):
    """Seeded random train blocks holding about `tokens` real tokens."""
    real = dataset[:]["attention_mask"].sum(dim=1).tolist()
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    picked, total = [], 0
    for index in order:
        if total >= tokens:
            break
        picked.append(index)
        total += real[index]
    return dataset.select(sorted(picked))


def prepare(data_dir: Path, brown_dir: Path, recipe: harness.SaffuRecipe, cache: Path, settings: Settings):
    """(tokenizer, packed train / validation / test, validation blocks by source), cached under `cache` (the
    tokenizer is trained and the text packed once for every arm and size)."""
    if not (cache / "done").is_file():
        tokenizer, data = harness.load_data(data_dir, recipe.vocab_size, recipe.block_size)
        by_source = source_documents(data_dir, brown_dir)
        splits = {split: data[split].with_format(None) for split in data}
        splits.update(
            {f"source-{s}": pack_texts(lines, tokenizer, recipe.block_size) for s, lines in by_source.items() if lines}
        )
        DatasetDict(splits).save_to_disk(str(cache / "data"))
        tokenizer.save_pretrained(str(cache / "tokenizer"))
        (cache / "done").write_text(json.dumps({s: len(lines) for s, lines in by_source.items()}))
    tokenizer = AutoTokenizer.from_pretrained(str(cache / "tokenizer"))
    data = load_from_disk(str(cache / "data")).with_format("torch")
    documents = json.loads((cache / "done").read_text())
    sources = {
        s: random_blocks(data[f"source-{s}"], settings.source_blocks, settings.seed)
        for s in SOURCES
        if f"source-{s}" in data
    }
    return tokenizer, data, sources, documents


def sized(data, tokens: int | None, settings: Settings) -> DatasetDict:
    """train (whole, or random blocks of about `tokens`), validation = the overall eval subset, test = a subset as
    large."""
    train = data["train"] if tokens is None else blocks_with_tokens(data["train"], tokens, settings.seed)
    return DatasetDict(
        {
            "train": train,
            "validation": random_blocks(data["validation"], settings.eval_blocks, settings.seed),
            "test": random_blocks(data["test"], settings.eval_blocks, settings.seed),
        }
    )


# -- arms ---------------------------------------------------------------------------------------


def source_scores(model, sources: dict) -> dict:
    """Perplexity on each source's validation blocks."""
    return {source: harness.perplexity(model, blocks) for source, blocks in sources.items()}


def kneser_ney_scores(model: KneserNeyLM, data, sources: dict) -> dict:
    def ppl(blocks):
        columns = blocks[:]
        return model.perplexity(columns["input_ids"], columns["attention_mask"])

    return {"validation": ppl(data["validation"]), **{source: ppl(blocks) for source, blocks in sources.items()}}


def counts_arm(data, sources: dict, vocab_size: int) -> list[dict]:
    train, results = data["train"][:], []
    for order in KNESER_NEY_ORDERS:
        start = harness.CLOCK.now()
        model = KneserNeyLM(order, vocab_size).fit(train["input_ids"], train["attention_mask"])
        seconds = harness.CLOCK.now() - start
        results.append(
            {
                "arm": f"Kneser-Ney {order}-gram",
                "parameters": sum(len(level.keys) for level in model.levels),
                "cpu_seconds": seconds,
                "scores": kneser_ney_scores(model, data, sources),
            }
        )
    return results


class Writer:
    """The arm's results file, rewritten at every curve point with the per-source scores of that point."""

    def __init__(self, path: Path, head: dict, data, sources: dict):
        self.path, self.head, self.data, self.sources = path, head, data, sources
        self.points: list[dict] = []
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, result: dict, complete: bool) -> None:
        payload = {"run": harness.run_metadata(), **self.head, **result, "points": self.points, "complete": complete}
        self.path.write_text(json.dumps(payload, indent=1, default=str))

    def on_point(self, callback: harness.CpuBudget, model) -> None:
        point = callback.curve[-1]
        scored = {"validation": point["validation_perplexity"], **source_scores(model, self.sources)}
        self.points.append({**point, "scores": scored})
        self.write({"curve": callback.curve}, complete=False)


def run_arm(arm: str, size: str, settings: Settings, recipe, tokenizer, data, sources, out: Path) -> None:
    head = {
        "arm": ARM_NAMES.get(arm, arm),
        "key": f"{size}-{arm}",
        "size": size,
        "train_tokens": harness.real_tokens(data["train"]),
        "settings": asdict(settings),
        "recipe": asdict(recipe),
    }
    head["eval_tokens"] = {"validation": harness.real_tokens(data["validation"])}
    head["eval_tokens"].update({source: harness.real_tokens(blocks) for source, blocks in sources.items()})
    path = out / "scale_quality" / f"{size}-{arm}.json"
    if arm == "counts":
        Writer(path, head, data, sources).write({"results": counts_arm(data, sources, len(tokenizer))}, True)
        return
    budget = harness.Budget(
        max(settings.budget_points), settings.budget_points, settings.batch_size, len(data["validation"]), settings.seed
    )
    torch.manual_seed(recipe.seed)
    writer = Writer(path, head, data, sources)
    if arm == "saffu":
        model = harness.saffu_model(tokenizer, recipe.model)
        seconds, report = harness.warm_start(model, data["train"])
        head["parameters"] = harness.count_parameters(model)  # the warm start sized the tables to the data
        head["warm_start"] = {"cpu_seconds": seconds, "tokens": report.tokens}
        result = harness.train_warm_saffu(model, data, budget, recipe, seconds, on_point=writer.on_point)
    else:
        model = harness.gpt2_model(tokenizer, data["train"][0]["input_ids"].shape[0])
        head["parameters"] = harness.count_parameters(model)
        result = harness.train_with_budget(model, data, budget, settings.gpt2_learning_rate, on_point=writer.on_point)
    writer.write(result, complete=True)


# -- report -------------------------------------------------------------------------------------


def point_at(result: dict, seconds: float) -> tuple[dict | None, str]:
    """The first scored point at or after `seconds` CPU-s; a complete run that ended before keeps its last."""
    for point in result["points"]:
        if point["cpu_seconds"] >= seconds:
            return point, ""
    if result.get("complete") and result["points"]:
        return result["points"][-1], " (ended before)"
    return None, " (not reached)"


def fmt(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.1f}"


def size_lines(size: str, files: dict) -> tuple[list[str], list[dict]]:
    """The size's table: each arm (and budget point) by column of scores; and its rows as data."""
    columns = ["validation", *SOURCES]
    rows, data = [], []
    counts = files.get(f"{size}-counts")
    for r in counts["results"] if counts else []:
        rows.append(
            [
                r["arm"],
                "1 pass",
                f"{r['cpu_seconds']:.1f}",
                f"{r['parameters']:,}",
                *(fmt(r["scores"].get(c)) for c in columns),
            ]
        )
        data.append({"size": size, "arm": r["arm"], "budget": None, **r["scores"]})
    for arm in ("saffu", "gpt2"):
        result = files.get(f"{size}-{arm}")
        if result is None:
            continue
        parameters = f"{result['parameters']:,}" if "parameters" in result else ""
        if arm == "saffu" and result["points"]:
            first = result["points"][0]
            rows.append(
                [
                    "SAFFU warm start alone",
                    "warm start",
                    f"{first['cpu_seconds']:.1f}",
                    parameters,
                    *(fmt(first["scores"].get(c)) for c in columns),
                ]
            )
            data.append({"size": size, "arm": "SAFFU warm start alone", "budget": None, **first["scores"]})
        for budget in result["settings"]["budget_points"]:  # the arm's own (the 1M runs may be shorter)
            point, note = point_at(result, budget)
            cells = [fmt(point["scores"].get(c)) if point else "" for c in columns]
            at = f"{point['cpu_seconds']:.0f}" if point else ""
            rows.append(
                [
                    f"{result['arm']} @ {budget:.0f} CPU-s{note}",
                    f"step {point['step']}" if point else "",
                    at,
                    parameters,
                    *cells,
                ]
            )
            if point:
                data.append(
                    {"size": size, "arm": result["arm"], "budget": budget, "note": note.strip(), **point["scores"]}
                )
    header = ["arm", "training", "CPU-s", "parameters", "validation (overall)", *(f"{s}" for s in SOURCES)]
    return harness.markdown_table(header, rows), data


def gap_lines(data: list[dict]) -> list[str]:
    """The SAFFU's perplexity over the Kneser-Ney 3- and 4-gram's and over GPT-2's at the same budget point, per
    size and scored set: the warm start alone, then warm start + backprop at each budget point."""
    rows = []
    for size in SIZES:
        here = [d for d in data if d["size"] == size]
        kn3, kn4 = (next((d for d in here if d["arm"] == f"Kneser-Ney {n}-gram"), None) for n in (3, 4))
        budgets = sorted({d["budget"] for d in here if d["budget"] is not None})
        saffu = [("warm start alone", "SAFFU warm start alone", None)]
        saffu += [(f"+ backprop @ {b:g} CPU-s", ARM_NAMES["saffu"], b) for b in budgets]
        for label, arm, budget in saffu:
            ours = next((d for d in here if d["arm"] == arm and d["budget"] == budget), None)
            theirs = next((d for d in here if d["arm"] == ARM_NAMES["gpt2"] and d["budget"] == budget), None)
            for column in ("validation", *SOURCES):
                if ours is None or column not in ours:
                    continue
                ratios = [other[column] if other and column in other else None for other in (kn3, kn4, theirs)]
                cells = [f"{ours[column] / r:.3f}" if r else "" for r in ratios]
                rows.append([size, label, column, fmt(ours[column]), *cells])
    header = ["train size", "SAFFU", "scored on", "SAFFU ppl", "/ KN3", "/ KN4", "/ GPT-2 2x128 (same budget)"]
    return harness.markdown_table(header, rows, "lllrrrr")


def plot(files: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SIZES), figsize=(11, 4.5), sharey=True)
    for ax, size in zip(axes, SIZES, strict=True):
        counts = files.get(f"{size}-counts")
        for r in counts["results"] if counts else []:
            ax.axhline(r["scores"]["validation"], linestyle="--", linewidth=1, label=r["arm"])
        for arm in ("saffu", "gpt2"):
            result = files.get(f"{size}-{arm}")
            if result and result["points"]:
                xs = [p["cpu_seconds"] for p in result["points"]]
                ys = [p["scores"]["validation"] for p in result["points"]]
                ax.plot(xs, ys, marker="o", markersize=3, label=result["arm"])
        ax.set(yscale="log", xscale="log", xlabel="process CPU seconds", title=f"mixed, {size} train tokens")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("validation perplexity (overall subset)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out: Path, note: str = "") -> dict:
    files = {p.stem: json.loads(p.read_text()) for p in sorted((out / "scale_quality").glob("*.json"))}
    lines, data = [], []
    commands = sorted({(f["run"]["command"], f["run"]["commit"]) for f in files.values()})
    lines += ["- arms' commands and commits:", *(f"  - `{c}` at `{k}`" for c, k in commands)]
    lines += [f"- settings: `{s}`" for s in sorted({json.dumps(f["settings"]) for f in files.values()})]
    eval_tokens = next((f["eval_tokens"] for f in files.values() if "eval_tokens" in f), {})
    lines += [
        "- data: mixed (one document a line); one BPE of the config's vocabulary trained on mixed's whole train "
        "split for every arm and size; 1M = seeded random packed train blocks holding 1M tokens; every arm scored on "
        "the same sets: `validation` = a seeded random subset of the packed validation blocks, and each source's "
        "validation documents packed apart (a seeded random subset of their blocks); predicted tokens per set: "
        f"`{eval_tokens}`",
        "- sources: `brown` = a line of Brown's validation split; `movie_reviews` = lower-cased throughout; `other` = "
        "the rest (abc, state_union, webtext, inaugural: mixed's files carry no source labels)",
        "- CPU-s = the arm's process CPU time (warm start included, evaluation excluded), torch threads 1, at nice 19 "
        "on a 2-core machine shared with other jobs; each backprop arm is one run (cosine over its largest budget "
        "point) read at its budget points: the first curve point at or after each",
        "",
    ]
    for size in SIZES:
        here = {k: v for k, v in files.items() if v.get("size") == size}
        if not here:
            continue
        tokens = next(iter(here.values()))["train_tokens"]
        table, rows = size_lines(size, files)
        lines += [f"## {size}: {tokens:,} train tokens", "", *table, ""]
        data += rows
    lines += ["## Gaps (ratios of perplexities; below 1 = the SAFFU is better)", "", *gap_lines(data), ""]
    lines += [note, ""] if note else []
    lines += ["![curves](scale_quality.png)"]
    payload = {"rows": data, "arms": files}
    harness.write_results(
        out / "SCALE_QUALITY.md", out / "scale_quality.json", "Quality at scale: mixed", lines, payload
    )
    plot(files, out / "scale_quality.png")
    return payload


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser)
    parser.add_argument("--brown-dir", type=Path, default=BROWN_DIR, help="Brown's split (to label Brown documents)")
    parser.add_argument("--size", choices=SIZES, default="4.5M")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--budget-points", type=float, nargs="+", default=list(Settings.budget_points))
    parser.add_argument("--eval-blocks", type=int, default=Settings.eval_blocks)
    parser.add_argument("--source-blocks", type=int, default=Settings.source_blocks)
    parser.add_argument("--cache-dir", type=Path, help="tokenizer and packed data (default .cache/scale_quality)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets and eval subsets (the test's path)")
    parser.add_argument("--report", action="store_true", help="only write the report from the arms' files")
    parser.add_argument("--note", default="", help="with --report: a paragraph added after the tables")
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    if args.report:
        return report(args.output_dir, args.note)
    settings = Settings(tuple(args.budget_points), args.eval_blocks, args.source_blocks)
    if args.quick:
        settings = Settings((0.3, 0.6), 8, 4)
    data_dir = harness.data_dir_or_exit(args.data_dir or MIXED_DIR)
    recipe = harness.read_config(args.config)
    cache = args.cache_dir or harness.REPO_ROOT / ".cache" / "scale_quality"
    start = time.time()
    tokenizer, data, sources, documents = prepare(data_dir, args.brown_dir, recipe, cache, settings)
    print(f"data ready in {time.time() - start:.0f} s; validation documents by source {documents}", flush=True)
    tokens = SIZES[args.size]
    data = sized(data, tokens // 1000 if args.quick and tokens else tokens, settings)  # --quick: 1M -> 1k
    for arm in args.arms:
        run_arm(arm, args.size, settings, recipe, tokenizer, data, sources, args.output_dir)
    return report(args.output_dir)


if __name__ == "__main__":
    main()
