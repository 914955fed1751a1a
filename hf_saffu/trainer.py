"""`ExplicitTrainer`: the explicit warm start, then ordinary backprop through `transformers.Trainer`.

`train()` warm-starts the (unwrapped) model before `Trainer.train` prepares it for data
parallelism. Each process reads a disjoint, contiguous shard of the training blocks (not Trainer's
dataloader, which repeats samples to even out the ranks); the float64 statistics are summed over
processes before every process solves, so every rank ends with the weights one process would get.
The warm start is skipped when resuming from a checkpoint or when the model is already warm-started
(`config.warm_started`, saved with the model). The flag follows the weights: resuming takes it from the
checkpoint whose weights are loaded. `warm_start_only` warm-starts (and evaluates) without backprop.

Evaluation reports the exact token-level loss and perplexity, exp(sum of token NLL / number of
predicted tokens), with every eval sample counted exactly once across processes (the protocol of
`hf_saffu.evaluation`).

A run loses nothing it already has: it refuses an output_dir holding a previous run's model or
checkpoints (unless resuming, or `overwrite_output_dir`), stops at the first step that makes a weight
NaN or infinite (before that step is logged or saved), and writes every checkpoint under a staging
name that is renamed once complete, so a `checkpoint-N` directory is either whole or absent.
"""

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    EvalLoopOutput,
    TrainOutput,
    get_last_checkpoint,
    rotate_checkpoints,
)
from transformers.utils import CONFIG_NAME, logging

from .errors import check_finite
from .evaluation import perplexity_from_loss, token_nll
from .leave_one_out import table_leave_one_out
from .model_card import UNSPECIFIED_DATASET, describe_architecture, write_model_card
from .modeling_saffu import FrozenInputCache, SaffuForCausalLM, SaffuModel
from .warm_start import explicit_warm_start

logger = logging.get_logger(__name__)

# A checkpoint is written as tmp-checkpoint-N and renamed to checkpoint-N when complete; Trainer's resume
# (get_last_checkpoint) and rotation (glob "checkpoint-*") never see the staging name.
STAGING_PREFIX = "tmp-"
# What a new run in a used output_dir would replace (the saved model) or rotate away (the checkpoints).
PREVIOUS_RUN = re.compile(rf"^(model\.safetensors|model\.safetensors\.index\.json|{PREFIX_CHECKPOINT_DIR}-\d+)$")


