"""The shared harness of the training/ experiments: data, model config, run metadata, CPU budgets, the
one perplexity, warm-start batches, baselines (n-gram and GPT-2 arms), Markdown tables and results files.

Every number a script reports comes through one of these routines, so two scripts that report the same
quantity compute it the same way:

- perplexity = exp(sum of token NLL / predicted tokens) over packed blocks, each block scored from a fresh
  state: `hf_saffu.evaluation.token_nll_sum` summed over batches (`perplexity`);
- the SAFFU of an experiment is built from the model section of a training config (default
  configs/brown.yaml), parsed by the same parser as `hf-saffu train` (`read_config`);
- the warm start reads the trainer's `DatasetBatches` (`warm_start_batches`);
- every results file names its command, commit and machine (`run_metadata`, `write_results`).
"""

import argparse
import functools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments, default_data_collator

from hf_saffu import SaffuForCausalLM
from hf_saffu.calibration import calibrate_gate
from hf_saffu.configuration_saffu import ExplicitWarmStartConfig, recipe_from
from hf_saffu.data import (
    DataArguments,
    config_for_tokenizer,
    load_text_datasets,
    text_batches,
    tokenize_and_pack,
    train_tokenizer,
)
from hf_saffu.evaluation import perplexity_from_loss, token_nll_sum
from hf_saffu.frozen_phase import FrozenInputCache
from hf_saffu.train import parse_arguments
from hf_saffu.trainer import (
    PART_LEARNING_RATES,
    DatasetBatches,
    ExplicitTrainer,
    ExplicitTrainingArguments,
    check_block_lengths,
    freeze_counted_parts,
)
from hf_saffu.warm_start import explicit_warm_start

from .kneser_ney import KneserNeyLM

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "brown.yaml"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "brown"
DEFAULT_OUTPUT_DIR = REPO_ROOT / "benchmarks"
SPLIT_FILES = {"train": "train.txt", "validation": "validation.txt", "test": "test.txt"}


class Clock:
    """The clock every budget and CPU-time measurement of the harness reads: process CPU seconds. A test
    replaces `CLOCK.now` (e.g. with `StepClock`) so that no stopping point depends on the machine's speed."""

    now = staticmethod(time.process_time)


CLOCK = Clock()


class StepClock:
    """A deterministic clock for tests: every reading advances it by `tick` seconds."""

    def __init__(self, tick: float):
        self.tick, self.time = tick, 0.0

    def __call__(self) -> float:
        self.time += self.tick
        return self.time


# -- command line -------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, threads: int = 1, data: bool = True) -> None:
    """--output-dir and --threads; with `data`, also --data-dir and --config."""
    if data:
        parser.add_argument(
            "--data-dir",
            type=Path,
            help=f"a folder with {', '.join(SPLIT_FILES.values())} (one document a line); default {DEFAULT_DATA_DIR}",
        )
        parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config of the SAFFU arms")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where the results files go")
    parser.add_argument("--threads", type=int, default=threads, help="torch threads (CPU time sums over them)")


_CALLED_AS: list[str] = []  # `python -m MODULE ARGV` of a script's main(argv) called from Python


def start_run(args: argparse.Namespace, argv: list[str] | None = None, module: str | None = None) -> None:
    """Set torch threads and note the commit the run starts from (cached for its results file); a script's
    `main(argv)` called from Python (argv not None) is recorded as `python -m MODULE ARGV`."""
    torch.set_num_threads(args.threads)
    git_revision()
    _CALLED_AS[:] = [] if argv is None or module is None else ["python", "-m", module, *argv]


# -- data ---------------------------------------------------------------------------------------


def data_dir_or_exit(data_dir: Path | None) -> Path:
    """`data_dir`, or the Brown default when it exists; otherwise exit with a one-line message."""
    data_dir = DEFAULT_DATA_DIR if data_dir is None else data_dir
    missing = [name for name in SPLIT_FILES.values() if not (data_dir / name).is_file()]
    if missing:
        raise SystemExit(
            f"error: no {', '.join(missing)} in {data_dir}: pass --data-dir DIR with train.txt, validation.txt and "
            "test.txt, one document a line (Brown: NLTK's `brown` corpus, one sentence a line, split about 80/10/10)"
        )
    return data_dir


