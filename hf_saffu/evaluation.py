"""Evaluation of causal language models: exact perplexity and minimal-pair accuracy.

Everything here is model-agnostic: it works for any causal LM whose
``forward(input_ids=..., attention_mask=..., use_cache=False)`` returns an object with ``.logits`` of shape
``(batch, length, vocab)`` where ``logits[:, t]`` scores token ``t + 1`` (SAFFU or not).

Notation. A text is encoded as token ids ``x_0 .. x_{N-1}``; when a start token ``s`` is used,
``x_0 = s``. Only positions ``t >= 1`` can be predicted, each with

    nll_t = -log p(x_t | x_<t) = -log softmax(logits_{t-1})[x_t].

Batches are right-padded, so padding never precedes a real token and, for a causal model,
cannot change any real position's logits.

One routine computes token NLL: :func:`token_nll` (per row, float64 sums). :func:`token_nll_sum`,
:func:`score_segments` and ``ExplicitTrainer.evaluation_loop`` (which gathers its rows across processes)
all call it.

The perplexity protocol (packed documents). The perplexity ``hf-saffu train`` reports for its validation
and test splits (``all_results.json``, the model card) and the one ``hf-saffu evaluate --data FILE``
prints are the same number for the same file, computed by :func:`packed_perplexity`:

1. every non-blank line of a text file (the ``text`` field of each line of a ``.jsonl`` file) is one
   document (:func:`read_texts`; the training job reads ``--test_files`` the same way);
2. each document is tokenised without special tokens and followed by EOS; the documents are concatenated
   and cut into blocks of ``block_size`` tokens (``hf_saffu.data.pack_token_ids``: the training job's
   packing, ``PACKING_BATCH`` documents a packing batch, the last block of each padded);
3. in every block, tokens ``1 .. n-1`` are predicted from the block's earlier tokens (a block's first
   token is context only), and

       PPL = exp( sum_blocks sum_{t>=1} -log p(x_t | x_<t) / number of predicted tokens ).

``hf-saffu evaluate`` takes ``block_size`` from the ``all_results.json`` the training job wrote next to the
model (else the model's context length, else 128); ``--block-size`` overrides it.

:func:`perplexity` is a different, per-text protocol (each text scored on its own after a start token,
long texts with sliding windows); it backs the ``evaluate`` metric module (``metrics/perplexity``) for
comparison with other models' per-text perplexities, and is not what ``hf-saffu`` reports.
"""

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .errors import check_finite, check_regular_file, check_saved_files

IGNORE_INDEX = -100
PAIR_FIELDS = ("sentence_good", "sentence_bad")
_CONTEXT_LENGTH_ATTRIBUTES = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")


# --------------------------------------------------------------------------------------------
# Token-level negative log-likelihood
# --------------------------------------------------------------------------------------------


