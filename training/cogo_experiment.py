"""CoGO experiment: closed-form global optimizers vs. what gradient descent finds (docs/DESIGN.md, section 7).

1. Constructions: every kind of `hf_saffu.experimental.cogo.construct` for each d in --construction-moduli,
   loaded into `CoGOForModularAddition` in float64; loss and accuracy on all d² pairs, node
   counts, seconds to construct.
2. The published protocol: d = 23, q = 512, 90/10 split of the d² pairs, Adam (lr 0.01, L2
   weight decay in {1e-5, 5e-5, 1e-4, 2e-4, 5e-4}), full batch, 10,000 steps, several seeds.
   Each trained net is read frequency by frequency (`hf_saffu.experimental.cogo.analysis`): dominant
   frequency per node, factorisation of each block into building blocks, pattern match after
   normalising scale; the share of blocks matching a construction and the block orders are
   tabulated against weight decay.

Writes benchmarks/COGO.md and cogo.json (or --output and its .json) with the command, the git commit
and the machine, after every finished run.

    python -m training.cogo_experiment            # full protocol: a few minutes on an idle 2-core CPU
    python -m training.cogo_experiment --quick    # 1 seed, 3,000 steps, d ∈ {7, 23}: minutes
"""

import argparse
import ctypes
import json
import math
import multiprocessing
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from hf_saffu.experimental.cogo import (
    CONSTRUCTION_KINDS,
    CoGOConfig,
    CoGOForModularAddition,
    accuracy,
    all_pairs,
    centred_l2_loss,
    expected_num_nodes,
    split_pairs,
)
from hf_saffu.experimental.cogo.analysis import read_network, summarize_readings

from . import harness

PUBLISHED_WEIGHT_DECAYS = [1e-5, 5e-5, 1e-4, 2e-4, 5e-4]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modulus", type=int, default=23, help="d of the training runs")
    parser.add_argument("--hidden-size", type=int, default=512, help="q of the training runs")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--weight-decays", type=float, nargs="+", default=PUBLISHED_WEIGHT_DECAYS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--construction-moduli", type=int, nargs="+", default=[7, 23, 71, 127])
    parser.add_argument("--threshold", type=float, default=0.05, help="dead-node threshold on |z|")
    parser.add_argument("--factor-tolerance", type=float, default=0.1, help="relative spread of factor ratios")
    parser.add_argument("--pattern-tolerance", type=float, default=0.1, help="distance to a building block")
    parser.add_argument("--workers", type=int, default=2, help="training processes (one thread each)")
    parser.add_argument("--output", type=Path, default=harness.DEFAULT_OUTPUT_DIR / "COGO.md")
    parser.add_argument("--save-dir", type=Path, default=None, help="save every trained model (and run.json) here")
    parser.add_argument(
        "--reuse-saved", action="store_true", help="load runs already in --save-dir instead of training them again"
    )
    parser.add_argument(
        "--quick", action="store_true", help="defaults to 1 seed, 3,000 steps, constructions for d ∈ {7, 23}"
    )
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(seeds=[1], steps=3_000, construction_moduli=[7, 23])
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@torch.no_grad()
def evaluate(model: CoGOForModularAddition, pairs: torch.Tensor, labels: torch.Tensor, chunk: int = 1024):
    """Loss and accuracy over the given pairs, in chunks (perfect memorization at d = 127 has
    16,129 hidden nodes)."""
    outputs = torch.cat([model(pairs[start : start + chunk]).logits for start in range(0, len(pairs), chunk)])
    return centred_l2_loss(outputs, labels).item(), accuracy(outputs, labels)


