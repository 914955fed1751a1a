"""Exporting a SAFFU causal LM: `torch.export` for any config, ONNX (the `onnx` extra) without the trigram table.

`torch.export.export(model, (input_ids,), kwargs={"use_cache": False})` traces the whole model, tables included,
for inputs of that shape: the tables' stored entries are read with one data-dependent size (`add_csr_rows_`).
ONNX has no operator for the trigram table's lookup (a sorted search of the (previous, pivot) histories), so
`export_onnx` refuses a model with it (`ngram_order > 2`) in one line; any other model (the bigram table, the
pivot head or the paper's output layer) is exported with `torch.onnx.export(dynamo=True)`.
"""

from pathlib import Path

import torch


class LogitsOnly(torch.nn.Module):
    """The model's forward returning only the logits (no decoding state): what an exported program computes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        return self.model(input_ids, use_cache=False).logits


def export_onnx(model, input_ids: torch.LongTensor, path: str | Path) -> Path:
    """Write the ONNX program of `model` (input `input_ids`, output `logits`, for inputs of this shape) to `path`;
    a ValueError for a model with the pivot's trigram table."""
    order = model.config.ngram_order
    if order > 2:
        higher = f" and the tables up to order {order}" if order > 3 else ""
        raise ValueError(
            f"a SAFFU with the pivot's trigram table ({model.config.table_capacity(3):,} entries){higher} cannot be "
            "exported to ONNX, which has no sorted search to look it up: use torch.export.export, or a config with "
            "ngram_order=2"
        )
    program = torch.onnx.export(
        LogitsOnly(model).eval(), (input_ids,), dynamo=True, input_names=["input_ids"], output_names=["logits"]
    )
    path = Path(path)
    program.save(str(path))
    return path
