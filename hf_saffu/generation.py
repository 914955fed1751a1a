"""Sampling text from a causal language model: documents separated at EOS (the training job's sample and
`hf-saffu generate`)."""

import itertools

import torch


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
    are separated by blank lines."""
    if documents < 1:
        raise ValueError(f"documents must be >= 1, got {documents}")
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    ids = torch.tensor([[eos] + tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    prefix_length = ids.shape[1]
    for _ in range(documents):
        remaining = max_new_tokens - (ids.shape[1] - prefix_length)
        if remaining <= 0:
            break
        ids = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=remaining,
            do_sample=not greedy,
            temperature=temperature if not greedy else None,
            top_k=top_k if not greedy else None,
            pad_token_id=tokenizer.pad_token_id,
        )
        if ids[0, -1].item() != eos:
            break
    pieces = (list(run) for is_eos, run in itertools.groupby(ids[0, 1:].tolist(), lambda t: t == eos) if not is_eos)
    texts = (tokenizer.decode(piece, skip_special_tokens=True).strip() for piece in pieces)
    return "\n\n".join(text for text in texts if text)
