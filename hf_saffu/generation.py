"""Sampling text from a causal language model: documents separated at EOS (the training job's sample and
`hf-saffu generate`)."""

import itertools
import math

import torch


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
    are separated by blank lines. Each document's generate() continues from the decoding state (cache) the
    previous one returned, so every token is read once, however many documents there are."""
    check_sampling(prompt, max_new_tokens, greedy, temperature, top_k, documents)
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    ids = torch.tensor([[eos] + tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    prefix_length = ids.shape[1]
    state = {}  # {"cache" (or "past_key_values", before transformers 5.24): the decoding state so far}
    for _ in range(documents):
        remaining = max_new_tokens - (ids.shape[1] - prefix_length)
        if remaining <= 0:
            break
        output = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=remaining,
            do_sample=not greedy,
            temperature=temperature if not greedy else None,
            top_k=top_k if not greedy else None,
            pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True,
            **state,
        )
        ids = output.sequences
        key = "cache" if output.get("cache") is not None else "past_key_values"
        state = {key: output.get(key)}
        if ids[0, -1].item() != eos:
            break
    pieces = (list(run) for is_eos, run in itertools.groupby(ids[0, 1:].tolist(), lambda t: t == eos) if not is_eos)
    texts = (tokenizer.decode(piece, skip_special_tokens=True).strip() for piece in pieces)
    return "\n\n".join(text for text in texts if text)
