"""Fit a tiny mixture model's gate on a validation split through ExplicitTrainer in 1 or N processes and save the
fit (rank 0). Run directly (one process) or under `torchrun --nproc_per_node 2` (CPU, gloo) by
tests/test_calibration.py::test_two_process_calibration_equals_one_process.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from hf_saffu.trainer import ExplicitTrainer, ExplicitTrainingArguments

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from factories import packed_dataset, randomised_mixture  # noqa: E402


def main(output_path: str) -> None:
    validation = packed_dataset(13, seed=1)  # an odd number of blocks: the last batch is padded in 2 processes
    assert len(validation) % 2 == 1, len(validation)
    model = randomised_mixture()
    arguments = ExplicitTrainingArguments(
        output_dir=str(Path(output_path).parent / "unused"),
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        per_device_eval_batch_size=3,
        calibrate_gate=True,
    )
    trainer = ExplicitTrainer(model=model, args=arguments, train_dataset=validation, eval_dataset=validation)
    fit = trainer.calibrate_gate()
    if trainer.args.process_index == 0:
        mixture = model.neural_mixture
        gate = torch.cat([mixture.gate_weight.detach().flatten(), mixture.gate_bias.detach()])
        result = {"world_size": trainer.args.world_size, "scale": fit.scale, "shift": fit.shift, "gate": gate}
        torch.save({**result, "targets": fit.targets}, output_path)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
