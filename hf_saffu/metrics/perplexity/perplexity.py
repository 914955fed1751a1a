"""Exact perplexity of a causal language model as an ``evaluate`` module (loads offline by path).

    evaluate.load(hf_saffu.evaluation.perplexity_metric_path())

The maths lives in :func:`hf_saffu.evaluation.perplexity`; this module only adapts it.
"""

import os

import datasets
import evaluate
from transformers import AutoTokenizer

from hf_saffu import evaluation

_DESCRIPTION = """
Corpus perplexity of a causal LM over a list of texts, computed exactly from summed token
negative log-likelihoods: PPL = exp(sum of token NLL / number of predicted tokens). A start
token (BOS, else EOS) is prepended to each text so that its first token is predicted too.
Texts longer than `max_length` (default: the model's context length) are scored with
sliding windows of that length moving by `stride` tokens; every token is scored once.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the texts to score.
    model (PreTrainedModel, str or os.PathLike): a causal LM, or a local directory to load it from.
    tokenizer (tokenizer, str or os.PathLike, optional): defaults to the one saved in `model`'s
        directory (required when `model` is an object).
    batch_size (int): texts (or windows) per forward pass. Default 8.
    stride (int, optional): sliding-window stride, 1 <= stride < max_length. Default max_length // 2.
    max_length (int, optional): window length. Default: the model's context length.
    add_start_token (bool): prepend BOS/EOS to each text. Default True.
    trust_remote_code (bool): passed to `from_pretrained` when loading from a directory.
Returns:
    perplexity (float), nll_sum (float, nats), n_tokens (int, number of predicted tokens).
Examples:
    >>> metric = evaluate.load(evaluation.perplexity_metric_path())
    >>> metric.compute(predictions=["the cat sat"], model="path/to/model_dir")["perplexity"]
"""


def _resolve(model, tokenizer, trust_remote_code):
    """Turn directory paths into a loaded model and tokenizer."""
    if isinstance(model, str | os.PathLike):
        model, saved_tokenizer = evaluation.load_model_and_tokenizer(model, trust_remote_code)
        tokenizer = tokenizer or saved_tokenizer
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        raise ValueError("a tokenizer is required when `model` is a model object")
    return model, tokenizer


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    """Exact corpus perplexity (see module docstring)."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(
        self,
        predictions,
        model,
        tokenizer=None,
        batch_size=8,
        stride=None,
        max_length=None,
        add_start_token=True,
        trust_remote_code=False,
    ):
        model, tokenizer = _resolve(model, tokenizer, trust_remote_code)
        return evaluation.perplexity(model, tokenizer, predictions, batch_size, stride, max_length, add_start_token)
