"""Model cards for trained SAFFU models.

The card is rendered with :class:`huggingface_hub.ModelCard` from the Jinja template shipped in
``hf_saffu/templates/model_card.md``. Its YAML metadata (library_name, tags, datasets, license,
pipeline_tag and a ``model-index`` with the validation/test perplexities) is built with
:class:`huggingface_hub.ModelCardData`, so it validates on the Hub.

Every card of a saved model is :func:`model_card_for_dir`: written from what the directory holds, its
``config.json`` (the architecture, whether it was warm-started), its weights (the parameters) and the
``all_results.json`` that ``hf-saffu train`` writes beside them (results, training data, backprop steps),
with the title and loading examples naming the repo it is published as. ``hf-saffu train`` writes it as
``README.md``; ``hf-saffu push``, ``model.push_to_hub`` and ``ExplicitTrainer.push_to_hub`` publish it, so
the three publish the same card. Names that come from files or folders are escaped (:func:`markdown_text`).
"""

from __future__ import annotations

import dataclasses
import html
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
RESULTS_FILE = "all_results.json"
BASE_TAGS = ("saffu", "explicit-optimization", "warm-start", "causal-lm", "text-generation")
NOT_MEASURED = "not measured"
UNSPECIFIED_DATASET = "unspecified"
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
        warm_started: the weights were set by the explicit warm start (``config.warm_started``).
        backprop_steps: optimizer steps of backpropagation (0: none; ``None``: not recorded).
        gate_calibration: the fit of ``calibrate_gate`` (``GateCalibration.metrics``: the gate's scale and shift
            fitted on the validation split after backpropagation, and that split's perplexity before and after).
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
    warm_started: bool | None = None
    backprop_steps: int | None = None
    gate_calibration: dict[str, float] | None = None
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
        for name in ("num_parameters", "train_tokens", "backprop_steps"):
            value = getattr(info, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"model card key {name!r} must be a non-negative integer, got {value!r}")
        return info


def describe_architecture(config: SaffuConfig) -> str:
    """One-line summary of a :class:`~hf_saffu.SaffuConfig` for the card."""
    contexts = [f"window {k}" for k in config.windows]
    if config.use_document_context:
        contexts.append("document mean")
    layers = "layer" if config.num_layers == 1 else "layers"
    recipe = config.warm_start_recipe
    priming = recipe.explicit_hidden_priming
    codes = "anchored " if recipe.embedding_codes == "anchored" else ""
    targets = "token classes" if recipe.hidden_targets == "clusters" else "label codes"
    head = "ln H" if getattr(config, "log_hidden_head", False) else "H"
    pivot = " + a pivot path" if getattr(config, "pivot_head", False) else ""
    capacities = getattr(config, "ngram_capacities", [])
    if capacities:
        entries = ", ".join(f"{capacity:,}" for capacity in capacities)
        orders = f"orders 2-{len(capacities) + 1}" if len(capacities) > 1 else "order 2"
        pivot = f" + the pivot's n-gram tables ({orders}: {entries} entries)"
    width = getattr(config, "neural_mixture_dim", 0)
    if width:
        context = getattr(config, "neural_mixture_context", 2)
        reads = f", its hidden path reading {context} tokens in order" if context > 2 else ""
        window = getattr(config, "neural_mixture_attention_window", 0)
        reads += f", a learned attention over the last {window} tokens" if window else ""
        ordered = getattr(config, "neural_mixture_token_context", 0)
        reads += f", the learned embeddings of the last {ordered} tokens in order" if ordered else ""
        tied = window and getattr(config, "neural_mixture_tied_output", False)
        reads += ", its word weights tied to the attention's token embeddings" if tied else ""
        classes = getattr(config, "neural_mixture_classes", 0)
        reads += f", its output factored through {classes} token classes" if classes else ""
        upper = config.head_layer < config.num_layers - 1  # layers above the head's feed the neural word model
        reads += ", its hidden path reading the layers above the first (the head reads the first)" if upper else ""
        aux = getattr(config, "neural_mixture_aux_loss_coef", 0)
        reads += f", trained on its own cross-entropy too (weight {aux:g})" if aux else ""
        pivot += f", mixed linearly with a neural word model ({width} GELU units{reads})"
        cache = getattr(config, "neural_mixture_cache_window", 0)
        orders = getattr(config, "neural_mixture_cache_order", 1)
        caches = "a cache" if orders == 1 else f"caches of orders 1-{orders}"
        pivot += f" and with {caches} of the last {cache} tokens" if cache else ""
    return (
        f"SAFFU, {config.num_layers} {layers}, contexts: {', '.join(contexts)}; "
        f"{config.embed_bits}-bit {codes}bit-cipher embeddings, {config.hidden_bits}-dim hidden distributions "
        f"({targets}), head reading {head}{pivot}, vocabulary {config.vocab_size:,}"
        + (f"; hidden layers warm-started with priming number {priming}" if priming is not None else "")
    )


def build_model_card(info: TrainingRunInfo) -> ModelCard:
    """Render the card for ``info`` from the packaged template."""
    eval_results = _eval_results(info)
    tags = [tag for tag in BASE_TAGS if tag != "warm-start" or info.warm_started is not False]
    card_data = ModelCardData(
        model_name=info.model_name if eval_results else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=info.license,
        tags=list(dict.fromkeys([*tags, *info.tags])),
        datasets=[info.dataset_id] if info.dataset_id else None,
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=markdown_text(info.model_name),
        training_summary=training_summary(info.warm_started, info.backprop_steps),
        architecture=info.architecture,
        num_parameters=f"{info.num_parameters:,}",
        license=info.license,
        dataset_name=markdown_text(info.dataset_name),
        train_tokens=NOT_MEASURED if info.train_tokens is None else f"{info.train_tokens:,}",
        warm_start_seconds=_seconds(info.warm_start_seconds),
        backprop_seconds=_seconds(info.backprop_seconds),
        warm_start_perplexity=_perplexity(info.warm_start_perplexity),
        final_perplexity=_perplexity(info.final_perplexity),
        test_perplexity=_perplexity(info.test_perplexity),
        calibration_note=calibration_note(info.gate_calibration),
        repo_id=info.repo_id or "<namespace>/" + re.sub(r"[^\w.-]+", "-", info.model_name),  # before publishing
        intended_use=info.intended_use,
        limitations=info.limitations,
    )


def calibration_note(fit: dict[str, float] | None) -> str:
    """The sentence under the evaluation table of a model whose gate was calibrated (`calibrate_gate`), else ""."""
    if not fit:
        return ""

    def fitted(scale: str, shift: str, logit: str) -> str:
        return f"{fit[scale]:.3f} {logit} {'-' if fit[shift] < 0 else '+'} {abs(fit[shift]):.3f}"

    gates = f"lambda = sigmoid({fitted('gate_scale', 'gate_shift', 's')}), s its trained logit"
    caches = sum(key.startswith("cache_gate_scale_") for key in fit)
    for n in range(1, caches + 1):
        kappa = fitted(f"cache_gate_scale_{n}", f"cache_gate_shift_{n}", "r")
        gates += f"; its order-{n} cache's kappa = sigmoid({kappa})"
    numbers = 2 + 2 * caches
    return (
        "The final row's model has its neural word model's gate fitted on the validation split after "
        f"backpropagation ({gates}; `calibrate_gate`), so its validation perplexity includes these {numbers} fitted "
        f"numbers; before the fit it was {_perplexity(fit['gate_calibration_perplexity_before'])}."
    )


def markdown_text(value: str) -> str:
    """``value`` as literal text of the card's Markdown body: control characters (a newline would open a heading
    or a table row) become spaces, HTML is escaped, and Markdown's punctuation is backslash-escaped, so no
    link, image, heading, emphasis, code span or table cell starts from a file or folder name."""
    value = re.sub(r"[\x00-\x1f\x7f]+", " ", str(value))
    return re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", html.escape(value, quote=False))


def training_summary(warm_started: bool | None, backprop_steps: int | None) -> str:
    """How the weights were set, as far as the saved model records it."""
    warm = (
        "Its weights were first set by an explicit warm start, computed in closed form from co-occurrence "
        "statistics of the training data"
    )
    if warm_started:
        if backprop_steps:
            return f"{warm}, and then refined with backpropagation ({backprop_steps:,} optimizer steps)."
        if backprop_steps == 0:
            return f"{warm}; no backpropagation followed."
        return f"{warm}; whether backpropagation followed is not recorded."
    if backprop_steps:
        return (
            f"Its weights were trained with backpropagation ({backprop_steps:,} optimizer steps) from a random "
            "initialisation, without the explicit warm start."
        )
    if backprop_steps == 0 or warm_started is False:
        return "Its weights are not trained: a random initialisation (no warm start, no recorded training)."
    return "How its weights were set is not recorded."


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
        "backprop_steps": results.get("backprop_steps"),
        "gate_calibration": results.get("gate_calibration"),
        "dataset_name": results.get("dataset_name") or UNSPECIFIED_DATASET,
        "dataset_id": results.get("dataset_id"),
        "dataset_config": results.get("dataset_config"),
    }


