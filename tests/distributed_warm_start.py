"""Warm-start a tiny SAFFU through ExplicitTrainer in 1 or N processes and save the weights (rank 0).

Run directly (one process) or under `torchrun --nproc_per_node 2` (CPU, gloo) by
tests/test_warm_start.py::test_two_process_warm_start_equals_one_process and, with one block (an empty
shard for rank 1: `distributed_warm_start.py OUT 1 2`), by tests/test_bad_input.py.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from hf_saffu import SaffuForCausalLM
from hf_saffu.trainer import ExplicitTrainer, ExplicitTrainingArguments

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from factories import packed_dataset, saffu_config  # noqa: E402


def main(output_path: str, num_documents: int = 9, seed: int = 0) -> None:
    train = packed_dataset(num_documents, seed)  # an odd number of blocks, so the two shards differ in size
    assert len(train) % 2 == 1, len(train)
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config(num_layers=2, warm_start_batch_size=2))
    arguments = ExplicitTrainingArguments(
        output_dir=str(Path(output_path).parent / "unused"),
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = ExplicitTrainer(model=model, args=arguments, train_dataset=train)
    shard_rows = sum(len(batch["input_ids"]) for batch in trainer.warm_start_shard())
    trainer.run_warm_start()
    world_size = trainer.args.world_size
    rows = [shard_rows]
    if world_size > 1:
        rows = [None] * world_size
        dist.all_gather_object(rows, shard_rows)
    if trainer.args.process_index == 0:
        state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        torch.save({"state": state, "world_size": world_size, "shard_rows": rows, "rows": len(train)}, output_path)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
