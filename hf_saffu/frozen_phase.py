"""The frozen-embedding phase of training: the first layer's pivot similarities cached per training block.

Training-only, so not part of the Hub copy (`modeling_saffu.py`): the model holds the cache as a hook,
`SaffuModel.frozen_inputs`, which the `FrozenEmbeddingPhase` callback (installed by `hf_saffu.trainer.ExplicitTrainer`)
sets while the embeddings are frozen.
"""

import math

import torch
from transformers import TrainerCallback


class FrozenInputCache:
    """The first layer's pivot similarities s_t of each training block, computed once while the embeddings are
    frozen and reused every epoch (the fast phase of the published recipe).

    s_t of a block read from a fresh state depends only on its tokens, its mask and the frozen embeddings, so
    the cache is keyed by the block's content: any sampler, shuffling or number of processes hits it, and a
    block seen again gets exactly the numbers it got the first time. Valid only while the embeddings do not
    change: `SaffuModel.frozen_inputs` holds it for the frozen phase and drops it when they thaw. It stores
    max_window floats a training token (64 bytes for windows up to 16) up to `max_bytes`; blocks beyond that
    are computed every time.
    """

    def __init__(self, max_bytes: int = 2**31):
        self.similarities: dict[tuple[bytes, bytes], torch.Tensor] = {}
        self.max_bytes = max_bytes
        self.nbytes = 0

    @staticmethod
    def keys(input_ids: torch.Tensor, valid: torch.Tensor) -> list[tuple[bytes, bytes]]:
        ids, mask = input_ids.cpu().numpy(), valid.cpu().numpy()
        return [(row.tobytes(), row_mask.tobytes()) for row, row_mask in zip(ids, mask, strict=True)]

    def lookup(self, input_ids: torch.Tensor, valid: torch.Tensor, compute) -> torch.Tensor:
        """s of the batch's blocks: the cached rows, or `compute()` for the whole batch when a row is new."""
        keys = self.keys(input_ids, valid)
        if all(key in self.similarities for key in keys):
            return torch.stack([self.similarities[key] for key in keys]).to(input_ids.device)
        computed = compute()
        for key, row in zip(keys, computed.detach().cpu(), strict=True):
            size = row.numel() * row.element_size()
            if key not in self.similarities and self.nbytes + size <= self.max_bytes:
                self.similarities[key] = row
                self.nbytes += size
        return computed

    def __len__(self) -> int:
        return len(self.similarities)


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