def model_run_info(config: Any, num_parameters: int, results: dict[str, Any], repo_id: str | None, name: str) -> dict:
    """The card's :class:`TrainingRunInfo` keys for a model (its config and parameter count) and its ``results``
    (the keys of ``all_results.json``), titled with the repo's name when it is published (else ``name``)."""
    return {
        "model_name": repo_id.split("/")[-1] if repo_id else name,
        "repo_id": repo_id,
        "architecture": describe_architecture(config),
        "num_parameters": num_parameters,
        "warm_started": bool(getattr(config, "warm_started", False)),
        **results_run_info(results),
    }


def model_card_for_dir(
    model_dir: str | Path,
    repo_id: str | None = None,
    results_dir: str | Path | None = None,
    results: dict[str, Any] | None = None,
    name: str | None = None,
) -> str:
    """The card of a saved SAFFU directory, published as ``repo_id`` (None: a placeholder in the loading
    examples): written from its ``config.json``, its stored weights and the results of ``all_results.json`` in
    ``model_dir``, else in ``results_dir`` when that holds the same weights (the folder a model was loaded from),
    over ``results`` (what a trainer knows of its run); what was not recorded reads "not measured". ``name``: the
    model's name when no repo is given (default: the folder's name; a staged save gives its final folder's)."""
    path = Path(model_dir)
    recorded = dict(results or {})
    for folder in (Path(results_dir) if results_dir else None, path):
        if folder is not None and (folder / RESULTS_FILE).is_file() and same_weights(folder, path):
            recorded |= {k: v for k, v in json.loads((folder / RESULTS_FILE).read_text()).items() if v is not None}
    config = SaffuConfig.from_pretrained(path)
    info = model_run_info(config, stored_parameters(path), recorded, repo_id, name or path.resolve().name)
    return build_model_card(TrainingRunInfo.from_dict(info)).content


