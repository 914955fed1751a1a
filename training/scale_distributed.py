"""The warm start past one process (issue 25, item 6): 1 and 2 processes under torchrun give the same model.

The SAFFU of `--config` (default configs/brown.yaml) is warm-started on mixed's train split (the tokenizer and
packed blocks of training/scale_quality.py, cached once) by `ExplicitTrainer.run_warm_start` under

    torchrun --standalone --nnodes 1 --nproc_per_node N -m training.scale_distributed --worker OUT ...

for each N of --processes: each process counts its contiguous shard of the blocks and the statistics are
all-reduced (gloo) before the closed-form solves, so every process ends with the same weights. Each worker times
its warm start (wall: from a barrier before to the end of the warm start; CPU: its own process CPU time), rank 0
saves the weights and scores the overall validation subset of scale_quality. The driver compares every run's
weights with the first run's (max absolute and relative difference over all tensors) and writes
SCALE_DISTRIBUTED.md / scale_distributed.json:

    python -m training.scale_distributed                # 1 and 2 processes on mixed
    python -m training.scale_distributed --quick ...    # a tiny corpus (the test's path)

Several machines run the same torchrun command on every node, with `--nnodes N --node_rank i --rdzv_backend c10d
--rdzv_endpoint HOST:PORT` in place of `--standalone` (README).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hf_saffu.trainer import ExplicitTrainer, ExplicitTrainingArguments

from . import harness, scale_quality


def worker(args: argparse.Namespace) -> None:
    """One process of the torchrun group: warm start (its recipe, caps and batch size are the model config's
    `warm_start_recipe`), timings gathered to rank 0, which saves and scores."""
    recipe = harness.read_config(args.config)
    settings = scale_quality.Settings(eval_blocks=args.eval_blocks)
    tokenizer, data, _, _ = scale_quality.prepare(args.data_dir, args.brown_dir, recipe, args.cache_dir, settings)
    torch.manual_seed(recipe.seed)
    model = harness.saffu_model(tokenizer, recipe.model)
    with tempfile.TemporaryDirectory() as unused:
        arguments = ExplicitTrainingArguments(
            output_dir=unused,
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            seed=recipe.seed,
        )
        trainer = ExplicitTrainer(model=model, args=arguments, train_dataset=data["train"])
        world = trainer.args.world_size
        if world > 1:
            dist.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.run_warm_start()
        timing = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
        timings = [timing]
        if world > 1:
            timings = [None] * world
            dist.all_gather_object(timings, timing)
        if trainer.args.process_index == 0:
            validation = scale_quality.random_blocks(data["validation"], settings.eval_blocks, settings.seed)
            state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            torch.save(state, args.worker)
            result = {
                "processes": world,
                "timings": timings,
                "tokens": trainer.warm_start_report.tokens,
                "validation_perplexity": harness.perplexity(model, validation),
                "validation_tokens": harness.real_tokens(validation),
                "parameters": harness.count_parameters(model),
            }
            Path(args.worker).with_suffix(".json").write_text(json.dumps(result, indent=1))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launch(processes: int, out: Path, forwarded: list[str]) -> dict:
    """`torchrun --standalone --nnodes 1 --nproc_per_node PROCESSES` of the worker; its result and weights."""
    path = out / f"warm-{processes}.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
    command += ["--nproc_per_node", str(processes), "-m", "training.scale_distributed", "--worker", str(path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(harness.REPO_ROOT)}
    load = os.getloadavg()[0]
    finished = subprocess.run([*command, *forwarded], env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"error: the {processes}-process warm start failed:\n{finished.stderr[-3000:]}")
    result = json.loads(path.with_suffix(".json").read_text())
    return {**result, "load_average_before": load, "state": torch.load(path)}


def difference(state: dict, reference: dict) -> dict:
    """Max |a - b| over all tensors, and max over tensors of |a - b|_max / |b|_max."""
    absolute, relative, worst = 0.0, 0.0, ""
    for name, tensor in reference.items():
        gap = (state[name].double() - tensor.double()).abs().max().item() if tensor.numel() else 0.0
        scale = tensor.double().abs().max().item() if tensor.numel() else 0.0
        if gap > absolute:
            absolute, worst = gap, name
        relative = max(relative, gap / max(scale, 1e-12))
    return {"max_abs_difference": absolute, "max_relative_difference": relative, "worst_tensor": worst}


def report(runs: list[dict], out: Path, quick: bool) -> dict:
    """SCALE_DISTRIBUTED.md and scale_distributed.json: each run's timings and its weights against the first's."""
    first = runs[0]
    slowest = max(t["wall_seconds"] for t in first["timings"])
    busiest = max(t["cpu_seconds"] for t in first["timings"])
    rows = []
    for run in runs:
        cpus = [t["cpu_seconds"] for t in run["timings"]]
        wall = max(t["wall_seconds"] for t in run["timings"])
        rows.append(
            {
                "processes": run["processes"],
                "tokens": run["tokens"],
                "wall_seconds": wall,
                "cpu_seconds_per_process": cpus,
                "cpu_seconds_total": sum(cpus),
                "speed_up_wall": slowest / wall,
                "speed_up_cpu": busiest / max(cpus),
                "validation_perplexity": run["validation_perplexity"],
                "load_average_before": run["load_average_before"],
                **difference(run["state"], first["state"]),
            }
        )
    payload = {
        "runs": rows,
        "quick": quick,
        "parameters": first["parameters"],
        "validation_tokens": first["validation_tokens"],
    }
    harness.write_results(
        out / "SCALE_DISTRIBUTED.md",
        out / "scale_distributed.json",
        "Warm start in several processes",
        section_lines(payload),
        payload,
    )
    return payload


def section_lines(payload: dict) -> list[str]:
    """The results as Markdown (SCALE_DISTRIBUTED.md, and the section of SCALE.md that training/scale.py adds)."""
    rows = payload["runs"]
    table = [
        [
            str(row["processes"]),
            f"{row['tokens']:,}",
            f"{row['wall_seconds']:.1f}",
            " + ".join(f"{c:.1f}" for c in row["cpu_seconds_per_process"]) + f" = {row['cpu_seconds_total']:.1f}",
            f"{row['speed_up_wall']:.2f}x",
            f"{row['speed_up_cpu']:.2f}x",
            f"{row['validation_perplexity']:.6f}",
            f"{row['max_abs_difference']:.2e} ({row['worst_tensor'] or '-'})",
            f"{row['max_relative_difference']:.2e}",
            f"{row['load_average_before']:.1f}",
        ]
        for row in rows
    ]
    header = [
        "processes",
        "warm-start tokens",
        "wall s (slowest rank)",
        "CPU-s per process = total",
        "wall speed-up",
        "speed-up of the busiest process's CPU-s",
        "validation ppl",
        f"max abs difference vs {rows[0]['processes']} process",
        "max relative difference",
        "load avg before",
    ]
    return [
        f"- data: {'a tiny corpus (--quick)' if payload['quick'] else 'mixed (scale_quality tokenizer and blocks)'}; "
        f"{payload['parameters']:,} parameters after the warm start; validation = scale_quality's overall subset "
        f"({payload['validation_tokens']:,} tokens); torch threads 1 per process (OMP_NUM_THREADS=1), gloo; "
        "`torchrun --standalone --nnodes 1 --nproc_per_node N` on one machine standing in for N nodes",
        "- wall = from a barrier before the warm start to its end (the slowest rank); CPU-s = each process's own "
        "CPU time over the same span. The machine has 2 cores shared with other jobs (load average in the table), "
        "so the wall times and their speed-up are those of a busy machine; the busiest process's CPU-s is what the "
        "wall time would be on idle cores (the critical path, communication waits aside)",
        "",
        *harness.markdown_table(header, table),
    ]


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser)
    parser.add_argument("--brown-dir", type=Path, default=scale_quality.BROWN_DIR)
    parser.add_argument("--cache-dir", type=Path, default=harness.REPO_ROOT / ".cache" / "scale_quality")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--eval-blocks", type=int, default=scale_quality.Settings.eval_blocks)
    parser.add_argument("--quick", action="store_true", help="a tiny corpus from --data-dir (the test's path)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # set by the driver: the worker's weights file
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    args.data_dir = harness.data_dir_or_exit(args.data_dir or scale_quality.MIXED_DIR)
    if args.worker:
        worker(args)
        return None
    forwarded = ["--config", str(args.config), "--data-dir", str(args.data_dir), "--brown-dir", str(args.brown_dir)]
    forwarded += ["--cache-dir", str(args.cache_dir), "--eval-blocks", str(args.eval_blocks)]
    recipe = harness.read_config(args.config)
    scale_quality.prepare(args.data_dir, args.brown_dir, recipe, args.cache_dir, scale_quality.Settings())
    with tempfile.TemporaryDirectory() as out:
        runs = [launch(n, Path(out), forwarded) for n in args.processes]
    payload = report(runs, args.output_dir, args.quick)
    for row in payload["runs"]:
        print({k: v for k, v in row.items() if k != "cpu_seconds_per_process"})
    return payload


if __name__ == "__main__":
    main()