@dataclass
class ExplicitTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the explicit warm start."""

    warm_start: bool = field(default=True, metadata={"help": "run the explicit warm start before backprop"})
    warm_start_max_tokens: int | None = field(
        default=None, metadata={"help": "read at most this many training tokens for the warm start"}
    )
    warm_start_batch_size: int = field(default=64, metadata={"help": "blocks per warm-start forward batch"})
    explicit_attention_iters: int = field(
        default=1, metadata={"help": "rounds of (attention targets -> W, then U) after the uniform-attention U"}
    )
    warm_start_only: bool = field(
        default=False, metadata={"help": "warm-start (and evaluate) without any backprop step"}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "start a new run in an output_dir holding a previous run's model or checkpoints"},
    )
    freeze_embeddings_steps: int | None = field(
        default=None,
        metadata={
            "help": "train the embeddings after this many optimizer steps (0: from the start), frozen (and their "
            "first-layer similarities cached) before; None: follow the model config's freeze_embeddings throughout"
        },
    )

    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "learning rate of the output layer O, b_O (None: learning_rate); the head reads ln H, whose "
            "entries reach -30, so a step on O moves the logits far more than a step elsewhere"
        },
    )
    pivot_head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "learning rate of the pivot's channel, its bigram table or Q (None: learning_rate)"},
    )
    table_leave_one_out: bool = field(
        default=False,
        metadata={
            "help": "train on leave-one-out table values: each training position reads the bigram and trigram "
            "tables as if its own occurrence had not been counted (hf_saffu.leave_one_out); evaluation reads the "
            "plain tables. Needs the tables counted from the whole training split (warm_start_max_tokens=None)"
        },
    )

    def __post_init__(self):
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            self.use_cpu = True  # torchrun without an accelerator: gloo data parallelism, not independent runs
        super().__post_init__()
        if self.warm_start_max_tokens is not None and self.warm_start_max_tokens < 1:
            raise ValueError(f"warm_start_max_tokens must be >= 1 or None, got {self.warm_start_max_tokens}")
        if self.warm_start_batch_size < 1:
            raise ValueError(f"warm_start_batch_size must be >= 1, got {self.warm_start_batch_size}")
        if self.explicit_attention_iters < 0:
            raise ValueError(f"explicit_attention_iters must be >= 0, got {self.explicit_attention_iters}")
        if self.freeze_embeddings_steps is not None and self.freeze_embeddings_steps < 0:
            raise ValueError(f"freeze_embeddings_steps must be >= 0 or None, got {self.freeze_embeddings_steps}")
        for name in ("head_learning_rate", "pivot_head_learning_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 or None, got {value}")
        if self.table_leave_one_out and self.warm_start_max_tokens is not None:
            raise ValueError(
                "table_leave_one_out needs tables counted from every training position: warm_start_max_tokens "
                f"must be None, got {self.warm_start_max_tokens}"
            )
        if self.warm_start_only and not self.warm_start:
            raise ValueError("warm_start_only=True needs warm_start=True (a run without either does nothing)")


class DatasetBatches:
    """Re-iterable batches of a dataset, read one at a time (memory does not grow with the data)."""

    def __init__(self, dataset, batch_size: int):
        self.dataset = dataset
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.dataset), self.batch_size):
            yield self.dataset[start : start + self.batch_size]


class FrozenEmbeddingPhase(TrainerCallback):
    """The embeddings stay fixed for the first `steps` optimizer steps (all of them for `math.inf`), then train.

    While frozen, the model reads detached embeddings (no gradient reaches them, so Adam leaves them and their
    moments untouched) and caches the first layer's pivot similarities of each training block
    (`FrozenInputCache`), reused every epoch; the cache is dropped when the embeddings thaw. Under DDP the
    embeddings are an unused parameter in the frozen steps (transformers' default find_unused_parameters=True
    for a PreTrainedModel handles that).
    """

    def __init__(self, model: SaffuModel, steps: float):
        self.model = model
        self.steps = steps
        self.cache: FrozenInputCache | None = FrozenInputCache() if steps > 0 else None
        model.embeddings.weight.requires_grad_(math.isfinite(steps))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.cache is not None and state.global_step >= self.steps:
            self.cache = None
        self.model.frozen_inputs = self.cache

    def on_train_end(self, args, state, control, **kwargs):
        self.model.frozen_inputs = None


class WarmStartLog(TrainerCallback):
    """Puts the warm-start log entries into the log history of the run (`Trainer.train` starts a new one)."""

    def __init__(self):
        self.entries: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        state.log_history[:0] = self.entries


def resume_request(resume_from_checkpoint: str | bool | None) -> str | bool | None:
    """`resume_from_checkpoint` as the command line or Python gives it: None for a new run (None, False,
    "false"), True for the last checkpoint (True, "true"), else the path as given."""
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "false"):
        resume_from_checkpoint = resume_from_checkpoint.lower() == "true"
    return resume_from_checkpoint or None


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint to resume from (`resume_request`): a path as given, or the last checkpoint-N in
    output_dir for True; None for a new run."""
    resume_from_checkpoint = resume_request(resume_from_checkpoint)
    if resume_from_checkpoint is True:
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise ValueError(f"resume_from_checkpoint=true, but output_dir {output_dir} holds no checkpoint-N folder")
        return last
    return resume_from_checkpoint


def checkpoint_warm_started(checkpoint: str) -> bool:
    """`warm_started` of the model saved in a checkpoint (False when it has no config)."""
    config_file = Path(checkpoint) / CONFIG_NAME
    return config_file.is_file() and bool(json.loads(config_file.read_text()).get("warm_started", False))