def load_data(
    data_dir: Path,
    vocab_size: int,
    block_size: int,
    train_documents: int | None = None,
    eval_documents: int | None = None,
):
    """(tokenizer, packed torch DatasetDict train/validation/test): a ByteLevel BPE trained on the (possibly
    truncated) train split; eval splits optionally cut to their first documents; EOS after each document."""
    data_args = DataArguments(
        **{f"{split}_files": [str(data_dir / name)] for split, name in SPLIT_FILES.items()},
        tokenizer_vocab_size=vocab_size,
        block_size=block_size,
        max_train_documents=train_documents,
    )
    raw = load_text_datasets(data_args)
    if eval_documents is not None:
        raw = DatasetDict(
            {s: d if s == "train" else d.select(range(min(eval_documents, len(d)))) for s, d in raw.items()}
        )
    tokenizer = train_tokenizer(text_batches(raw["train"], "text"), vocab_size)
    return tokenizer, tokenize_and_pack(raw, tokenizer, data_args).with_format("torch")


def real_tokens(dataset) -> int:
    return int(dataset[:]["attention_mask"].sum())


# -- the SAFFU of a training config ---------------------------------------------------------------


@dataclass(frozen=True)
class SaffuRecipe:
    """What an experiment takes from a training config: the model section and the training knobs."""

    model: dict  # SaffuConfig keyword arguments (ModelArguments.config_kwargs)
    vocab_size: int
    block_size: int
    learning_rate: float
    seed: int
    part_learning_rates: dict = field(default_factory=dict)  # trainer.PART_LEARNING_RATES: value (None: learning_rate)
    table_leave_one_out: bool = False  # leave-one-out values of the counted parts at the training positions
    freeze_counted_parts: bool = False  # backprop trains the neural word model alone
    neural_mixture_weight_decay: float | None = None  # of the neural word model's learned weights
    calibrate_gate: bool = False  # after backprop, the gate fitted on the validation split (hf_saffu.calibration)
    frozen_fraction: float = (
        0.0  # of the backprop steps with the embeddings frozen (freeze_embeddings_steps / max_steps)
    )

    @property
    def warm_start_recipe(self) -> ExplicitWarmStartConfig:
        """The warm start's fields of the model section (`SaffuConfig.warm_start_recipe`, its defaults where the
        section leaves them out): their one home, so `--set explicit_attention_iters=1` reaches the warm start."""
        return recipe_from(None, dict(self.model))

    def group_learning_rates(self) -> dict:
        return {name: self.part_learning_rates.get(name) for name in PART_LEARNING_RATES}

    def trainer_arguments(self) -> dict:
        """The `ExplicitTrainingArguments` of the SAFFU's backprop: its learning rates per part, leave-one-out and
        which parts train and the neural word model's weight decay."""
        return {
            **self.group_learning_rates(),
            "table_leave_one_out": self.table_leave_one_out,
            "freeze_counted_parts": self.freeze_counted_parts,
            "neural_mixture_weight_decay": self.neural_mixture_weight_decay,
        }


def read_config(path: Path = DEFAULT_CONFIG) -> SaffuRecipe:
    """The recipe of `path`, parsed by `hf-saffu train`'s parser. Experiments read their data from --data-dir,
    so a config without data files is completed with a placeholder that is never read."""
    model_args, data_args, training_args = parse_arguments([str(path), "--train_files", "unused.txt"])
    return SaffuRecipe(
        model=model_args.config_kwargs(),
        vocab_size=data_args.tokenizer_vocab_size,
        block_size=data_args.block_size,
        learning_rate=training_args.learning_rate,
        seed=training_args.seed,
        part_learning_rates={name: getattr(training_args, name) for name in PART_LEARNING_RATES},
        table_leave_one_out=training_args.table_leave_one_out,
        freeze_counted_parts=training_args.freeze_counted_parts,
        neural_mixture_weight_decay=training_args.neural_mixture_weight_decay,
        calibrate_gate=training_args.calibrate_gate,
        frozen_fraction=min(1.0, (training_args.freeze_embeddings_steps or 0) / max(training_args.max_steps, 1)),
    )


