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

A run loses nothing it already has. The generic guards are the output_dir's (`hf_saffu.output_dir`: no
previous run overwritten unless resuming or `overwrite_output_dir`, the directory locked while a run trains,
checked writable before anything is read, the final save staged) and callbacks the trainer installs
(`hf_saffu.callbacks.DivergenceGuard`: training stops at the first step that makes a weight NaN or infinite,
before that step is logged or saved). What the trainer adds at save time it adds around Trainer's own code:
every checkpoint is written by `Trainer._save_checkpoint` under a staging name that is renamed once complete,
so a `checkpoint-N` directory is either whole or absent. A resume from a checkpoint that already holds the run's
last step trains no further step. The saved arguments (training_args.bin) never hold `hub_token`.
"""

import math
import os
import shutil
import time
from collections.abc import Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy
import pyarrow.compute as pc
import torch
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    EvalLoopOutput,
    TrainOutput,
    rotate_checkpoints,
)
from transformers.utils import CONFIG_NAME, logging

from . import calibration
from .callbacks import DivergenceGuard
from .configuration_saffu import ExplicitWarmStartConfig, SaffuConfig
from .errors import check_saved_files, load_json
from .evaluation import perplexity_from_loss, token_nll
from .frozen_phase import FrozenEmbeddingPhase, FrozenInputCache
from .leave_one_out import direct_path_leave_one_out, table_leave_one_out
from .model_card import model_card_for_dir
from .modeling_saffu import SaffuForCausalLM, table_name
from .output_dir import (
    STAGING_PREFIX,
    check_output_dir,
    output_dir_lock,
    remove_checkpoints,
    remove_staged_checkpoints,
    remove_staged_saves,
    resolve_checkpoint,
    staged_folder,
)
from .warm_start import explicit_warm_start, set_table_capacity

logger = logging.get_logger(__name__)


# Saved in each checkpoint of a run with the direct path's leave-one-out values: the warm start's F, read on resume
DIRECT_PATH_COUNTS_NAME = "saffu_direct_path_counts.safetensors"
# The learning rates of parts with their own parameter group (`ExplicitTrainer.create_optimizer`; None: learning_rate)
PART_LEARNING_RATES = ("head_learning_rate", "table_learning_rate", "neural_mixture_learning_rate")


def freeze_counted_parts(model: SaffuForCausalLM) -> None:
    """Every parameter the warm start counts or solves stops taking gradients (`freeze_counted_parts`): all but the
    neural part's (`SaffuForCausalLM.backprop_parameters`)."""
    model.requires_grad_(False)
    for parameter in model.backprop_parameters():
        parameter.requires_grad_(True)


