"""Sampling text from a causal language model: documents separated at EOS (the training job's sample and
`hf-saffu generate`)."""

import itertools
import math

import torch
from transformers import StoppingCriteria, StoppingCriteriaList


class EndOfDocuments(StoppingCriteria):
    """Stops generation at the `documents`-th EOS token generated (counted as the tokens arrive)."""

    def __init__(self, eos: int, documents: int):
        self.eos = eos
        self.documents = documents
        self.ended: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        ended = input_ids[:, -1] == self.eos
        self.ended = ended.long() if self.ended is None else self.ended + ended
        return self.ended >= self.documents


def check_sampling(prompt: str, max_new_tokens, greedy: bool, temperature, top_k, documents) -> None:
    """A ValueError naming the first argument of `sample_text` no sampling could use."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"the prompt is not UTF-8 text (at character {error.start}: {error.reason})") from None
    for name, value, low in (("max_new_tokens", max_new_tokens, 1), ("documents", documents, 1), ("top_k", top_k, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not greedy and not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 (or use greedy decoding), got {temperature!r}")


def sample_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens=60,
    greedy=False,
    temperature=0.8,
    top_k=50,
    seed=0,
    documents: int = 1,
) -> str:
    """Generate a continuation of `prompt` (an empty prompt starts a new document): at most `max_new_tokens`
    tokens and `documents` documents (a document ends at EOS; the next one starts after it). Documents
    are separated by blank lines. One generate() call produces them all: EOS does not stop it, the
    `documents`-th EOS does (`EndOfDocuments`), so every token is read once, however many documents there are."""
    check_sampling(prompt, max_new_tokens, greedy, temperature, top_k, documents)
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    ids = torch.tensor([[eos] + tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    ids = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=temperature if not greedy else None,
        top_k=top_k if not greedy else None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=None,
        stopping_criteria=StoppingCriteriaList([EndOfDocuments(eos, documents)]),
    )
    pieces = (list(run) for is_eos, run in itertools.groupby(ids[0, 1:].tolist(), lambda t: t == eos) if not is_eos)
    texts = (tokenizer.decode(piece, skip_special_tokens=True).strip() for piece in pieces)
    return "\n\n".join(text for text in texts if text)