class DivergenceGuard(TrainerCallback):
    """Stops training at the first optimizer step that leaves a weight NaN or infinite.

    `on_step_end` runs before Trainer logs, evaluates or saves the step, so nothing of a diverged model is
    written; the checkpoints of earlier steps stay. All processes hold the same weights after a step, so
    they all stop at the same step.
    """

    def on_step_end(self, args, state, control, model=None, **kwargs):
        check_finite(
            model.named_parameters(),
            f"the model after optimizer step {state.global_step} (learning_rate={args.learning_rate:g})",
            hint="training diverged; nothing of this step was saved: lower learning_rate or max_grad_norm",
        )


class ExplicitTrainer(Trainer):
    """A `Trainer` that warm-starts SAFFU models explicitly before backprop."""

    args: ExplicitTrainingArguments

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, ExplicitTrainingArguments):
            raise TypeError("ExplicitTrainer needs ExplicitTrainingArguments")
        self.check_vocabulary()
        self.warm_start_report = None
        self.warm_start_metrics: dict[str, float] = {}
        self.warm_start_log = WarmStartLog()
        self.add_callback(self.warm_start_log)
        self.add_callback(DivergenceGuard())
        steps = self.args.freeze_embeddings_steps
        if steps is None and self.saffu_model.config.freeze_embeddings:
            steps = math.inf
        if steps is not None:
            self.add_callback(FrozenEmbeddingPhase(self.saffu_model.model, steps))

    @property
    def saffu_model(self) -> SaffuForCausalLM:
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, SaffuForCausalLM):
            raise TypeError(f"ExplicitTrainer trains SaffuForCausalLM models, got {type(model).__name__}")
        return model

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """`Trainer.create_optimizer`, with the output layer and the pivot's channel in parameter groups of their
        own learning rates (`head_learning_rate`, `pivot_head_learning_rate`) when they are set."""
        pivot_rate = self.args.pivot_head_learning_rate
        rates = {"lm_head.": self.args.head_learning_rate}
        rates |= dict.fromkeys(("pivot_head.", "pivot_bigrams.", "pivot_trigrams."), pivot_rate)
        rates = {prefix: rate for prefix, rate in rates.items() if rate is not None}
        if self.optimizer is None and rates:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple, list] = {}
            for name, parameter in opt_model.named_parameters():
                if parameter.requires_grad:
                    prefix = next((p for p in rates if name.removeprefix("module.").startswith(p)), None)
                    groups.setdefault((prefix, name in decay), []).append(parameter)
            param_groups = [
                {
                    "params": params,
                    "weight_decay": self.args.weight_decay if decayed else 0.0,
                    **({"lr": rates[prefix]} if prefix is not None else {}),
                }
                for (prefix, decayed), params in groups.items()
            ]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    def check_vocabulary(self) -> None:
        """The tokenizer must not produce ids the model has no row for."""
        tokenizer = self.processing_class
        vocab_size = self.saffu_model.config.vocab_size
        if tokenizer is not None and hasattr(tokenizer, "__len__") and len(tokenizer) != vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the model config has vocab_size={vocab_size}: "
                "build the config with vocab_size=len(tokenizer)"
            )

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Warm-start (unless resuming or already warm-started), then `Trainer.train`; with `warm_start_only`,
        no backprop. `resume_from_checkpoint`: a path, or True / "true" for the last checkpoint in output_dir."""
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        check_output_dir(self.args, checkpoint)
        model = self.saffu_model
        if checkpoint is not None:
            model.config.warm_started = checkpoint_warm_started(checkpoint)
        if self.args.warm_start_only and checkpoint is not None:
            raise ValueError("warm_start_only runs no backprop: it cannot resume from a checkpoint")
        if not self.args.warm_start:
            reason = "disabled (warm_start=False)"
        elif checkpoint is not None:
            reason = "skipped: resuming from a checkpoint"
        elif model.config.warm_started:
            reason = "skipped: the model is already warm-started"
        else:
            reason = None
            self.run_warm_start()
        if reason is not None:
            self.log({"warm_start_skipped": 1.0})
            logger.info(f"explicit warm start {reason}")
        if self.args.warm_start_only:
            return TrainOutput(global_step=0, training_loss=float("nan"), metrics=dict(self.warm_start_metrics))
        if self.args.table_leave_one_out:
            model.table_leave_one_out = table_leave_one_out(model, self.warm_start_shard(), self.accelerator)
        try:
            return super().train(resume_from_checkpoint=checkpoint, **kwargs)
        finally:
            model.table_leave_one_out = None

    def warm_start_shard(self) -> "DatasetBatches":
        """This process's contiguous, disjoint shard of the (capped) training blocks, read lazily in batches."""
        dataset = self.train_dataset
        if dataset is None or len(dataset) == 0:
            raise ValueError("ExplicitTrainer needs a non-empty train_dataset for the warm start")
        block_size = check_block_lengths(dataset)
        cap = self.args.warm_start_max_tokens
        if cap is not None:
            dataset = dataset.select(range(min(len(dataset), math.ceil(cap / block_size))))
        shard = contiguous_shard(dataset, self.args.world_size, self.args.process_index)
        columns = [c for c in ("input_ids", "attention_mask") if c in shard.column_names]
        return DatasetBatches(shard.with_format("torch", columns=columns), self.args.warm_start_batch_size)

    def run_warm_start(self) -> None:
        start = time.perf_counter()
        report = explicit_warm_start(
            self.saffu_model,
            self.warm_start_shard(),
            attention_iters=self.args.explicit_attention_iters,
            accelerator=self.accelerator,
            show_progress=self.is_local_process_zero() and not self.args.disable_tqdm,
        )
        self.warm_start_report = report
        metrics = {"warm_start_seconds": time.perf_counter() - start, "warm_start_tokens": float(report.tokens)}
        self.log(metrics)
        if self.eval_dataset is not None:
            metrics.update(self.evaluate(metric_key_prefix="warm_start_eval"))  # evaluate() logs its own metrics
        self.warm_start_metrics = metrics
        self.warm_start_log.entries.append({**metrics, "step": 0})

    def create_model_card(self, *args, dataset_name: str | None = None, **kwargs) -> None:
        """The SAFFU model card instead of transformers' generic one (used by `push_to_hub`); a card
        already in output_dir (written by `hf-saffu train`, with test results) is kept."""
        if not self.is_world_process_zero() or (Path(self.args.output_dir) / "README.md").exists():
            return
        model = self.saffu_model
        history = {key: value for log in self.state.log_history for key, value in log.items()}
        train_tokens = sum(sum(mask) for mask in self.train_dataset["attention_mask"]) if self.train_dataset else 0
        write_model_card(
            self.args.output_dir,
            {
                "architecture": describe_architecture(model.config),
                "num_parameters": sum(p.numel() for p in model.parameters()),
                "dataset_name": dataset_name or UNSPECIFIED_DATASET,
                "train_tokens": train_tokens,
                "warm_start_perplexity": self.warm_start_metrics.get("warm_start_eval_perplexity"),
                "final_perplexity": history.get("eval_perplexity"),
                "warm_start_seconds": self.warm_start_metrics.get("warm_start_seconds"),
                "backprop_seconds": history.get("train_runtime"),
            },
        )

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ) -> EvalLoopOutput:
        """Exact token-level loss and perplexity (only when no `compute_metrics` asks for predictions): the rows'
        NLL from `hf_saffu.evaluation.token_nll`, gathered across processes. On packed blocks this is the
        protocol of `hf_saffu.evaluation` (what `hf-saffu evaluate --data` reproduces)."""
        if self.compute_metrics is not None:
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        nll = torch.zeros((), dtype=torch.float64)
        tokens = torch.zeros((), dtype=torch.float64)
        samples = 0
        with torch.no_grad():
            for batch in dataloader:
                batch = self._prepare_inputs(batch)
                mask = batch.get("attention_mask")
                nll_rows, token_rows = token_nll(model, batch["input_ids"], mask, batch["labels"])
                per_sample = torch.stack([nll_rows, token_rows.double()], dim=1)
                per_sample = self.accelerator.gather_for_metrics(per_sample)
                nll += per_sample[:, 0].sum().cpu()
                tokens += per_sample[:, 1].sum().cpu()
                samples += per_sample.shape[0]
        model.train(was_training)
        if tokens.item() == 0:
            raise ValueError("the evaluation data holds no predicted tokens")
        loss = (nll / tokens).item()
        metrics = {
            f"{metric_key_prefix}_loss": loss,
            f"{metric_key_prefix}_perplexity": perplexity_from_loss(loss),
            f"{metric_key_prefix}_tokens": tokens.item(),
        }
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=samples)

    def _save_checkpoint(self, model, trial) -> None:
        """`Trainer._save_checkpoint` (model, optimizer, scheduler, scaler, RNG states, trainer state, push,
        rotation), written into tmp-checkpoint-N and renamed to checkpoint-N once every process is done."""
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = os.path.join(run_dir, STAGING_PREFIX + name), os.path.join(run_dir, name)
        if self.args.should_save:
            remove_staged_checkpoints(run_dir)
        self.accelerator.wait_for_everyone()
        self.save_model(staging, _internal_call=True)
        self.note_best_checkpoint(run_dir)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(staging)
            self._save_scaler(staging)
            self._save_rng_state(staging)
        if self.args.should_save:
            self.store_callback_states()
            self.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(staging, final)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def note_best_checkpoint(self, run_dir: str) -> None:
        """`state.best_model_checkpoint`: the best step's checkpoint when it exists (or is being saved now)."""
        best_step = self.state.best_global_step
        best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
        if best_step and (best_step == self.state.global_step or os.path.exists(best)):
            self.state.best_model_checkpoint = best

    def store_callback_states(self) -> None:
        """Put the `ExportableState` callbacks' and the control's state into `self.state` (as Trainer does)."""
        for callback in [*self.callback_handler.callbacks, self.control]:
            if isinstance(callback, ExportableState):
                name = callback.__class__.__name__
                if isinstance(self.state.stateful_callbacks[name], list):
                    self.state.stateful_callbacks[name].append(callback.state())
                else:
                    self.state.stateful_callbacks[name] = callback.state()


