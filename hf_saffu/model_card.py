"""Model cards for trained SAFFU models.

The card is rendered with :class:`huggingface_hub.ModelCard` from the Jinja template shipped in
``hf_saffu/templates/model_card.md``. Its YAML metadata (library_name, tags, datasets, license,
pipeline_tag and a ``model-index`` with the validation/test perplexities) is built with
:class:`huggingface_hub.ModelCardData`, so it validates on the Hub. The training CLI calls
:func:`write_model_card` to write ``README.md`` into the output directory. Publishing
(``hf-saffu push``, ``model.push_to_hub``) uploads :func:`model_card_for_dir`: that card with the
loading examples naming the repo, or for a directory without a SAFFU card, one written from its
config and whatever results it holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from .configuration_saffu import SaffuConfig

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
BASE_TAGS = ("saffu", "explicit-optimization", "warm-start", "causal-lm", "text-generation")
NOT_MEASURED = "not measured"
UNSPECIFIED_DATASET = "unspecified"
# The loading examples of a card written before the repo was known: "<namespace>/MODEL_NAME".
REPO_ID_PLACEHOLDER = re.compile(r"<namespace>/[\w.-]+")
DEFAULT_INTENDED_USE = (
    "Research on explicitly optimised language models and fast warm starts, and as a small, cheap "
    "baseline for text generation and perplexity comparisons on text like the training data."
)
DEFAULT_LIMITATIONS = (
    "This is a small model trained on a limited corpus: its text is often ungrammatical or "
    "repetitive and it has no notion of facts, so it must not be relied on for any decision. It "
    "reproduces the style and biases of its training data and was not evaluated for safety or on "
    "text from other domains or languages."
)


@dataclass
class TrainingRunInfo:
    """What the model card reports about one training run (the keys of ``run_info``).

    Required:
        model_name: name shown as the card title and in ``model-index``.
        architecture: one-line architecture summary (see :func:`describe_architecture`).
        num_parameters: number of parameters.
        dataset_name: human-readable name of the training data, e.g. ``"WikiText-2 (raw)"``.

    Optional (``None`` renders as "not measured" and is left out of ``model-index``):
        train_tokens: number of training tokens.
        dataset_id: Hub id of the dataset (``datasets:`` metadata and ``model-index`` dataset type).
        dataset_config: dataset configuration name, e.g. ``"wikitext-2-raw-v1"``.
        repo_id: Hub repo id used in the loading examples (a placeholder when unknown).
        warm_start_perplexity: validation perplexity right after the explicit warm start.
        final_perplexity: validation perplexity after backpropagation.
        test_perplexity: test perplexity of the final model.
        warm_start_seconds / backprop_seconds: wall-clock time of each stage.
        license: SPDX-like license id for the metadata (default ``"mit"``).
        tags: extra tags added to the standard SAFFU tags.
        intended_use / limitations: text of those sections.
    """

    model_name: str
    architecture: str
    num_parameters: int
    dataset_name: str
    train_tokens: int | None = None
    dataset_id: str | None = None
    dataset_config: str | None = None
    repo_id: str | None = None
    warm_start_perplexity: float | None = None
    final_perplexity: float | None = None
    test_perplexity: float | None = None
    warm_start_seconds: float | None = None
    backprop_seconds: float | None = None
    license: str = "mit"
    tags: list[str] = field(default_factory=list)
    intended_use: str = DEFAULT_INTENDED_USE
    limitations: str = DEFAULT_LIMITATIONS

    @classmethod
    def from_dict(cls, run_info: dict[str, Any]) -> TrainingRunInfo:
        """Build from a plain dict, naming unknown or missing keys and ill-typed counts."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(run_info) - known)
        if unknown:
            raise ValueError(f"unknown model card keys {unknown}; expected a subset of {sorted(known)}")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is f.default_factory is dataclasses.MISSING and run_info.get(f.name) is None
        ]
        if missing:
            raise ValueError(f"model card info is missing required keys {missing}")
        info = cls(**run_info)
        for name in ("num_parameters", "train_tokens"):
            value = getattr(info, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"model card key {name!r} must be a non-negative integer, got {value!r}")
        return info


def describe_architecture(config: Any) -> str:
    """One-line summary of a :class:`~hf_saffu.SaffuConfig` for the card."""
    contexts = [f"window {k}" for k in config.windows]
    if config.use_document_context:
        contexts.append("document mean")
    layers = "layer" if config.num_layers == 1 else "layers"
    priming = getattr(config, "explicit_hidden_priming", None)
    codes = "anchored " if getattr(config, "embedding_codes", "frequency_rank") == "anchored" else ""
    targets = "token classes" if getattr(config, "hidden_targets", "bit_cipher") == "clusters" else "label codes"
    head = "ln H" if getattr(config, "log_hidden_head", False) else "H"
    pivot = " + a pivot path" if getattr(config, "pivot_head", False) else ""
    if getattr(config, "pivot_bigrams", 0):
        pivot = f" + the pivot's bigram table ({config.pivot_bigrams:,} entries)"
    if getattr(config, "pivot_trigrams", 0):
        pivot += f" and trigram table ({config.pivot_trigrams:,} entries)"
    return (
        f"SAFFU, {config.num_layers} {layers}, contexts: {', '.join(contexts)}; "
        f"{config.embed_bits}-bit {codes}bit-cipher embeddings, {config.hidden_bits}-dim hidden distributions "
        f"({targets}), head reading {head}{pivot}, vocabulary {config.vocab_size:,}"
        + (f"; hidden layers warm-started with priming number {priming}" if priming is not None else "")
    )


