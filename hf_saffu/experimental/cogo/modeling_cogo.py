"""CoGO: the two-layer quadratic network for modular addition as a Hugging Face model.

    o = W_c (W_a e_{g1} + W_b e_{g2})^{∘2},    loss = mean ‖P⊥ o − (e_y − 1/d · 1)‖²

`CoGOForModularAddition.from_construction(d, kind=...)` loads a closed-form global optimizer
(docs/DESIGN.md section 7) so that it saves, loads and pushes like any trained model.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_cogo import CoGOConfig
from .constructions import construct
from .fourier import FourierWeights, to_fourier, to_weights
from .network import centred_l2_loss, network_outputs


@dataclass
class CoGOOutput(ModelOutput):
    r"""
    loss (`torch.Tensor` of shape `()`, *optional*, returned when `labels` are given):
        Centred L2 loss mean ‖P⊥ o − (e_y − 1/d · 1)‖² over the pairs.
    logits (`torch.Tensor` of shape `(..., modulus)`):
        The network outputs o; the predicted sum is their argmax.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class CoGOPreTrainedModel(PreTrainedModel):
    config_class = CoGOConfig
    base_model_prefix = "cogo"
    main_input_name = "pairs"

    @torch.no_grad()
    def _init_weights(self, module):
        """PyTorch's nn.Linear default U(−1/√fan_in, 1/√fan_in) for W_a, W_b (fan_in d) and
        W_c (fan_in q), as in the published runs."""
        if isinstance(module, nn.Embedding):
            bound = 1 / math.sqrt(module.num_embeddings)
            init.uniform_(module.weight, -bound, bound)
        elif isinstance(module, nn.Linear):
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.weight, -bound, bound)


class CoGOForModularAddition(CoGOPreTrainedModel):
    """W_a = `input_a.weight`ᵀ and W_b = `input_b.weight`ᵀ (q x d; stored as d x q embedding
    tables, row g = W_a e_g), W_c = `output.weight` (d x q)."""

    def __init__(self, config: CoGOConfig):
        super().__init__(config)
        self.input_a = nn.Embedding(config.modulus, config.hidden_size)
        self.input_b = nn.Embedding(config.modulus, config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.modulus, bias=False)
        self.post_init()

    def weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_a, W_b, W_c) in the shapes of the equations: q x d, q x d, d x q."""
        return self.input_a.weight.T, self.input_b.weight.T, self.output.weight

    def forward(self, pairs: torch.LongTensor, labels: torch.LongTensor | None = None, **kwargs) -> CoGOOutput:
        r"""
        pairs (`torch.LongTensor` of shape `(..., 2)`):
            Operands (g1, g2), each in 0 … d−1.
        labels (`torch.LongTensor` of shape `(...)`, *optional*):
            Targets y = g1 + g2 mod d; when given, the centred L2 loss is returned.
        """
        logits = network_outputs(*self.weights(), pairs)
        loss = None if labels is None else centred_l2_loss(logits, labels)
        return CoGOOutput(loss=loss, logits=logits)

    def fourier_weights(self) -> FourierWeights:
        """The per-node Fourier coefficients z_a, z_b, z_c of the current weights."""
        return to_fourier(*(weight.detach() for weight in self.weights()))

    @classmethod
    def from_fourier(cls, z: FourierWeights, dtype: torch.dtype = torch.float64, **config_kwargs):
        """A model whose weights are the real network of the coefficients z."""
        config = CoGOConfig(modulus=z.modulus, hidden_size=z.num_nodes, **config_kwargs)
        model = cls(config).to(dtype)
        w_a, w_b, w_c = to_weights(z)
        with torch.no_grad():
            model.input_a.weight.copy_(w_a.T)
            model.input_b.weight.copy_(w_b.T)
            model.output.weight.copy_(w_c)
        return model

    @classmethod
    def from_construction(cls, modulus: int, kind: str = "order6", dtype: torch.dtype = torch.float64, **kwargs):
        """The closed-form global optimizer `constructions.construct(modulus, kind, **kwargs)`;
        float64 by default so its loss is at round-off level (≤ 1e-20)."""
        return cls.from_fourier(construct(modulus, kind, **kwargs), dtype=dtype, construction=kind)


__all__ = ["CoGOForModularAddition", "CoGOOutput", "CoGOPreTrainedModel"]
