"""`ExplicitTrainer`: the explicit warm start, then ordinary backprop through `transformers.Trainer`.

`train()` warm-starts the (unwrapped) model before `Trainer.train` prepares it for data
parallelism. Each process reads a disjoint, contiguous shard of the training blocks (not Trainer's
dataloader, which repeats samples to even out the ranks); the float64 statistics are summed over
processes before every process solves, so every rank ends with the weights one process would get.
The warm start is skipped when resuming from a checkpoint or when the model is already warm-started
(`config.warm_started`, saved with the model). The flag follows the weights: resuming takes it from the
checkpoint whose weights are loaded. `warm_start_only` warm-starts (and evaluates) without backprop.

Evaluation reports the exact token-level loss and perplexity, exp(sum of token NLL / number of
predicted tokens), with every eval sample counted exactly once across processes.
"""

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import EvalLoopOutput, TrainOutput, get_last_checkpoint
from transformers.utils import CONFIG_NAME, logging

from .model_card import UNSPECIFIED_DATASET, describe_architecture, write_model_card
from .modeling_saffu import SaffuForCausalLM
from .warm_start import explicit_warm_start

logger = logging.get_logger(__name__)


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
    freeze_embeddings_steps: int | None = field(
        default=None,
        metadata={
            "help": "train the embeddings after this many optimizer steps (0: from the start); "
            "None: follow the model config's freeze_embeddings for the whole run"
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


class EmbeddingFreezer(TrainerCallback):
    """Zeroes the embedding gradient for the first `steps` optimizer steps, then lets it through.

    The embeddings keep requires_grad=True, so DDP registers them from the start and the optimizer
    holds them; a zero gradient leaves Adam's moments and the weights untouched. The gradient hook
    lives only while this trainer trains.
    """

    def __init__(self, weight: torch.nn.Parameter, steps: int):
        self.weight = weight
        self.steps = steps
        self.frozen = steps > 0
        self.hook = None
        weight.requires_grad_(True)

    def on_train_begin(self, args, state, control, **kwargs):
        self.hook = self.weight.register_hook(lambda grad: torch.zeros_like(grad) if self.frozen else grad)

    def on_step_begin(self, args, state, control, **kwargs):
        self.frozen = state.global_step < self.steps

    def on_train_end(self, args, state, control, **kwargs):
        self.hook.remove()


class WarmStartLog(TrainerCallback):
    """Puts the warm-start log entries into the log history of the run (`Trainer.train` starts a new one)."""

    def __init__(self):
        self.entries: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        state.log_history[:0] = self.entries


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint to resume from: a path as given, or for True (or "true", as the command line gives it)
    the last checkpoint-N in output_dir; None for a new run (None, False, "false")."""
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "false"):
        resume_from_checkpoint = resume_from_checkpoint.lower() == "true"
    if resume_from_checkpoint is True:
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise ValueError(f"resume_from_checkpoint=true, but output_dir {output_dir} holds no checkpoint-N folder")
        return last
    return resume_from_checkpoint or None


def checkpoint_warm_started(checkpoint: str) -> bool:
    """`warm_started` of the model saved in a checkpoint (False when it has no config)."""
    config_file = Path(checkpoint) / CONFIG_NAME
    return config_file.is_file() and bool(json.loads(config_file.read_text()).get("warm_started", False))


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
        steps = self.args.freeze_embeddings_steps
        if steps is not None:
            self.add_callback(EmbeddingFreezer(self.saffu_model.model.embeddings.weight, steps))

    @property
    def saffu_model(self) -> SaffuForCausalLM:
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, SaffuForCausalLM):
            raise TypeError(f"ExplicitTrainer trains SaffuForCausalLM models, got {type(model).__name__}")
        return model

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
        return super().train(resume_from_checkpoint=checkpoint, **kwargs)

    def warm_start_shard(self) -> "DatasetBatches":
        """This process's contiguous, disjoint shard of the (capped) training blocks, read lazily in batches."""
        dataset = self.train_dataset
        if dataset is None or len(dataset) == 0:
            raise ValueError("ExplicitTrainer needs a non-empty train_dataset for the warm start")
        cap = self.args.warm_start_max_tokens
        if cap is not None:
            block_size = len(dataset[0]["input_ids"])
            dataset = dataset.select(range(min(len(dataset), math.ceil(cap / block_size))))
        shard = dataset.shard(num_shards=self.args.world_size, index=self.args.process_index, contiguous=True)
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
        """Exact token-level loss and perplexity (only when no `compute_metrics` asks for predictions)."""
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
                logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
                labels = batch["labels"][:, 1:]
                token_nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].transpose(1, 2).float(), labels, ignore_index=-100, reduction="none"
                )
                per_sample = torch.stack([token_nll.double().sum(1), (labels != -100).double().sum(1)], dim=1)
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
            f"{metric_key_prefix}_perplexity": math.exp(loss),
            f"{metric_key_prefix}_tokens": tokens.item(),
        }
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=samples)