def check_output_dir(args: ExplicitTrainingArguments, resume_from_checkpoint) -> None:
    """A new run (not resuming, no `overwrite_output_dir`) must not replace a previous run's model or rotate
    away its checkpoints: a FileExistsError naming them."""
    if resume_request(resume_from_checkpoint) is not None or args.overwrite_output_dir:
        return
    previous = previous_run_files(Path(args.output_dir))
    if previous:
        raise FileExistsError(
            f"output_dir {args.output_dir} holds a previous run ({', '.join(previous)}), which a new run would "
            "overwrite or delete: resume it (resume_from_checkpoint), choose another output_dir, or set "
            "overwrite_output_dir=True"
        )


def previous_run_files(output_dir: Path) -> list[str]:
    """The saved model and checkpoint-N directories in output_dir, sorted by name."""
    if not output_dir.is_dir():
        return []
    return sorted(path.name for path in output_dir.iterdir() if PREVIOUS_RUN.match(path.name))


def remove_staged_checkpoints(run_dir: str) -> None:
    """Delete the tmp-checkpoint-* directories an interrupted save left behind."""
    for staged in Path(run_dir).glob(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.rmtree(staged)


def check_block_lengths(dataset) -> int:
    """The common length of the dataset's input_ids rows; a ValueError when rows differ (unpacked data)."""
    lengths = set()
    for table in dataset.with_format("arrow").iter(batch_size=10_000):
        counts = pc.list_value_length(table["input_ids"])
        lengths.update(pc.unique(counts).to_pylist())
    if len(lengths) > 1:
        raise ValueError(
            f"the train_dataset's input_ids rows have different lengths (from {min(lengths)} to {max(lengths)} "
            "tokens): pack the documents into equal blocks (hf_saffu.data.tokenize_and_pack) before training"
        )
    return lengths.pop()


def contiguous_shard(dataset, num_shards: int, index: int):
    """Shard `index` of `Dataset.shard(contiguous=True)`, or an empty dataset for a process beyond the last row
    (where datasets raises IndexError): that process contributes zero statistics."""
    if index >= len(dataset):
        return dataset.select([])
    return dataset.shard(num_shards=num_shards, index=index, contiguous=True)