def saffu_model(tokenizer, model_kwargs: dict) -> SaffuForCausalLM:
    return SaffuForCausalLM(config_for_tokenizer(tokenizer, **model_kwargs))


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters, frozen ones (SAFFU's bit-cipher embeddings) included."""
    return sum(p.numel() for p in model.parameters())


def warm_start_batches(train, max_tokens: int | None, batch_size: int = 64) -> DatasetBatches:
    """The first ceil(max_tokens / block size) train blocks, read lazily in batches (as the trainer's shard)."""
    if max_tokens is not None:
        train = train.select(range(min(len(train), math.ceil(max_tokens / check_block_lengths(train)))))
    return DatasetBatches(train.with_format("torch", columns=["input_ids", "attention_mask"]), batch_size)


def warm_start(model: SaffuForCausalLM, train, max_tokens: int | None = None):
    """The explicit warm start of the model's own recipe (`config.warm_start_recipe`: its token cap unless
    `max_tokens` is given, its batch size, its attention rounds) on the train blocks; (process CPU seconds,
    WarmStartReport)."""
    start = CLOCK.now()
    recipe = model.config.warm_start_recipe
    cap = recipe.warm_start_max_tokens if max_tokens is None else max_tokens
    batches = warm_start_batches(train, cap, recipe.warm_start_batch_size)
    report = explicit_warm_start(model, batches, show_progress=False)
    return CLOCK.now() - start, report


# -- the one perplexity ---------------------------------------------------------------------------


def perplexity(model: torch.nn.Module, dataset, batch_size: int = 64) -> float:
    """Exact token-level perplexity over packed blocks: `token_nll_sum` (hf_saffu.evaluation) summed over batches."""
    nll, tokens = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        batch_nll, batch_tokens = token_nll_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        nll, tokens = nll + batch_nll, tokens + batch_tokens
    return perplexity_from_loss(nll / tokens)


# -- run metadata -----------------------------------------------------------------------------------


@functools.cache
def git_revision() -> str:
    """`git rev-parse HEAD`, plus ' (uncommitted changes)' when the tree is dirty; cached at the first call."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    return (git("rev-parse", "HEAD") or "unknown") + (" (uncommitted changes)" if git("status", "--porcelain") else "")


def machine_description() -> str:
    """CPU model, visible cores, torch threads, memory, GPU and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f"{torch.cuda.get_device_name(0)} (unused)" if torch.cuda.is_available() else "no GPU"
    import transformers

    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} visible cores, torch threads {torch.get_num_threads()}, "
        f"{memory:.0f} GiB RAM, {gpu}, Linux {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )


def command_line() -> str:
    """The running command as typed from the repo root: `python -m training.NAME ...` for a script here."""
    if _CALLED_AS:
        return shlex.join(_CALLED_AS)
    script = Path(sys.argv[0]).resolve()
    if script.parent == REPO_ROOT / "training":
        head = f"python -m training.{script.stem}"
    else:
        head = "python " + os.path.relpath(sys.argv[0], REPO_ROOT)
    return " ".join([head, *map(shlex.quote, sys.argv[1:])])


