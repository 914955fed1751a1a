"""Generic safety of a training run as `transformers.TrainerCallback`s, which `hf_saffu.trainer.ExplicitTrainer`
installs (any `Trainer` can: `Trainer(..., callbacks=[DivergenceGuard()])`)."""

from transformers import TrainerCallback

from .errors import check_finite


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
