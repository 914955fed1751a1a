"""hf_saffu: explicitly optimised SAFFU language models for the Hugging Face ecosystem.

    from hf_saffu import SaffuConfig, SaffuForCausalLM, SaffuModel, ExplicitWarmStartConfig
    from hf_saffu import ExplicitTrainer, ExplicitTrainingArguments, explicit_warm_start

Importing the package registers the SAFFU classes with the Auto classes, and marks them for
`register_for_auto_class` so `save_pretrained` writes an `auto_map` and copies the self-contained
modeling code (loadable with `trust_remote_code=True` where hf_saffu is not installed). It registers
nothing else and re-exports nothing from `hf_saffu.experimental` (research code outside the stability
promise: the CoGO models, which register "cogo" with the Auto classes when `hf_saffu.experimental.cogo` is
imported, and the explicit classifiers in `hf_saffu.experimental.explicit_classifier`).
`ExplicitTrainer`, `ExplicitTrainingArguments` and `explicit_warm_start` are imported on first use.
Where peft is installed, it also registers SAFFU's default LoRA targets (`LORA_TARGET_MODULES`), so that
`get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))` needs no `target_modules`.
"""

from importlib import import_module
from importlib.util import find_spec

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_saffu import ExplicitWarmStartConfig, SaffuConfig
from .modeling_saffu import SaffuDecodingState, SaffuForCausalLM, SaffuModel, SaffuPreTrainedModel

AutoConfig.register(SaffuConfig.model_type, SaffuConfig, exist_ok=True)
AutoModel.register(SaffuConfig, SaffuModel, exist_ok=True)
AutoModelForCausalLM.register(SaffuConfig, SaffuForCausalLM, exist_ok=True)
SaffuConfig.register_for_auto_class()
SaffuModel.register_for_auto_class("AutoModel")
SaffuForCausalLM.register_for_auto_class("AutoModelForCausalLM")

# The softmax layers of every context: the attention a = softmax(s W + c) and the hidden h = softmax(z U + b).
LORA_TARGET_MODULES = ["attention", "hidden"]


def register_peft_targets() -> None:
    """peft's default LoRA target modules for model_type "saffu" (nothing when peft is not installed)."""
    if find_spec("peft") is not None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.setdefault(SaffuConfig.model_type, LORA_TARGET_MODULES)


register_peft_targets()

__version__ = "0.1.0"

# Names whose modules import transformers.Trainer: loaded when first asked for.
_LAZY = {
    "ExplicitTrainer": ".trainer",
    "ExplicitTrainingArguments": ".trainer",
    "explicit_warm_start": ".warm_start",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ExplicitTrainer",
    "ExplicitTrainingArguments",
    "ExplicitWarmStartConfig",
    "SaffuConfig",
    "SaffuDecodingState",
    "SaffuForCausalLM",
    "SaffuModel",
    "SaffuPreTrainedModel",
    "explicit_warm_start",
]
