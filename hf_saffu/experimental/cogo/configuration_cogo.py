"""CoGO model configuration."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .constructions import CONSTRUCTION_KINDS


@strict
class CoGOConfig(PreTrainedConfig):
    r"""
    Configuration of [`CoGOForModularAddition`], the two-layer quadratic network
    o = W_c (W_a e_{g1} + W_b e_{g2})^{∘2} on Z_d (docs/DESIGN.md section 7).

    Args:
        modulus (`int`, defaults to 23):
            d, the order of the group Z_d; inputs and outputs have d classes. At least 2.
        hidden_size (`int`, defaults to 512):
            q, the number of hidden (quadratic) nodes. At least 1.
        construction (`str`, *optional*):
            The closed-form construction the weights came from (one of `CONSTRUCTION_KINDS`),
            or `None` for a trained or freshly initialised network. Informational only.

    Example:

    ```python
    >>> from hf_saffu.experimental.cogo import CoGOConfig, CoGOForModularAddition
    >>> model = CoGOForModularAddition(CoGOConfig(modulus=23, hidden_size=512))
    ```"""

    model_type = "cogo"

    modulus: int = 23
    hidden_size: int = 512
    construction: str | None = None

    def __post_init__(self, **kwargs):
        if self.modulus < 2:
            raise ValueError(f"modulus must be an integer >= 2, got {self.modulus}")
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be an integer >= 1, got {self.hidden_size}")
        if self.construction is not None and self.construction not in CONSTRUCTION_KINDS:
            raise ValueError(f"construction must be None or one of {CONSTRUCTION_KINDS}, got {self.construction!r}")
        super().__post_init__(**kwargs)


__all__ = ["CoGOConfig"]
