"""ExplicitTrainer (hf_saffu.trainer): the warm start around Trainer.train, checkpoints, resume, evaluation."""

import json

import torch
from factories import packed_dataset, saffu_config, training_arguments

from hf_saffu import SaffuForCausalLM
from hf_saffu.trainer import ExplicitTrainer


def test_the_best_checkpoint_is_recorded_under_its_final_name(tmp_path):
    """A checkpoint is written in a staging folder and renamed: the best step's path in the state (and in the
    saved trainer_state.json, which a resume reads) is the final checkpoint-N, and load_best_model_at_end
    reloads it."""
    torch.manual_seed(0)
    arguments = training_arguments(
        tmp_path,
        max_steps=4,
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        warm_start=False,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        learning_rate=5e-2,
    )
    data = packed_dataset(40)
    trainer = ExplicitTrainer(
        model=SaffuForCausalLM(saffu_config()), args=arguments, train_dataset=data, eval_dataset=data.select(range(8))
    )
    trainer.train()
    run = tmp_path / "run"
    best = run / f"checkpoint-{trainer.state.best_global_step}"
    assert trainer.state.best_model_checkpoint == str(best) and best.is_dir()
    saved = json.loads((best / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == str(best)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("tmp-")) == []