@dataclass
class ExplicitTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus when the explicit warm start runs; how it runs is the model's recipe
    (`SaffuConfig.warm_start_recipe`: smoothing, discount, attention rounds, tokens read, batch size)."""

    warm_start: bool = field(default=True, metadata={"help": "run the explicit warm start before backprop"})
    save_counts: bool = field(
        default=False,
        metadata={
            "help": "save the warm start's n-gram counts beside the model (saffu_counts.safetensors, 16 bytes per "
            "distinct n-gram: 13 MB for Brown) for hf-saffu update / forget"
        },
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
    table_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "learning rate of the pivot's channel: its n-gram tables (every order), or the pivot head Q "
            "(None: learning_rate)"
        },
    )
    neural_mixture_learning_rate: float | None = field(
        default=None,
        metadata={"help": "learning rate of the neural word model (neural_mixture_dim > 0; None: learning_rate)"},
    )
    neural_mixture_weight_decay: float | None = field(
        default=None,
        metadata={
            "help": "AdamW's decoupled weight decay of the neural word model's learned weights (its weight "
            "matrices and token embeddings: neither biases nor layer norms, nor its closed-form direct path), "
            "which regularises its multi-epoch training (None: weight_decay, as every other weight gets)"
        },
    )
    pivot_head_learning_rate: float | None = field(
        default=None, metadata={"help": "deprecated: the earlier name of table_learning_rate (read as it)"}
    )
    freeze_counted_parts: bool = field(
        default=False,
        metadata={
            "help": "backprop trains the neural word model's learned parts alone (neural_mixture_dim > 0): what the "
            "warm start counts or solves (the embeddings, SAFFU layers, output layer, n-gram tables and the neural "
            "word model's closed-form direct path) keeps its explicit values and computes no gradients, and the "
            "counted parts' ln p at each training block's targets is computed once and cached, so a step costs "
            "less (freeze_embeddings_steps is then not used)"
        },
    )
    table_leave_one_out: bool = field(
        default=False,
        metadata={
            "help": "train on leave-one-out table values: each training position reads the bigram and trigram "
            "tables as if its own occurrence had not been counted (hf_saffu.leave_one_out); evaluation reads the "
            "plain tables. Needs the tables counted from the whole training split (warm_start_max_tokens=None)"
        },
    )

    calibrate_gate: bool = field(
        default=False,
        metadata={
            "help": "after training, fit the neural word model's gate on the validation split (eval_dataset): "
            "lambda_t = sigmoid(a s_t + d), with the scale a and shift d chosen by the held-out likelihood, as "
            "deleted interpolation fits its weights, and folded into the gate's weights (hf_saffu.calibration). The "
            "trained gate is too sharp on unseen text. With caches (neural_mixture_cache_window) each cache's gate is "
            "fitted with it the same way. The reported validation perplexity then includes these fitted numbers (two, "
            "and two more per cache)"
        },
    )

    def __post_init__(self):
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            self.use_cpu = True  # torchrun without an accelerator: gloo data parallelism, not independent runs
        super().__post_init__()
        if self.freeze_embeddings_steps is not None and self.freeze_embeddings_steps < 0:
            raise ValueError(f"freeze_embeddings_steps must be >= 0 or None, got {self.freeze_embeddings_steps}")
        self.map_deprecated_table_rate()
        for name in ("learning_rate", *PART_LEARNING_RATES, "neural_mixture_weight_decay"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 or None, got {value}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer >= 0 and < 2**32 (numpy's range), got {self.seed}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"max_steps must be >= 1, or -1 for num_train_epochs, got {self.max_steps} (warm_start_only=true "
                "runs no backprop step)"
            )
        if self.warm_start_only and not self.warm_start:
            raise ValueError("warm_start_only=True needs warm_start=True (a run without either does nothing)")

    def map_deprecated_table_rate(self) -> None:
        """Read `pivot_head_learning_rate` (the earlier name, in configs and on command lines) as
        `table_learning_rate`, with a deprecation warning; a ValueError when both are given and differ."""
        old = self.pivot_head_learning_rate
        if old is None:
            return
        if self.table_learning_rate is not None and self.table_learning_rate != old:
            raise ValueError(
                f"pivot_head_learning_rate={old} is the earlier name of table_learning_rate="
                f"{self.table_learning_rate}: give one"
            )
        logger.warning("pivot_head_learning_rate is deprecated: it is read as table_learning_rate")
        self.table_learning_rate, self.pivot_head_learning_rate = old, None

    def __getstate__(self) -> dict:
        """The arguments as pickled (Trainer saves them with `torch.save` as training_args.bin in every checkpoint,
        the final model and each Hub push) without the secrets: every `*_token` string (hub_token) is None. A
        `copy.deepcopy` of the arguments drops the token too (the running object keeps it)."""
        return {
            key: None if key.endswith("_token") and isinstance(value, str) else value
            for key, value in vars(self).items()
        }


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


class StreamBatches:
    """Re-iterable batches of a `datasets.IterableDataset` of packed blocks: every pass re-iterates the stream and
    stacks `batch_size` rows into tensors (memory: one batch, whatever the length of the stream)."""

    def __init__(self, dataset: IterableDataset, batch_size: int):
        self.dataset = dataset
        self.batch_size = batch_size

    def __iter__(self):
        for batch in self.dataset.iter(batch_size=self.batch_size):
            yield {
                column: stacked_rows(column, batch[column])
                for column in ("input_ids", "attention_mask")
                if column in batch
            }


def stacked_rows(column: str, rows: list) -> torch.Tensor:
    """The rows of a batch of packed blocks as one tensor; a ValueError when their lengths differ (unpacked data)."""
    lengths = {len(row) for row in rows}
    if len(lengths) > 1:
        raise ValueError(
            f"the train_dataset's {column} rows have different lengths (from {min(lengths)} to {max(lengths)} "
            "tokens): pack the documents into equal blocks (hf_saffu.data.tokenize_and_pack) before training"
        )
    if torch.is_tensor(rows[0]):
        return torch.stack(rows)
    return torch.as_tensor(numpy.asarray(rows))  # lists or numpy rows (torch warns that a list of arrays is slow)


def stream_shard(
    dataset: IterableDataset, recipe: ExplicitWarmStartConfig, args: ExplicitTrainingArguments
) -> StreamBatches:
    """The warm start's batches of a streamed train_dataset: its first ceil(warm_start_max_tokens / block size)
    blocks (all without a cap; the block size read from the first block), split between the processes by
    `datasets.distributed.split_dataset_by_node` (whole shards per process when the stream's shards divide
    evenly, else every world_size-th block): disjoint parts that cover the stream, so the summed statistics are
    those of one process reading it all."""
    first = next(iter(dataset), None)
    if first is None:
        raise ValueError("ExplicitTrainer needs a non-empty train_dataset for the warm start (the stream is empty)")
    if recipe.warm_start_max_tokens is not None:
        dataset = dataset.take(math.ceil(recipe.warm_start_max_tokens / len(first["input_ids"])))
    if args.world_size > 1:
        dataset = split_dataset_by_node(dataset, rank=args.process_index, world_size=args.world_size)
    return StreamBatches(dataset, recipe.warm_start_batch_size)


def checkpoint_warm_started(checkpoint: str) -> bool:
    """`warm_started` of the model saved in a checkpoint (False when it has no config)."""
    config_file = Path(checkpoint) / CONFIG_NAME
    return config_file.is_file() and bool(load_json(config_file).get("warm_started", False))


def match_checkpoint_tables(model: SaffuForCausalLM, checkpoint: str) -> None:
    """Give the model's pivot tables the sizes the checkpoint's warm start chose (its config's ngram_capacities, or
    pivot_bigrams and pivot_trigrams as earlier versions wrote them), so that its weights load into them."""
    config_file = Path(checkpoint) / CONFIG_NAME
    if not config_file.is_file():
        return
    saved = SaffuConfig.from_json_file(str(config_file))
    for order in model.config.table_orders:
        if order in saved.table_orders and saved.table_capacity(order) != len(
            getattr(model, table_name(order)).columns
        ):
            set_table_capacity(model, order, saved.table_capacity(order))


class WarmStartLog(TrainerCallback):
    """Puts the warm-start log entries into the log history of the run (`Trainer.train` starts a new one, or,
    resuming, reads the checkpoint's): after what the history holds, at the step training starts from."""

    def __init__(self):
        self.entries: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        state.log_history.extend({"step": state.global_step, **entry} for entry in self.entries)


class LeaveOneOutHooks(TrainerCallback):
    """Sets the leave-one-out hooks when training begins: after `Trainer.train` has loaded a checkpoint it resumes
    from, whose weights (the tables' entries, the inputs of the direct path) the hooks are computed from."""

    def __init__(self, trainer: "ExplicitTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.set_leave_one_out()


class ExplicitTrainer(Trainer):
    """A `Trainer` that warm-starts SAFFU models explicitly before backprop."""

    args: ExplicitTrainingArguments

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, ExplicitTrainingArguments):
            raise TypeError("ExplicitTrainer needs ExplicitTrainingArguments")
        self.check_vocabulary()
        self.check_leave_one_out()
        self.warm_start_report = None
        self.warm_start_metrics: dict[str, float] = {}
        self.checkpoint_staging: str | None = None
        self.resumed_checkpoint: str | None = None  # the checkpoint `train` resumes from
        self.warm_start_log = WarmStartLog()
        self.add_callback(self.warm_start_log)
        self.add_callback(DivergenceGuard())
        steps = self.args.freeze_embeddings_steps
        if (steps is None and self.saffu_model.config.freeze_embeddings) or self.args.freeze_counted_parts:
            steps = math.inf
        if self.args.freeze_counted_parts and self.saffu_model.neural_mixture is None:
            raise ValueError(
                "freeze_counted_parts=True trains the neural word model alone, but the model has none "
                "(SaffuConfig.neural_mixture_dim=0): nothing would train"
            )
        if self.saffu_model.config.neural_mixture_aux_loss_coef and (
            self.label_smoother is not None or self.compute_loss_func is not None
        ):
            raise ValueError(
                "SaffuConfig.neural_mixture_aux_loss_coef is part of the model's own loss, which "
                "label_smoothing_factor and compute_loss_func replace: set one or the other"
            )
        if steps is not None:
            self.add_callback(FrozenEmbeddingPhase(self.saffu_model.model, steps))
        self.check_gate_calibration()
        self.gate_calibration: calibration.GateCalibration | None = None

    @property
    def saffu_model(self) -> SaffuForCausalLM:
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, SaffuForCausalLM):
            raise TypeError(f"ExplicitTrainer trains SaffuForCausalLM models, got {type(model).__name__}")
        return model

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """`Trainer.create_optimizer`, with the output layer and the pivot's channel in parameter groups of their
        own learning rates (`head_learning_rate`, `table_learning_rate`, `neural_mixture_learning_rate`) when they
        are set, and the neural word model's learned weights at `neural_mixture_weight_decay` when it is set."""
        saffu = self.saffu_model
        tables = [f"{table_name(order)}." for order in saffu.config.table_orders]
        rates = {"lm_head.": self.args.head_learning_rate}
        rates |= dict.fromkeys(("pivot_head.", *tables), self.args.table_learning_rate)
        rates["neural_mixture."] = self.args.neural_mixture_learning_rate
        rates = {prefix: rate for prefix, rate in rates.items() if rate is not None}
        neural_decay = self.args.neural_mixture_weight_decay
        learned = set()
        if neural_decay is not None and saffu.neural_mixture is not None:
            learned = {id(parameter) for parameter in saffu.neural_mixture.learned_parameters()}
        if self.optimizer is None and (rates or learned):
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple, list] = {}
            for name, parameter in opt_model.named_parameters():
                if parameter.requires_grad:
                    prefix = next((p for p in rates if name.removeprefix("module.").startswith(p)), None)
                    weight_decay = 0.0
                    if name in decay:
                        weight_decay = neural_decay if id(parameter) in learned else self.args.weight_decay
                    groups.setdefault((prefix, weight_decay), []).append(parameter)
            param_groups = [
                {
                    "params": params,
                    "weight_decay": weight_decay,
                    **({"lr": rates[prefix]} if prefix is not None else {}),
                }
                for (prefix, weight_decay), params in groups.items()
            ]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    def check_leave_one_out(self) -> None:
        """Leave-one-out table values need the tables counted from every training position."""
        max_tokens = self.saffu_model.config.warm_start_recipe.warm_start_max_tokens
        if self.args.table_leave_one_out and max_tokens is not None:
            raise ValueError(
                "table_leave_one_out needs tables counted from every training position: warm_start_max_tokens "
                f"must be None, got {max_tokens}"
            )

    def check_gate_calibration(self) -> None:
        """calibrate_gate needs a gate and one held-out split to fit it on."""
        if not self.args.calibrate_gate:
            return
        if self.saffu_model.neural_mixture is None:
            raise ValueError(
                "calibrate_gate=True fits the neural word model's gate, but the model has none "
                "(SaffuConfig.neural_mixture_dim=0)"
            )
        if self.eval_dataset is None or isinstance(self.eval_dataset, dict):
            given = "none" if self.eval_dataset is None else f"a dict of {len(self.eval_dataset)} datasets"
            raise ValueError(
                f"calibrate_gate=True fits the gate on one validation split (eval_dataset, --validation_files), got "
                f"{given}"
            )

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
        no backprop. `resume_from_checkpoint`: a path, or True / "true" for the last checkpoint in output_dir.
        The output_dir is locked for the whole call (`output_dir_lock`)."""
        with output_dir_lock(self.args.output_dir, self.args.should_save):
            output = self.train_locked(resume_from_checkpoint, **kwargs)
            if self.args.calibrate_gate:
                self.calibrate_gate()
            return output

    def calibrate_gate(self) -> calibration.GateCalibration:
        """Fit the gate on the validation split (`hf_saffu.calibration`) and fold it into the model. Every process
        reads its shard of the split and fits on the terms gathered from all of them, so the processes keep equal
        weights and the fit equals a single process's."""
        accelerator = self.accelerator

        def gather(terms: torch.Tensor) -> torch.Tensor:  # blocks may differ in length between processes
            return accelerator.gather_for_metrics(accelerator.pad_across_processes(terms, dim=1, pad_index=math.nan))

        batches = (self._prepare_inputs(batch) for batch in self.get_eval_dataloader())
        self.gate_calibration = calibration.calibrate_gate(self.saffu_model, batches, gather)
        self.log(self.gate_calibration.metrics())
        return self.gate_calibration

    def train_locked(self, resume_from_checkpoint=None, **kwargs):
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        check_output_dir(self.args, checkpoint)
        if checkpoint is not None:
            check_saved_files(checkpoint)
        if self.args.should_save:
            remove_staged_saves(self.args.output_dir)
            remove_staged_checkpoints(self.args.output_dir)
            if checkpoint is None and self.args.overwrite_output_dir:
                remove_checkpoints(self.args.output_dir)
        model = self.saffu_model
        self.resumed_checkpoint = checkpoint
        if checkpoint is not None:
            model.config.warm_started = checkpoint_warm_started(checkpoint)
            match_checkpoint_tables(model, checkpoint)
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
            self.warm_start_log.entries.append({"warm_start_skipped": 1.0})
            logger.info(f"explicit warm start {reason}")
        if self.args.warm_start_only:
            return TrainOutput(global_step=0, training_loss=float("nan"), metrics=dict(self.warm_start_metrics))
        if checkpoint is not None and self.is_finished(checkpoint):
            return self.load_finished(checkpoint)
        hooks = LeaveOneOutHooks(self) if self.args.table_leave_one_out else None
        if hooks is not None:
            self.add_callback(hooks)
        trainable = {parameter: parameter.requires_grad for parameter in model.parameters()}
        if self.args.freeze_counted_parts:  # after the warm start and a resume, which may replace the tables
            freeze_counted_parts(model)
            model.frozen_counted = FrozenInputCache()
        try:
            return super().train(resume_from_checkpoint=checkpoint, **kwargs)
        finally:
            if hooks is not None:
                self.remove_callback(hooks)
            model.table_leave_one_out = model.neural_leave_one_out = model.frozen_counted = None
            for parameter, flag in trainable.items():  # the model is left as it came
                parameter.requires_grad_(flag)

    def set_leave_one_out(self) -> None:
        """The model's leave-one-out hooks, from the warm start's counts or, resuming, its direct-path counts saved
        with the checkpoint (`DIRECT_PATH_COUNTS_NAME`; counted again from the checkpoint's weights if it has none)
        and the tables' counts counted again (`LeaveOneOutHooks` calls it once the checkpoint is loaded)."""
        model, report = self.saffu_model, self.warm_start_report
        counted = report.statistics if report is not None else None
        model.table_leave_one_out = table_leave_one_out(model, self.warm_start_shard(), self.accelerator, counted)
        if model.neural_mixture is not None:
            direct = report.direct_path_counts if report is not None else None
            if direct is None and self.resumed_checkpoint is not None:
                direct = saved_direct_path_counts(self.resumed_checkpoint)
            shard = self.warm_start_shard()
            model.neural_leave_one_out = direct_path_leave_one_out(model, shard, self.accelerator, direct)

    def compute_loss(self, model, inputs, *args, **kwargs):
        """Trainer's loss; a training step whose loss the model computes asks for the loss alone (`skip_logits`:
        with the neural mixture, ln p at the targets only instead of V-wide; BEYOND_COUNTING.md, its cost)."""
        if model.training and "labels" in inputs and self.label_smoother is None and self.compute_loss_func is None:
            inputs = {**inputs, "skip_logits": True}
        return super().compute_loss(model, inputs, *args, **kwargs)

    def is_finished(self, checkpoint: str) -> bool:
        """The checkpoint already holds the last step of this run (max_steps, else the step count it was saved
        with): a run killed while saving its final model resumes to that save, with no step past the last."""
        state_file = Path(checkpoint) / TRAINER_STATE_NAME
        if not state_file.is_file():
            return False
        state = TrainerState(**load_json(state_file))
        last = self.args.max_steps if self.args.max_steps > 0 else state.max_steps
        return 0 < last <= state.global_step

    def load_finished(self, checkpoint: str) -> TrainOutput:
        """The weights and state of a finished run's last checkpoint, with no training step."""
        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
        losses = [entry["train_loss"] for entry in self.state.log_history if "train_loss" in entry]
        logger.info(f"{checkpoint} holds the run's last step ({self.state.global_step}): no step to train")
        return TrainOutput(self.state.global_step, losses[-1] if losses else float("nan"), {})

    def _issue_warnings_after_load(self, load_result) -> None:
        """A checkpoint whose weights do not match the model (missing or unexpected tensors) is refused, where
        Trainer only warns: resuming from it would continue from partly random weights."""
        problems = {"missing": load_result.missing_keys, "unexpected": load_result.unexpected_keys}
        listed = "; ".join(f"{kind}: {', '.join(sorted(keys)[:4])}" for kind, keys in problems.items() if keys)
        if listed:
            raise ValueError(f"the checkpoint's weights do not match the model ({listed})")

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """`Trainer._save` (model, tokenizer, training_args.bin); into output_dir itself (the final model, and
        `push_to_hub`'s save) through a staging folder (`staged_folder`), so a kill or a full disk leaves the
        previous files whole."""
        target = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save or os.path.abspath(target) != os.path.abspath(self.args.output_dir):
            return super()._save(target, state_dict)
        with staged_folder(target) as staging:
            super()._save(str(staging), state_dict)

    def warm_start_shard(self) -> "DatasetBatches | StreamBatches":
        """This process's contiguous, disjoint shard of the (capped) training blocks, read lazily in batches."""
        dataset = warm_start_dataset(self.train_dataset)
        recipe = self.saffu_model.config.warm_start_recipe
        if isinstance(dataset, IterableDataset):
            return stream_shard(dataset, recipe, self.args)
        if dataset is None or len(dataset) == 0:
            raise ValueError("ExplicitTrainer needs a non-empty train_dataset for the warm start")
        block_size = check_block_lengths(dataset)
        cap = recipe.warm_start_max_tokens
        if cap is not None:
            dataset = dataset.select(range(min(len(dataset), math.ceil(cap / block_size))))
        shard = contiguous_shard(dataset, self.args.world_size, self.args.process_index)
        columns = [c for c in ("input_ids", "attention_mask") if c in shard.column_names]
        return DatasetBatches(shard.with_format("torch", columns=columns), recipe.warm_start_batch_size)

    def run_warm_start(self) -> None:
        start = time.perf_counter()
        report = explicit_warm_start(
            self.saffu_model,
            self.warm_start_shard(),
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
        """README.md in output_dir: the SAFFU model card (`model_card_for_dir`, what every publishing path writes)
        instead of transformers' generic one, naming the repo `push_to_hub` publishes to; the results of this
        run fill in what output_dir's all_results.json (written by `hf-saffu train`) does not hold. A card
        describes saved weights: the model is saved into output_dir first when it is not there yet."""
        if not self.is_world_process_zero():
            return
        history = {key: value for log in self.state.log_history for key, value in log.items()}
        dataset = kwargs.get("dataset")
        results = {"dataset_name": dataset_name or (dataset if isinstance(dataset, str) else None)}
        if self.state.global_step or self.warm_start_report is not None:  # this trainer trained the weights
            results |= {
                "train_tokens": self.train_tokens(),
                "warm_start_validation_perplexity": self.warm_start_metrics.get("warm_start_eval_perplexity"),
                "validation_perplexity": history.get("eval_perplexity"),
                "warm_start_seconds": self.warm_start_metrics.get("warm_start_seconds"),
                "backprop_seconds": history.get("train_runtime"),
                "backprop_steps": self.state.global_step,
            }
        output_dir = Path(self.args.output_dir)
        if not (output_dir / CONFIG_NAME).is_file():
            self.save_model(str(output_dir), _internal_call=True)
        repo_id = getattr(self, "hub_model_id", None) or self.args.hub_model_id
        card = model_card_for_dir(output_dir, repo_id, results=results)
        (output_dir / "README.md").write_text(card, encoding="utf-8")

    def train_tokens(self) -> int | None:
        """Real tokens of the training data: counted in a map-style dataset; of a stream, the warm start's count
        (None without a warm start: a stream is not read twice to count it)."""
        if isinstance(self.train_dataset, IterableDataset):
            return self.warm_start_report.tokens if self.warm_start_report is not None else None
        dataset = warm_start_dataset(self.train_dataset)
        if not isinstance(dataset, datasets.Dataset) or "attention_mask" not in dataset.column_names:
            return None
        return sum(sum(mask) for mask in dataset["attention_mask"])

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

    def _get_output_dir(self, trial) -> str:
        """Trainer's run folder; while a checkpoint is written (`_save_checkpoint`), its staging folder."""
        return self.checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """`Trainer._save_checkpoint` (model, optimizer, scheduler, scaler, RNG states, trainer state) and, with the
        direct path's leave-one-out values, the warm start's counts F (`DIRECT_PATH_COUNTS_NAME`), written
        into the staging folder tmp-checkpoint-N (`_get_output_dir`) and renamed to checkpoint-N once every process
        is done; then Trainer's push and rotation of the complete checkpoint. A failed save removes its staging
        folder and leaves the earlier checkpoints as they were."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = os.path.join(run_dir, STAGING_PREFIX + name), os.path.join(run_dir, name)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save of this step left
        self.accelerator.wait_for_everyone()
        self.checkpoint_staging = staging
        try:
            super()._save_checkpoint(model, trial)
            hooks = self.saffu_model.neural_leave_one_out
            if self.args.should_save and hooks is not None:  # a resume must read the warm start's F, not recount it
                save_file({"counts": hooks.counts.contiguous()}, os.path.join(staging, name, DIRECT_PATH_COUNTS_NAME))
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self.checkpoint_staging = None
        if self.state.best_model_checkpoint == os.path.join(staging, name):  # this step is the best: its final name
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staging, name, TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            os.rmdir(staging)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            super()._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer's push of a checkpoint, of its final folder only (`_save_checkpoint` pushes once renamed)."""
        if self.checkpoint_staging is None:
            super()._push_from_checkpoint(checkpoint_folder)


def saved_direct_path_counts(checkpoint: str) -> torch.Tensor | None:
    """The warm start's direct-path counts F saved with `checkpoint` (`DIRECT_PATH_COUNTS_NAME`), None if it has
    none (a checkpoint of an earlier version, or of a run without the neural word model's leave-one-out values)."""
    path = Path(checkpoint) / DIRECT_PATH_COUNTS_NAME
    return load_file(path)["counts"] if path.is_file() else None


def warm_start_dataset(dataset):
    """The training data as the warm start reads it: a `datasets.Dataset` (or an iterable dataset) as given; a
    list of examples or a map-style torch `Dataset` (dicts with input_ids, from `__len__` and `__getitem__`)
    converted with `datasets.Dataset.from_list`; anything else a ValueError naming what is supported."""
    as_given = (datasets.Dataset, datasets.IterableDataset, torch.utils.data.IterableDataset)
    if dataset is None or isinstance(dataset, as_given):
        return dataset
    if isinstance(dataset, Sized) and hasattr(dataset, "__getitem__") and not isinstance(dataset, str | Mapping):
        rows = [dataset[index] for index in range(len(dataset))]
        kinds = {type(row).__name__ for row in rows if not isinstance(row, Mapping) or "input_ids" not in row}
        if kinds:
            raise ValueError(
                f"the train_dataset's examples must be dicts with input_ids (packed blocks), got {sorted(kinds)}"
            )
        return datasets.Dataset.from_list([dict(row) for row in rows])
    raise ValueError(
        f"ExplicitTrainer's train_dataset must be a datasets.Dataset, a datasets.IterableDataset, a torch Dataset "
        f"or a list of dicts with input_ids, got {type(dataset).__name__}"
    )


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