def run_constructions(moduli: list[int]) -> list[dict]:
    rows = []
    for modulus in moduli:
        pairs, labels = all_pairs(modulus)
        for kind in CONSTRUCTION_KINDS:
            start = time.perf_counter()
            model = CoGOForModularAddition.from_construction(modulus, kind=kind)
            construct_seconds = time.perf_counter() - start
            loss, acc = evaluate(model, pairs, labels)
            rows.append(
                {
                    "modulus": modulus,
                    "kind": kind,
                    "nodes": model.config.hidden_size,
                    "expected_nodes": expected_num_nodes(modulus, kind),
                    "loss": loss,
                    "accuracy": acc,
                    "construct_seconds": construct_seconds,
                }
            )
            log(f"construction d={modulus} {kind}: loss {loss:.3e}, accuracy {acc:.4f}")
    return rows


def keep_freed_memory() -> None:
    """Stop glibc from returning freed blocks to the OS after every step: on this small VM the
    page faults of re-mapping ~1 MB activations cost more than the arithmetic."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    mmap_threshold, trim_threshold = -3, -1
    libc.mallopt(mmap_threshold, 1 << 30)
    libc.mallopt(trim_threshold, 1 << 30)


def train_model(job: dict) -> tuple[CoGOForModularAddition, float]:
    """Adam on the full training batch; returns the model and the seconds spent in the loop."""
    torch.manual_seed(job["seed"])
    model = CoGOForModularAddition(CoGOConfig(modulus=job["modulus"], hidden_size=job["hidden_size"]))
    data = split_pairs(job["modulus"], job["test_fraction"], job["seed"])
    optimizer = torch.optim.Adam(model.parameters(), lr=job["learning_rate"], weight_decay=job["weight_decay"])
    start = time.perf_counter()
    for _ in range(job["steps"]):
        loss = model(data["train_pairs"], labels=data["train_labels"]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model, time.perf_counter() - start


def train_one(job: dict) -> dict:
    """One run of the published protocol; returns its metrics and its per-frequency reading."""
    torch.set_num_threads(1)
    keep_freed_memory()
    run_name = f"wd{job['weight_decay']:g}_seed{job['seed']}"
    run_dir = None if job["save_dir"] is None else Path(job["save_dir"]) / run_name
    if job["reuse_saved"] and run_dir is not None and (run_dir / "run.json").exists():
        model = CoGOForModularAddition.from_pretrained(run_dir)
        record = json.loads((run_dir / "run.json").read_text())
    else:
        model, train_seconds = train_model(job)
        record = {"train_seconds": train_seconds, "machine": job["machine"], "command": job["command"]}
        if run_dir is not None:
            model.save_pretrained(run_dir)
            (run_dir / "run.json").write_text(json.dumps({**job, "save_dir": None, **record}))

    model.eval()
    data = split_pairs(job["modulus"], job["test_fraction"], job["seed"])
    train_loss, train_accuracy = evaluate(model, data["train_pairs"], data["train_labels"])
    test_loss, test_accuracy = evaluate(model, data["test_pairs"], data["test_labels"])
    start = time.perf_counter()
    readings = read_network(
        model.fourier_weights(), job["threshold"], job["factor_tolerance"], job["pattern_tolerance"]
    )
    read_seconds = time.perf_counter() - start
    return {
        **{key: job[key] for key in ("weight_decay", "seed")},
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "train_seconds": record["train_seconds"],
        "trained_on": record["machine"],
        "training_command": record["command"],
        "read_seconds": read_seconds,
        "readings": readings,
        "summary": summarize_readings(readings),
    }


def run_training(args: argparse.Namespace, on_result) -> list[dict]:
    """All (weight decay, seed) runs, seed by seed so that a partial sweep covers every weight
    decay; `on_result(results_so_far)` is called after each run."""
    jobs = [
        {
            "modulus": args.modulus,
            "hidden_size": args.hidden_size,
            "test_fraction": args.test_fraction,
            "learning_rate": args.learning_rate,
            "weight_decay": weight_decay,
            "seed": seed,
            "steps": args.steps,
            "threshold": args.threshold,
            "factor_tolerance": args.factor_tolerance,
            "pattern_tolerance": args.pattern_tolerance,
            "save_dir": args.save_dir,
            "reuse_saved": args.reuse_saved,
            "command": harness.command_line(),
            "machine": harness.machine_description(),
        }
        for seed in args.seeds
        for weight_decay in args.weight_decays
    ]
    results = []
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for result in pool.imap_unordered(train_one, jobs):
            summary = result["summary"]
            log(
                f"wd={result['weight_decay']:g} seed={result['seed']}: test acc {result['test_accuracy']:.4f}, "
                f"test loss {result['test_loss']:.2e}, match {summary['matched_blocks']}/"
                f"{summary['used_frequencies']}, orders {summary['order_counts']}, "
                f"{result['train_seconds']:.0f}s"
            )
            results.append(result)
            results.sort(key=lambda result: (result["weight_decay"], result["seed"]))
            on_result(results)
        pool.close()
        pool.join()
    return results


def mean_and_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    variance = sum((value - mean) ** 2 for value in values) / max(len(values) - 1, 1)
    return mean, math.sqrt(variance)


def median(values: list[float], digits: int = 4) -> str:
    if not values:
        return "—"
    ordered = sorted(values)
    middle = len(ordered) // 2
    value = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return f"{value:.{digits}f}"


def order_bucket(order: int) -> str:
    return str(order) if order in (0, 4, 6) else ("1-3" if order < 4 else ("5" if order == 5 else "≥7"))


ORDER_BUCKETS = ["0", "1-3", "4", "5", "6", "≥7"]


TITLE = "CoGO: composed global optimizers vs gradient descent (modular addition)"


def render_report(
    args: argparse.Namespace, constructions: list[dict], results: list[dict], seconds: float
) -> list[str]:
    planned = len(args.weight_decays) * len(args.seeds)
    status = "complete" if len(results) == planned else f"PARTIAL, {len(results)} of {planned} runs finished"
    lines = [
        *(
            f"- Gradient-descent runs trained earlier by `{command}` on: {machine} (models and training "
            "seconds loaded from --save-dir; losses, accuracies and readings recomputed here)"
            for command, machine in sorted({(r["training_command"], r["trained_on"]) for r in results})
            if (command, machine) != (harness.command_line(), harness.machine_description())
        ),
        f"- wall time {seconds:.0f} s; status: {status}",
        "",
        "## 1. Closed-form constructions (float64, all d² pairs)",
        "",
        "| d | kind | nodes | §6 node count | loss | accuracy | construct s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in constructions:
        lines.append(
            f"| {row['modulus']} | {row['kind']} | {row['nodes']} | {row['expected_nodes']} | {row['loss']:.3e} "
            f"| {row['accuracy']:.4f} | {row['construct_seconds']:.4f} |"
        )
    residual_rows = [row for row in constructions if row["kind"] == "order4_uncompensated"]
    if residual_rows:
        lines += [
            "",
            "Uncompensated all-order-4 residual vs the predicted 2(d−1)/d: "
            + ", ".join(
                f"d={row['modulus']}: {row['loss']:.12f} vs {2 * (row['modulus'] - 1) / row['modulus']:.12f}"
                for row in residual_rows
            )
            + ".",
        ]

    lines += [
        "",
        "## 2. Gradient descent, published protocol",
        "",
        f"d = {args.modulus}, q = {args.hidden_size}, {1 - args.test_fraction:.0%}/{args.test_fraction:.0%} split "
        f"of the d² pairs (seeded permutation), Adam lr {args.learning_rate} with L2 weight decay "
        f"(`torch.optim.Adam(weight_decay=...)`), full batch, {args.steps} steps, float32, PyTorch's default "
        f"nn.Linear initialisation, seeds {args.seeds}. Reading: nodes assigned to their dominant input "
        f"frequency (dead below |z| = {args.threshold}), blocks of order 4 and 6 factorised with relative "
        f"tolerance {args.factor_tolerance}, factors compared with the building blocks with tolerance "
        f"{args.pattern_tolerance} after normalising scale.",
        "",
        "`match` = blocks matching a construction / frequencies used by at least one node (pooled over seeds);",
        "`match | factorable` = matched / factorable order-4 and order-6 blocks (the denominator of the",
        "published analysis code).",
        "",
        "| weight decay | test acc (mean ± sd) | test loss | train loss | nodes at k ≥ 1 | match "
        "| match \\| factorable | train s / run |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_decay: dict[float, list[dict]] = {}
    for result in results:
        by_decay.setdefault(result["weight_decay"], []).append(result)
    for decay, runs in by_decay.items():
        test_acc = mean_and_std([run["test_accuracy"] for run in runs])
        test_loss = mean_and_std([run["test_loss"] for run in runs])
        train_loss = mean_and_std([run["train_loss"] for run in runs])
        alive = mean_and_std([sum(r.order for r in run["readings"]) for run in runs])
        matched = sum(run["summary"]["matched_blocks"] for run in runs)
        used = sum(run["summary"]["used_frequencies"] for run in runs)
        factorable = sum(run["summary"]["factorable_blocks"] for run in runs)
        train_seconds = mean_and_std([run["train_seconds"] for run in runs])
        lines.append(
            f"| {decay:g} | {test_acc[0]:.4f} ± {test_acc[1]:.4f} | {test_loss[0]:.2e} | {train_loss[0]:.2e} "
            f"| {alive[0]:.0f} | {matched}/{used} = {matched / max(used, 1):.1%} "
            f"| {matched}/{factorable} = {matched / max(factorable, 1):.1%} | {train_seconds[0]:.1f} |"
        )
    matched = sum(run["summary"]["matched_blocks"] for run in results)
    used = sum(run["summary"]["used_frequencies"] for run in results)
    factorable = sum(run["summary"]["factorable_blocks"] for run in results)
    order46 = sum(run["summary"]["order46_blocks"] for run in results)
    lines += [
        "",
        f"**All runs: {matched}/{used} = {matched / max(used, 1):.1%} of used frequencies match a construction** "
        f"({order46} blocks of order 4 or 6, {factorable} of them factorable, "
        f"{matched / max(factorable, 1):.1%} of the factorable ones match; the paper reports about 95%).",
        "",
        "### Block order distribution against weight decay (frequencies k = 1 … (d−1)/2, pooled over seeds)",
        "",
        "| weight decay | " + " | ".join(f"order {bucket}" for bucket in ORDER_BUCKETS) + " | mean order |",
        "|---:|" + "---:|" * (len(ORDER_BUCKETS) + 1),
    ]
    for decay, runs in by_decay.items():
        orders = [reading.order for run in runs for reading in run["readings"]]
        buckets = Counter(order_bucket(order) for order in orders)
        lines.append(
            f"| {decay:g} | "
            + " | ".join(f"{buckets.get(bucket, 0) / len(orders):.0%}" for bucket in ORDER_BUCKETS)
            + f" | {sum(orders) / len(orders):.2f} |"
        )

    lines += [
        "",
        "### Constructions found, and unmatched factorable blocks",
        "",
        "| weight decay | constructions | unmatched factor patterns |",
        "|---:|---|---|",
    ]
    for decay, runs in by_decay.items():
        found, unmatched = Counter(), Counter()
        for run in runs:
            found.update(run["summary"]["construction_counts"])
            unmatched.update(run["summary"]["factor_counts"])
        lines.append(
            f"| {decay:g} | {', '.join(f'{name}: {count}' for name, count in sorted(found.items())) or '—'} "
            f"| {', '.join(f'{name}: {count}' for name, count in sorted(unmatched.items())) or '—'} |"
        )

    lines += [
        "",
        "### How close blocks are to solving their frequency on their own",
        "",
        "Block residual = ‖unwanted potentials at k‖ / |r_kkk| over the block's own nodes "
        "(0 for every construction; see `hf_saffu.experimental.cogo.analysis.block_residual`).",
        "",
        "| weight decay | matched blocks: median residual | unmatched blocks | unmatched: median residual "
        "| unmatched order-4/6: median factorisation error |",
        "|---:|---:|---:|---:|---:|",
    ]
    for decay, runs in by_decay.items():
        blocks = [reading for run in runs for reading in run["readings"] if reading.order > 0]
        matched_blocks = [reading.residual for reading in blocks if reading.construction is not None]
        unmatched_blocks = [reading for reading in blocks if reading.construction is None]
        errors = [r.factorization_error for r in unmatched_blocks if r.factorization_error is not None]
        lines.append(
            f"| {decay:g} | {median(matched_blocks)} | {len(unmatched_blocks)} "
            f"| {median([r.residual for r in unmatched_blocks])} | {median(errors, digits=3)} |"
        )

    example = by_decay[sorted(by_decay)[len(by_decay) // 2]][0]
    lines += [
        "",
        f"### Per-frequency reading of one trained net (wd = {example['weight_decay']:g}, "
        f"seed {example['seed']}, test accuracy {example['test_accuracy']:.4f})",
        "",
        "| k | order | block residual | factorisation error | factors | construction |",
        "|---:|---:|---:|---:|---|---|",
    ]
    for reading in example["readings"]:
        residual = "—" if reading.residual is None else f"{reading.residual:.4f}"
        error = "—" if reading.factorization_error is None else f"{reading.factorization_error:.3f}"
        factors = " * ".join(reading.factors) if reading.factors else "—"
        lines.append(
            f"| {reading.frequency} | {reading.order} | {residual} | {error} | {factors} "
            f"| {reading.construction or '—'} |"
        )

    train_total = sum(run["train_seconds"] for run in results)
    train_machines = sorted({run["trained_on"] for run in results})
    at_modulus = [row for row in constructions if row["modulus"] == args.modulus]
    lines += [
        "",
        "## 3. Seconds: constructing vs training",
        "",
        f"Constructions were timed on: {harness.machine_description()}. Gradient descent was timed on: "
        f"{'; '.join(train_machines)} (one thread per run; several runs share the machine, so a run "
        "alone is faster).",
        "",
        "| what | seconds |",
        "|---|---:|",
    ]
    for row in at_modulus:
        lines.append(
            f"| construct {row['kind']} at d = {args.modulus} (closed form into the HF model) "
            f"| {row['construct_seconds']:.4f} |"
        )
    lines += [
        f"| all {len(constructions)} constructions, d ∈ {args.construction_moduli} "
        f"| {sum(row['construct_seconds'] for row in constructions):.2f} |",
        f"| one gradient-descent run at d = {args.modulus} ({args.steps} Adam steps), mean "
        f"| {train_total / max(len(results), 1):.1f} |",
        f"| all {len(results)} gradient-descent runs, summed | {train_total:.0f} |",
        f"| reading one trained net, mean | {sum(r['read_seconds'] for r in results) / max(len(results), 1):.2f} |",
    ]
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    log(f"constructions for d in {args.construction_moduli}")
    constructions = run_constructions(args.construction_moduli)
    args.output.parent.mkdir(parents=True, exist_ok=True)

    def write_report(results: list[dict]) -> None:
        lines = render_report(args, constructions, results, time.perf_counter() - start)
        runs = [{k: v for k, v in r.items() if k != "readings"} for r in results]
        payload = {"arguments": vars(args), "constructions": constructions, "runs": runs}
        json_path = args.output.with_name(args.output.stem.lower() + ".json")
        harness.write_results(args.output, json_path, TITLE, lines, payload)

    log(f"training {len(args.weight_decays) * len(args.seeds)} runs with {args.workers} workers")
    run_training(args, on_result=write_report)
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