def same_weights(folder: Path, model_dir: Path) -> bool:
    """``folder`` holds the weights of ``model_dir`` (tensor for tensor), so its results describe them."""
    if folder.resolve() == model_dir.resolve():
        return True
    mine, theirs = model_weight_files(model_dir), model_weight_files(folder)
    if [f.name for f in mine] != [f.name for f in theirs] or not all(f.is_file() for f in mine + theirs):
        return False
    for a, b in zip(mine, theirs, strict=True):
        with safe_open(a, framework="pt") as left, safe_open(b, framework="pt") as right:
            if set(left.keys()) != set(right.keys()):
                return False
            if not all(left.get_tensor(k).equal(right.get_tensor(k)) for k in left.keys()):
                return False
    return True


def model_weight_files(path: Path) -> list[Path]:
    """The weight files the model loads: model.safetensors, or the shards its index names (other files in the
    directory, such as a leftover shard of an earlier save, are not part of the model)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted({path / name for name in json.loads(index.read_text())["weight_map"].values()})
    return [path / "model.safetensors"]


def stored_parameters(model_dir: Path) -> int:
    """The number of parameters in a directory's safetensors weights: its floating-point tensors (integer
    tensors, such as the bigram table's row pointers and columns, are indices, not parameters)."""
    total = 0
    for weights_file in model_weight_files(model_dir):
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
            dataset_type=info.dataset_id or "local",
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