def run_metadata() -> dict:
    return {
        "command": command_line(),
        "commit": git_revision(),
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def write_results(
    markdown_path: Path, json_path: Path, title: str, lines: list[str], payload: dict, run: dict | None = None
) -> dict:
    """`markdown_path`: the title, the run metadata (`run`, default this run's `run_metadata()`) and `lines`;
    `json_path`: {"run": metadata, **payload}."""
    run = run_metadata() if run is None else run
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    header = [f"# {title}", "", *(f"- {key}: `{value}`" for key, value in run.items()), ""]
    markdown_path.write_text("\n".join([*header, *lines]) + "\n")
    json_path.write_text(json.dumps({"run": run, **payload}, indent=1, default=str))
    return run


# -- Markdown and plots -----------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """A Markdown table; `align` has one letter per column, 'l' or 'r' (default: the first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def targets_table(targets: list[dict]) -> list[str]:
    """The generated met / missed table of {"target", "met", "numbers"} rows."""
    verdicts = {True: "met", False: "MISSED", None: "not measured"}
    rows = [[t["target"], verdicts[t["met"]], t["numbers"]] for t in targets]
    return markdown_table(["target", "met?", "numbers (this run)"], rows, "lll")


def plot_curves(results: list[dict], path: Path, title: str) -> None:
    """Validation perplexity (curve subset) against CPU seconds; count-based arms as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for result in results:
        if result.get("count_based"):
            ax.axhline(result["validation_perplexity"], linestyle="--", linewidth=1, label=f"{result['arm']} (full)")
        elif result["curve"]:
            xs, ys = zip(*((p["cpu_seconds"], p["validation_perplexity"]) for p in result["curve"]), strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=result["arm"])
    ax.set(yscale="log", xlabel="process CPU seconds (warm start + training)", ylabel="validation perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- CPU-second budgets -----------------------------------------------------------------------------


class CpuBudget(TrainerCallback):
    """Stops training when the arm's process-CPU budget is spent; records the validation curve at fixed CPU
    times (and every `eval_every` CPU seconds); with `patience`, stops once patience x eval_every CPU seconds
    have passed since the best point (early stopping; a window of CPU time, not a count of points, because
    the fixed points and the periodic ones can fall close together) and keeps a copy of the best weights.
    CPU time spent evaluating is excluded; `offset` (the warm start) counts against the budget. `frozen_steps`:
    the CPU time of the first steps (the frozen-embedding phase) is timed apart from the rest."""

    def __init__(self, budget: "Budget", offset: float, evaluate, on_point=None, frozen_steps: int = 0):
        self.budget, self.offset, self.evaluate, self.on_point = budget, offset, evaluate, on_point
        self.checkpoints = sorted(c for c in budget.checkpoints if offset < c <= budget.cpu_seconds)
        self.next_periodic = offset + budget.eval_every if budget.eval_every else math.inf
        self.frozen_steps = frozen_steps
        self.curve: list[dict] = []
        self.eval_seconds = 0.0
        self.start = 0.0
        self.phase_seconds = {"frozen": 0.0, "unfrozen": 0.0}
        self.phase_steps = {"frozen": 0, "unfrozen": 0}
        self.step_start = 0.0
        self.best: dict | None = None
        self.best_state: dict | None = None

    def spent(self) -> float:
        return self.offset + CLOCK.now() - self.start - self.eval_seconds

    def record(self, model, step: int) -> None:
        spent, eval_start = self.spent(), CLOCK.now()
        point = {"cpu_seconds": spent, "step": step, "validation_perplexity": self.evaluate(model)}
        self.curve.append(point)
        if self.best is None or point["validation_perplexity"] < self.best["validation_perplexity"]:
            self.best = point
            if self.budget.patience is not None:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.on_point is not None:
            self.on_point(self, model)
        self.eval_seconds += CLOCK.now() - eval_start

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = CLOCK.now()
        self.record(model, 0)

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_start = CLOCK.now()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        phase = "frozen" if state.global_step <= self.frozen_steps else "unfrozen"
        self.phase_seconds[phase] += CLOCK.now() - self.step_start
        self.phase_steps[phase] += 1
        spent = self.spent()
        due = bool(self.checkpoints) and spent >= self.checkpoints[0]
        while self.checkpoints and spent >= self.checkpoints[0]:
            self.checkpoints.pop(0)
        if spent >= self.next_periodic:
            due = True
            while self.next_periodic <= spent:
                self.next_periodic += self.budget.eval_every
        if due:
            self.record(model, state.global_step)
            window = (self.budget.patience or 0) * (self.budget.eval_every or 0)
            stale = self.best is not self.curve[-1] and spent - self.best["cpu_seconds"] >= window
            if self.budget.patience is not None and stale:
                control.should_training_stop = True
        if spent >= self.budget.cpu_seconds:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.curve[-1]["step"] != state.global_step:
            self.record(model, state.global_step)

    def steps_per_cpu_second(self) -> dict[str, float]:
        return {
            phase: self.phase_steps[phase] / seconds for phase, seconds in self.phase_seconds.items() if seconds > 0
        }


def seconds_per_step(model, train, batch_size: int) -> float:
    """CPU seconds of one forward + backward pass on a training batch (to size the cosine schedule); with
    `model.frozen_counted` set, the pass that reads the counted parts' cached ln p (`planned_steps`)."""
    batch = train[:batch_size]
    if isinstance(model, SaffuForCausalLM):
        batch = {**batch, "skip_logits": True}  # as ExplicitTrainer trains it
    model.train()
    model(**batch).loss.backward()  # the first pass allocates (and fills the cache): not timed
    start = CLOCK.now()
    for _ in range(3):
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return (CLOCK.now() - start) / 3


def planned_steps(model, train, batch_size: int, seconds: float, counted_frozen: bool = False) -> int:
    """The steps `seconds` of CPU time buy, the optimizer step and the Trainer adding about 10% to a pass. With the
    counted parts frozen (`counted_frozen`: ExplicitTrainer caches their ln p per block) the first epoch's steps cost
    a full pass and later ones the cached pass: planning every step at the first epoch's cost ended such runs at
    about 3/4 of their budget."""
    full = 1.1 * seconds_per_step(model, train, batch_size)
    epoch = math.ceil(len(train) / batch_size)
    if not counted_frozen or seconds <= epoch * full:
        return max(1, round(seconds / full))
    model.frozen_counted = FrozenInputCache()
    try:
        cached = 1.1 * seconds_per_step(model, train, batch_size)
    finally:
        model.frozen_counted = None
    return epoch + round((seconds - epoch * full) / cached)


@dataclass(frozen=True)
class Budget:
    """How a backprop arm is trained and where its curve is taken."""

    cpu_seconds: float
    checkpoints: tuple[float, ...]  # CPU-second points of the curve (besides the start and the end)
    batch_size: int = 32
    curve_blocks: int = 128  # validation blocks scored at every curve point
    seed: int = 0
    eval_every: float | None = None  # also a curve point every this many CPU seconds
    patience: int | None = None  # early stopping: no new best for patience x eval_every CPU-s; best weights kept


def training_arguments(
    model, output_dir: str, budget: Budget, learning_rate: float, max_steps: int, frozen_steps, group_rates
):
    """The Trainer's arguments of every backprop arm; a SAFFU gets `ExplicitTrainingArguments` (no warm start
    here: the arm warm-starts before) with its frozen-embedding phase and the learning rates of its heads."""
    common = {
        "output_dir": output_dir,
        "max_steps": max_steps,
        "per_device_train_batch_size": budget.batch_size,
        "learning_rate": learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "logging_strategy": "no",
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": budget.seed,
        "dataloader_num_workers": 0,
    }
    if isinstance(model, SaffuForCausalLM):
        return ExplicitTrainingArguments(
            **common, **(group_rates or {}), warm_start=False, freeze_embeddings_steps=frozen_steps or None
        )
    if frozen_steps or group_rates:
        raise ValueError("a frozen-embedding phase and head learning rates need a SAFFU model")
    return TrainingArguments(**common)


def train_with_budget(
    model,
    data,
    budget: Budget,
    learning_rate: float,
    offset: float = 0.0,
    frozen_fraction: float = 0.0,
    extra_eval: dict | None = None,
    on_point=None,
    group_rates: dict | None = None,
    calibrate: bool = False,
) -> dict:
    """`Trainer` (AdamW, cosine, 5% warm-up) until the CPU budget is spent (or, with `budget.patience`, until
    validation stops improving: the best weights are then restored); curve, throughput and final validation /
    test perplexity on the full splits, and on each `extra_eval` dataset (e.g. out-of-domain text). A SAFFU
    trains with `ExplicitTrainer`, its embeddings frozen (and the frozen inputs cached) for the first
    `frozen_fraction` of the planned steps, its heads at `group_rates` (`SaffuRecipe.group_learning_rates`).
    `on_point(callback, model)` runs after every curve point (its CPU time is not counted). With `calibrate`, the
    best weights' gate is then fitted on the full validation split (`hf_saffu.calibration`, as `calibrate_gate`
    does after training; not counted either) before the final scores, and the scores before it are kept too."""
    torch.manual_seed(budget.seed)
    train = data["train"]
    curve_data = data["validation"].select(range(min(budget.curve_blocks, len(data["validation"]))))
    remaining = max(budget.cpu_seconds - offset, 0.0)
    counted_frozen = bool((group_rates or {}).get("freeze_counted_parts"))
    if counted_frozen:
        freeze_counted_parts(model)  # as the trainer will, so the step is timed as it will run
    max_steps = planned_steps(model, train, budget.batch_size, remaining, counted_frozen)
    frozen_steps = round(frozen_fraction * max_steps)
    callback = CpuBudget(budget, offset, lambda m: perplexity(m, curve_data), on_point, frozen_steps)
    with tempfile.TemporaryDirectory() as output_dir:
        args = training_arguments(model, output_dir, budget, learning_rate, max_steps, frozen_steps, group_rates)
        trainer_class = ExplicitTrainer if isinstance(args, ExplicitTrainingArguments) else Trainer
        trainer = trainer_class(
            model=model, args=args, train_dataset=train, data_collator=default_data_collator, callbacks=[callback]
        )
        state = trainer.train()
    train_seconds = callback.spent() - offset
    if callback.best_state is not None:
        model.load_state_dict(callback.best_state)
    block_size = check_block_lengths(train)
    evaluated = {"validation": data["validation"], "test": data["test"], **(extra_eval or {})}
    calibrated = {}
    if calibrate:  # the validation split's score before the fit is the fit's own
        others = {split: dataset for split, dataset in evaluated.items() if split != "validation"}
        before = {f"{split}_perplexity": perplexity(model, dataset) for split, dataset in others.items()}
        validation = data["validation"]
        fit = calibrate_gate(model, (validation[start : start + 64] for start in range(0, len(validation), 64)))
        calibrated["uncalibrated"] = {"validation_perplexity": fit.perplexity_before, **before}
        calibrated["gate_calibration"] = fit.metrics()
    return {
        "parameters": count_parameters(model),
        "steps": state.global_step,
        "planned_steps": max_steps,
        "frozen_steps": frozen_steps,
        "epochs": state.global_step * budget.batch_size / len(train),
        "cpu_seconds": callback.spent(),
        "backprop_cpu_seconds": train_seconds,
        "train_tokens_per_cpu_second": state.global_step * budget.batch_size * block_size / max(train_seconds, 1e-9),
        "steps_per_cpu_second": callback.steps_per_cpu_second(),
        "curve": callback.curve,
        "best_point": callback.best if budget.patience is not None else None,
        **{f"{split}_perplexity": perplexity(model, dataset) for split, dataset in evaluated.items()},
        **calibrated,
    }


def train_warm_saffu(model, data, budget: Budget, recipe: SaffuRecipe, offset: float, **kwargs) -> dict:
    """Backprop after the warm start as the training config does it: its learning rates per part and its frozen
    phase (the same fraction of the steps); `train_with_budget`."""
    kwargs.setdefault("frozen_fraction", recipe.frozen_fraction)
    kwargs.setdefault("calibrate", recipe.calibrate_gate)
    return train_with_budget(
        model, data, budget, recipe.learning_rate, offset=offset, group_rates=recipe.trainer_arguments(), **kwargs
    )


def warm_start_arm(model, data, recipe: SaffuRecipe, budget: Budget, name: str = "SAFFU warm start") -> dict:
    """The explicit warm start alone (no backprop): CPU time, throughput and perplexities."""
    seconds, report = warm_start(model, data["train"])
    curve_data = data["validation"].select(range(min(budget.curve_blocks, len(data["validation"]))))
    return {
        "arm": name,
        "parameters": count_parameters(model),
        "cpu_seconds": seconds,
        "warm_start_tokens": report.tokens,
        "train_tokens_per_cpu_second": report.tokens / max(seconds, 1e-9),
        "validation_perplexity": perplexity(model, data["validation"]),
        "test_perplexity": perplexity(model, data["test"]),
        "curve": [{"cpu_seconds": seconds, "step": 0, "validation_perplexity": perplexity(model, curve_data)}],
    }


# -- baselines: count-based n-grams and GPT-2 --------------------------------------------------------

BIGRAM_ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def pair_keys(dataset, vocab_size: int) -> torch.Tensor:
    """previous * V + next for every predicted token of the packed blocks (the tokens `perplexity` scores)."""
    columns = dataset[:]
    inputs, labels = columns["input_ids"][:, :-1], columns["labels"][:, 1:]
    predicted = labels != -100
    return inputs[predicted] * vocab_size + labels[predicted]


def bigram_counts(dataset, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted unique pair keys, their counts, and the counts of previous tokens."""
    unique, counts = torch.unique(pair_keys(dataset, vocab_size), return_counts=True)
    counts = counts.to(torch.float64)
    previous = torch.zeros(vocab_size, dtype=torch.float64).index_add_(0, unique // vocab_size, counts)
    return unique, counts, previous


def bigram_perplexity(model: tuple, dataset, vocab_size: int, alpha: float) -> float:
    """The additively smoothed bigram P(b | a) = (C(a, b) + alpha) / (C(a) + alpha V)."""
    unique, counts, previous = model
    keys = pair_keys(dataset, vocab_size)
    position = torch.searchsorted(unique, keys).clamp_max(len(unique) - 1)
    pair_counts = torch.where(unique[position] == keys, counts[position], 0.0)
    log_probs = torch.log(pair_counts + alpha) - torch.log(previous[keys // vocab_size] + alpha * vocab_size)
    return perplexity_from_loss(-log_probs.mean().item())


def bigram_arm(data, vocab_size: int) -> dict:
    """The additive bigram: counts on train, alpha chosen on validation."""
    start = CLOCK.now()
    model = bigram_counts(data["train"], vocab_size)
    seconds = CLOCK.now() - start
    scores = {alpha: bigram_perplexity(model, data["validation"], vocab_size, alpha) for alpha in BIGRAM_ALPHAS}
    alpha = min(scores, key=scores.get)
    return {
        "arm": "additive bigram",
        "count_based": True,
        "alpha": alpha,
        "parameters": vocab_size**2,
        "cpu_seconds": seconds,
        "train_tokens_per_cpu_second": len(pair_keys(data["train"], vocab_size)) / max(seconds, 1e-9),
        "validation_perplexity": scores[alpha],
        "test_perplexity": bigram_perplexity(model, data["test"], vocab_size, alpha),
        "curve": [],
    }


def kneser_ney_arm(data, vocab_size: int, order: int) -> dict:
    """Interpolated modified Kneser-Ney of `order` (training/kneser_ney.py); parameters = stored n-grams."""
    train = data["train"][:]
    start = CLOCK.now()
    model = KneserNeyLM(order, vocab_size).fit(train["input_ids"], train["attention_mask"])
    seconds = CLOCK.now() - start
    scores = {
        split: model.perplexity(data[split][:]["input_ids"], data[split][:]["attention_mask"])
        for split in ("validation", "test")
    }
    return {
        "arm": f"Kneser-Ney {order}-gram",
        "count_based": True,
        "parameters": sum(len(level.keys) for level in model.levels),
        "cpu_seconds": seconds,
        "train_tokens_per_cpu_second": int(train["attention_mask"].sum()) / max(seconds, 1e-9),
        "validation_perplexity": scores["validation"],
        "test_perplexity": scores["test"],
        "curve": [],
    }


def gpt2_model(tokenizer, positions: int, layers: int = 2, dims: int = 128, heads: int = 4) -> GPT2LMHeadModel:
    """A small GPT-2 on the tokenizer's vocabulary, tied output embeddings."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=positions,
        n_embd=dims,
        n_layer=layers,
        n_head=heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def results_table(results: list[dict]) -> list[str]:
    """One row per arm: perplexities, CPU seconds, parameters, training throughput."""
    header = ["arm", "validation ppl", "test ppl", "CPU s", "parameters", "training tokens / CPU-s"]
    rows = [
        [
            r["arm"],
            f"{r['validation_perplexity']:.1f}",
            f"{r['test_perplexity']:.1f}",
            f"{r['cpu_seconds']:.1f}",
            f"{r['parameters']:,}",
            f"{r['train_tokens_per_cpu_second']:,.0f}",
        ]
        for r in results
    ]
    return markdown_table(header, rows)