@contextmanager
def _inference(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode without gradients, restoring its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def token_nll(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row NLL sums (float64) and counts of scored targets: the one token-NLL routine.

    For row ``i``: ``NLL_i = -sum_{t>=1, labels_{i,t} != -100} log softmax(logits_{i,t-1})[labels_{i,t}]``.
    The caller chooses eval mode and ``torch.no_grad`` (see :func:`token_nll_sum`).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    nll = -(picked.double() * scored).sum(dim=-1)
    return nll, scored.sum(dim=-1)


def token_nll_sum(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Summed token NLL and number of predicted tokens of a batch.

        nll_sum = sum_i sum_{t>=1} m_{i,t} * (-log p(x_{i,t} | x_{i,<t})),   n_tokens = sum_{i,t>=1} m_{i,t}

    with ``m_{i,t} = [labels_{i,t} != -100]``. ``labels`` defaults to ``input_ids`` with padded
    positions (``attention_mask == 0``) set to -100. The sum is accumulated in float64.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if labels is None:
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    device = _device(model)
    with _inference(model):
        nll, counts = token_nll(model, input_ids.to(device), attention_mask.to(device), labels.to(device))
    return nll.sum().item(), int(counts.sum().item())


@dataclass(frozen=True)
class Segment:
    """A token sequence scored from position ``first_target`` (>= 1) to its end."""

    ids: list[int]
    first_target: int = 1


def _collate(segments: Sequence[Segment], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad segments into ``(input_ids, attention_mask, labels)``; unscored labels are -100."""
    width = max(len(s.ids) for s in segments)
    input_ids = torch.full((len(segments), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(segments), width), dtype=torch.long)
    labels = torch.full((len(segments), width), IGNORE_INDEX, dtype=torch.long)
    for row, segment in enumerate(segments):
        n = len(segment.ids)
        input_ids[row, :n] = torch.tensor(segment.ids)
        attention_mask[row, :n] = 1
        labels[row, segment.first_target : n] = input_ids[row, segment.first_target : n]
    return input_ids, attention_mask, labels


def score_segments(
    model: torch.nn.Module, segments: Sequence[Segment], batch_size: int = 16, pad_id: int = 0
) -> list[tuple[float, int]]:
    """``(nll, n_scored)`` for every segment, in input order.

    Segments are batched by length (longest first) to limit padding; ``pad_id`` only fills
    masked positions, so any valid id works.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(segments)), key=lambda i: -len(segments[i].ids))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(segments)
    device = _device(model)
    with _inference(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            tensors = [t.to(device) for t in _collate([segments[i] for i in chunk], pad_id)]
            nll, counts = token_nll(model, *tensors)
            for i, value, count in zip(chunk, nll.tolist(), counts.tolist(), strict=True):
                results[i] = (value, int(count))
    return results


# --------------------------------------------------------------------------------------------
# Tokenisation and model loading
# --------------------------------------------------------------------------------------------


def start_token_id(tokenizer) -> int | None:
    """The sentence-start token: BOS if the tokenizer has one, else EOS, else ``None``."""
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    return tokenizer.eos_token_id


def encode(tokenizer, text: str, add_start_token: bool = True) -> list[int]:
    """Token ids of ``text`` without the tokenizer's own special tokens, optionally prefixed by
    :func:`start_token_id` so that the first real token is predicted too."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    start = start_token_id(tokenizer) if add_start_token else None
    return ids if start is None else [start, *ids]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def context_length(model: torch.nn.Module) -> int | None:
    """The model's maximum input length read from its config, or ``None`` if it declares none."""
    config = getattr(model, "config", None)
    for name in _CONTEXT_LENGTH_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model_and_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer from a local directory (SAFFU or any Auto-loadable model); a
    `NonFiniteError` if its weights hold NaN or infinity (nothing computed from them would mean anything)."""
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    check_saved_files(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    check_finite(model.named_parameters(), f"the model in {model_dir}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------


def sliding_windows(ids: Sequence[int], max_length: int | None = None, stride: int | None = None) -> list[Segment]:
    """Cover every target position ``1 .. N-1`` of ``ids`` exactly once with windows of at most
    ``max_length`` tokens.

    Window ``k`` ends at ``e_k = min(L + k*S, N)`` and starts at ``b_k = max(0, e_k - L)``; it
    scores targets ``[e_{k-1}, e_k)`` (with ``e_{-1} = 1``), so each of them after the first
    window is predicted from ``L - S`` or more tokens of context. Hence ``1 <= S < L``; the
    default stride is ``L // 2``. Without ``max_length`` the whole sequence is one window.
    """
    n = len(ids)
    if max_length is None:
        return [Segment(list(ids))] if n > 1 else []
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    stride = max_length // 2 if stride is None else stride
    if not 1 <= stride < max_length:
        raise ValueError(f"stride must satisfy 1 <= stride < max_length={max_length}, got {stride}")
    windows, previous_end, end = [], 1, max_length
    while previous_end < n:
        end = min(end, n)
        begin = max(0, end - max_length)
        windows.append(Segment(list(ids[begin:end]), previous_end - begin))
        previous_end, end = end, end + stride
    return windows


def perplexity(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 8,
    stride: int | None = None,
    max_length: int | None = None,
    add_start_token: bool = True,
) -> dict[str, float]:
    """Corpus perplexity, computed exactly from summed token NLLs:

        PPL = exp( sum_i sum_{t>=1} -log p(x_{i,t} | x_{i,<t}) / sum_i (N_i - 1) )

    ``N_i`` counts the tokens of text ``i`` including the start token (see :func:`encode`).
    ``max_length`` defaults to the model's context length (:func:`context_length`); longer
    texts are scored with :func:`sliding_windows` of that length and ``stride``.

    Returns ``{"perplexity", "nll_sum", "n_tokens"}``.
    """
    max_length = max_length or context_length(model)
    segments = [
        window
        for text in texts
        for window in sliding_windows(encode(tokenizer, text, add_start_token), max_length, stride)
    ]
    scores = score_segments(model, segments, batch_size, _pad_id(tokenizer))
    nll_sum = math.fsum(nll for nll, _ in scores)
    n_tokens = sum(count for _, count in scores)
    if n_tokens == 0:
        raise ValueError("perplexity needs at least one predicted token; all texts are (nearly) empty")
    return {"perplexity": perplexity_from_loss(nll_sum / n_tokens), "nll_sum": nll_sum, "n_tokens": n_tokens}


def packed_perplexity(
    model: torch.nn.Module, tokenizer, texts: Sequence[str], block_size: int, batch_size: int = 16
) -> dict[str, float]:
    """Perplexity of ``texts`` (one document each) by the packed-documents protocol of this module's docstring:
    the number ``hf-saffu train`` reports for a split holding these documents with this ``block_size``.

    Returns ``{"perplexity", "loss", "nll_sum", "n_tokens", "block_size"}``.
    """
    from .data import pack_token_ids  # the training job's packing

    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the packed-documents perplexity needs a tokenizer with an EOS token")
    documents = [text for text in texts if text.strip()]
    token_ids = tokenizer(documents, add_special_tokens=False)["input_ids"] if documents else []
    blocks = pack_token_ids(token_ids, block_size, tokenizer.eos_token_id, _pad_id(tokenizer))
    device = _device(model)
    nll_sum, n_tokens = torch.zeros((), dtype=torch.float64), 0
    with _inference(model):
        for start in range(0, len(blocks["input_ids"]), batch_size):
            batch = [torch.tensor(blocks[key][start : start + batch_size], device=device) for key in blocks]
            nll, counts = token_nll(model, *batch)
            nll_sum += nll.sum().cpu()
            n_tokens += int(counts.sum().item())
    if n_tokens == 0:
        raise ValueError("perplexity needs at least one predicted token; the texts are (nearly) empty")
    loss = (nll_sum / n_tokens).item()
    if math.isnan(loss):
        raise ValueError(
            "the model's log-probabilities on these texts are NaN: its logits overflow (weights too large)"
        )
    return {
        "perplexity": perplexity_from_loss(loss),
        "loss": loss,
        "nll_sum": nll_sum.item(),
        "n_tokens": n_tokens,
        "block_size": block_size,
    }


def perplexity_from_loss(mean_nll: float) -> float:
    """exp(mean token NLL); ``inf`` where that overflows a float (a loss above ~709 is a result, not an error)."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def perplexity_metric_path() -> str:
    """Path of the ``evaluate`` perplexity module: ``evaluate.load(perplexity_metric_path())``."""
    return str(Path(__file__).parent / "metrics" / "perplexity" / "perplexity.py")


def read_texts(path: str | Path) -> list[str]:
    """Texts for perplexity: the ``text`` field of each line of a ``.jsonl`` file, otherwise
    every non-blank line of a plain-text file."""
    path = Path(path)
    check_regular_file(path, "text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"text file {path} is not UTF-8 text (near byte {error.start}: {error.reason})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        return [_parse_json_line(line, f"{path}:{i}", ("text",))["text"] for i, line in enumerate(lines, 1)]
    return lines


# --------------------------------------------------------------------------------------------
# Minimal pairs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinimalPair:
    """One grammatical/ungrammatical sentence pair; ``uid`` defaults to the file's stem."""

    sentence_good: str
    sentence_bad: str
    uid: str
    field: str | None = None


def _parse_json_line(line: str, where: str, required: Sequence[str]) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: invalid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object")
    missing = [name for name in required if not isinstance(record.get(name), str)]
    if missing:
        raise ValueError(f"{where}: missing string field(s) {', '.join(missing)}")
    return record


def _read_pairs_file(path: Path) -> list[MinimalPair]:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            record = _parse_json_line(line, f"{path}:{number}", PAIR_FIELDS)
            uid, field = record.get("UID", path.stem), record.get("field")
            pairs.append(MinimalPair(record["sentence_good"], record["sentence_bad"], str(uid), field))
    if not pairs:
        raise ValueError(f"{path}: no minimal pairs (empty file)")
    return pairs


def read_minimal_pairs(path: str | Path) -> list[MinimalPair]:
    """Pairs from a JSONL file, or from every ``*.jsonl`` file of a directory (sorted by name).

    Each line is an object with string fields ``sentence_good`` and ``sentence_bad`` and
    optional ``UID`` (default: the file's stem) and ``field``. Blank lines are skipped.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise ValueError(f"{path}: directory contains no .jsonl files")
        return [pair for file in files for pair in _read_pairs_file(file)]
    if not path.is_file():
        raise FileNotFoundError(f"minimal-pair file or directory not found: {path}")
    return _read_pairs_file(path)


def sequence_logprobs(model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 16) -> list[float]:
    """Total log-probability of each text, ``log p(x) = sum_{t=1}^{N-1} log p(x_t | x_<t)``.

    The start token (BOS, else EOS, see :func:`start_token_id`) is prepended as ``x_0``, so
    every token of the text is scored; a tokenizer with neither leaves its first token unscored.
    """
    segments = [Segment(encode(tokenizer, text)) for text in texts]
    return [-nll for nll, _ in score_segments(model, segments, batch_size, _pad_id(tokenizer))]


def _accuracy_table(pairs: Sequence[MinimalPair], correct: Sequence[bool], key) -> dict[str, dict]:
    groups: dict[str, list[bool]] = {}
    for pair, is_correct in zip(pairs, correct, strict=True):
        if key(pair) is not None:
            groups.setdefault(key(pair), []).append(is_correct)
    return {
        name: {"n_pairs": len(values), "correct": sum(values), "accuracy": sum(values) / len(values)}
        for name, values in sorted(groups.items())
    }


def evaluate_minimal_pairs(model: torch.nn.Module, tokenizer, path: str | Path, batch_size: int = 16) -> dict:
    """Minimal-pair accuracy: a pair is correct iff ``log p(good) > log p(bad)`` (ties count as
    wrong), with ``log p`` from :func:`sequence_logprobs` (start token prepended).

        accuracy = #correct / #pairs,  overall, per ``UID`` and per ``field`` (when given).

    Returns ``{"n_pairs", "correct", "accuracy", "per_uid", "per_field", "start_token",
    "pairs"}`` where ``pairs`` lists ``uid``, ``logprob_good``, ``logprob_bad``, ``correct``.

    lm-evaluation-harness gives the same log-probabilities for a ``multiple_choice`` task with
    ``doc_to_text: ""``, ``doc_to_choice: "{{[sentence_good, sentence_bad]}}"`` and
    ``target_delimiter: ""`` (its default delimiter " " would prefix each sentence with a space,
    which byte-level BPE tokenizers encode differently).
    """
    pairs = read_minimal_pairs(path)
    texts = [text for pair in pairs for text in (pair.sentence_good, pair.sentence_bad)]
    logprobs = sequence_logprobs(model, tokenizer, texts, batch_size)
    good, bad = logprobs[0::2], logprobs[1::2]
    correct = [g > b for g, b in zip(good, bad, strict=True)]
    start = start_token_id(tokenizer)
    return {
        "n_pairs": len(pairs),
        "correct": sum(correct),
        "accuracy": sum(correct) / len(pairs),
        "per_uid": _accuracy_table(pairs, correct, lambda pair: pair.uid),
        "per_field": _accuracy_table(pairs, correct, lambda pair: pair.field),
        "start_token": None if start is None else tokenizer.convert_ids_to_tokens(start),
        "pairs": [
            {"uid": pair.uid, "logprob_good": g, "logprob_bad": b, "correct": c}
            for pair, g, b, c in zip(pairs, good, bad, correct, strict=True)
        ],
    }


def format_minimal_pairs_table(result: dict) -> str:
    """Plain-text table of per-UID accuracy followed by the overall accuracy."""
    rows = [(uid, row["n_pairs"], row["correct"], row["accuracy"]) for uid, row in result["per_uid"].items()]
    rows.append(("OVERALL", result["n_pairs"], result["correct"], result["accuracy"]))
    width = max(len("UID"), *(len(name) for name, *_ in rows))
    lines = [f"{'UID':<{width}}  {'pairs':>6}  {'correct':>7}  {'accuracy':>8}"]
    lines += [f"{name:<{width}}  {n:>6}  {c:>7}  {acc:>8.4f}" for name, n, c, acc in rows]
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> Path:
    """Write an evaluation result as indented JSON, creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path