def build_model_card(info: TrainingRunInfo) -> ModelCard:
    """Render the card for ``info`` from the packaged template."""
    eval_results = _eval_results(info)
    card_data = ModelCardData(
        model_name=info.model_name if eval_results else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=info.license,
        tags=list(dict.fromkeys([*BASE_TAGS, *info.tags])),
        datasets=[info.dataset_id] if info.dataset_id else None,
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=info.model_name,
        architecture=info.architecture,
        num_parameters=f"{info.num_parameters:,}",
        license=info.license,
        dataset_name=info.dataset_name,
        train_tokens=NOT_MEASURED if info.train_tokens is None else f"{info.train_tokens:,}",
        warm_start_seconds=_seconds(info.warm_start_seconds),
        backprop_seconds=_seconds(info.backprop_seconds),
        warm_start_perplexity=_perplexity(info.warm_start_perplexity),
        final_perplexity=_perplexity(info.final_perplexity),
        test_perplexity=_perplexity(info.test_perplexity),
        repo_id=info.repo_id or f"<namespace>/{info.model_name}",  # see REPO_ID_PLACEHOLDER
        intended_use=info.intended_use,
        limitations=info.limitations,
    )


def write_model_card(output_dir: str | Path, run_info: dict[str, Any] | TrainingRunInfo) -> ModelCard:
    """Write ``README.md`` (the model card) into ``output_dir`` and return the card.

    ``run_info`` holds the keys of :class:`TrainingRunInfo`; ``model_name`` defaults to the
    directory name.
    """
    output_dir = Path(output_dir)
    if not isinstance(run_info, TrainingRunInfo):
        run_info = TrainingRunInfo.from_dict({"model_name": output_dir.resolve().name, **run_info})
    card = build_model_card(run_info)
    output_dir.mkdir(parents=True, exist_ok=True)
    card.save(output_dir / "README.md")
    return card


def results_run_info(results: dict[str, Any]) -> dict[str, Any]:
    """The :class:`TrainingRunInfo` keys that ``all_results.json`` (written by ``hf-saffu train``) holds."""
    return {
        "train_tokens": results.get("train_tokens"),
        "warm_start_perplexity": results.get("warm_start_validation_perplexity"),
        "final_perplexity": results.get("validation_perplexity"),
        "test_perplexity": results.get("test_perplexity"),
        "warm_start_seconds": results.get("warm_start_seconds"),
        "backprop_seconds": results.get("backprop_seconds"),
    }


def model_card_for_dir(model_dir: str | Path, repo_id: str) -> str:
    """The model card to publish a saved SAFFU directory as ``repo_id``: its SAFFU ``README.md`` with the
    loading examples naming ``repo_id``, or else a card written from ``config.json``, the stored weights and
    the results ``all_results.json`` holds (what was not recorded reads "not measured")."""
    path = Path(model_dir)
    readme = path / "README.md"
    if readme.is_file() and "saffu" in (ModelCard.load(readme).data.tags or []):
        return REPO_ID_PLACEHOLDER.sub(repo_id, readme.read_text(encoding="utf-8"))
    results_file = path / "all_results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    run_info = {
        "model_name": repo_id.split("/")[-1],
        "architecture": describe_architecture(SaffuConfig.from_pretrained(path)),
        "num_parameters": stored_parameters(path),
        "dataset_name": UNSPECIFIED_DATASET,
        "repo_id": repo_id,
        **results_run_info(results),
    }
    return build_model_card(TrainingRunInfo.from_dict(run_info)).content


def stored_parameters(model_dir: Path) -> int:
    """The number of parameters in a directory's safetensors weights: its floating-point tensors (integer
    tensors, such as the bigram table's row pointers and columns, are indices, not parameters)."""
    total = 0
    for weights_file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(weights_file, framework="pt") as weights:
            slices = [weights.get_slice(name) for name in weights.keys()]
            total += sum(math.prod(s.get_shape()) for s in slices if s.get_dtype().startswith(("F", "BF")))
    return total


def _eval_results(info: TrainingRunInfo) -> list[EvalResult]:
    """``model-index`` entries for the final validation and test perplexities that were measured."""
    splits = {"validation": info.final_perplexity, "test": info.test_perplexity}
    return [
        EvalResult(
            task_type="text-generation",
            task_name="Causal language modeling",
            dataset_type=info.dataset_id or info.dataset_name,
            dataset_name=info.dataset_name,
            dataset_config=info.dataset_config,
            dataset_split=split,
            metric_type="perplexity",
            metric_name=f"{split.capitalize()} perplexity",
            metric_value=round(float(value), 4),
        )
        for split, value in splits.items()
        if _is_finite(value)
    ]


def _is_finite(value: float | None) -> bool:
    """True for a measured, finite number."""
    return value is not None and math.isfinite(value)


def _perplexity(value: float | None) -> str:
    """Table text for a perplexity: 2 decimals, "not measured", or "diverged" when not finite."""
    if value is None:
        return NOT_MEASURED
    return f"{value:,.2f}" if math.isfinite(value) else f"diverged ({value})"


def _seconds(value: float | None) -> str:
    """Table text for a duration in seconds."""
    return NOT_MEASURED if value is None else f"{value:,.1f} s"
