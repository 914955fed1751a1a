"""The frozen-embedding phase of training: the first layer's pivot similarities cached per training block.

Training-only, so not part of the Hub copy (`modeling_saffu.py`): the model holds the cache as a hook,
`SaffuModel.frozen_inputs`, which the `FrozenEmbeddingPhase` callback (installed by `hf_saffu.trainer.ExplicitTrainer`)
sets while the embeddings are frozen.
"""

import math

import torch
from transformers import TrainerCallback


class FrozenInputCache:
    """Numbers of each training block that depend only on its content and on frozen weights, computed once and
    reused every epoch: the first layer's pivot similarities s_t while the embeddings are frozen (the fast phase
    of the published recipe), and with `freeze_counted_parts` the counted parts' ln p at the targets
    (`SaffuForCausalLM.frozen_counted`).

    The cache is keyed by the block's content (the tensors `lookup` is given, e.g. tokens and mask): any sampler,
    shuffling or number of processes hits it, and a block seen again gets exactly the numbers it got the first
    time. Valid only while the weights they come from do not change: `SaffuModel.frozen_inputs` holds it for the
    frozen phase and drops it when the embeddings thaw. It stores rows up to `max_bytes` (s_t: max_window floats a
    training token, 64 bytes for windows up to 16); blocks beyond that are computed every time.
    """

    def __init__(self, max_bytes: int = 2**31):
        self.rows: dict[tuple[bytes, ...], torch.Tensor] = {}
        self.max_bytes = max_bytes
        self.nbytes = 0

    @staticmethod
    def keys(*tensors: torch.Tensor) -> list[tuple[bytes, ...]]:
        """One key per block (row of the batch): the bytes of its row in each tensor."""
        arrays = [tensor.cpu().numpy() for tensor in tensors]
        return [tuple(row.tobytes() for row in rows) for rows in zip(*arrays, strict=True)]

    def lookup(self, tensors: tuple[torch.Tensor, ...], compute) -> torch.Tensor:
        """The batch's rows, keyed by `tensors`: the cached rows, or `compute()` for the whole batch when a row is
        new."""
        keys = self.keys(*tensors)
        if all(key in self.rows for key in keys):
            return torch.stack([self.rows[key] for key in keys]).to(tensors[0].device)
        computed = compute()
        for key, row in zip(keys, computed.detach().cpu(), strict=True):
            size = row.numel() * row.element_size()
            if key not in self.rows and self.nbytes + size <= self.max_bytes:
                self.rows[key] = row
                self.nbytes += size
        return computed

    def __len__(self) -> int:
        return len(self.rows)


class FrozenEmbeddingPhase(TrainerCallback):
    """The embeddings stay fixed for the first `steps` optimizer steps (all of them for `math.inf`), then train.

    While frozen, the model reads detached embeddings (no gradient reaches them, so Adam leaves them and their
    moments untouched) and caches the first layer's pivot similarities of each training block
    (`FrozenInputCache`), reused every epoch; the cache is dropped when the embeddings thaw. Under DDP the
    embeddings are an unused parameter in the frozen steps (transformers' default find_unused_parameters=True
    for a PreTrainedModel handles that).
    """

    def __init__(self, model, steps: float):
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
