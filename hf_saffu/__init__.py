"""hf_saffu: explicitly optimised SAFFU language models for the Hugging Face ecosystem.

Importing the package registers the SAFFU classes with the Auto classes, and marks them for
`register_for_auto_class` so `save_pretrained` writes an `auto_map` and copies the self-contained
modeling code (loadable with `trust_remote_code=True` where hf_saffu is not installed).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cogo import CoGOConfig, CoGOForModularAddition
from .configuration_saffu import SaffuConfig
from .explicit_classifier import ExplicitSoftmaxClassifier, ExplicitTwoLayerClassifier
from .modeling_saffu import SaffuDecodingState, SaffuForCausalLM, SaffuModel, SaffuPreTrainedModel

AutoConfig.register(SaffuConfig.model_type, SaffuConfig, exist_ok=True)
AutoModel.register(SaffuConfig, SaffuModel, exist_ok=True)
AutoModelForCausalLM.register(SaffuConfig, SaffuForCausalLM, exist_ok=True)
SaffuConfig.register_for_auto_class()
SaffuModel.register_for_auto_class("AutoModel")
SaffuForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__version__ = "0.1.0"

__all__ = [
    "CoGOConfig",
    "CoGOForModularAddition",
    "ExplicitSoftmaxClassifier",
    "ExplicitTwoLayerClassifier",
    "SaffuConfig",
    "SaffuDecodingState",
    "SaffuForCausalLM",
    "SaffuModel",
    "SaffuPreTrainedModel",
]
