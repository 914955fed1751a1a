"""SAFFU causal language model: self-attentive feed-forward units on bit-cipher embeddings.

Williams & Zhao, "Explicit Foundation Model Optimization with Self-Attentive Feed-Forward Neural
Units" (arXiv 2311.07510). Every signal stays non-negative (no residuals, no layer norms), so every
sub-layer is a softmax layer on non-negative inputs and has an explicit (closed-form) warm start;
see `hf_saffu.warm_start`.

For one layer reading non-negative vectors v_1 ... v_T, and one window context of size K, position t
(the pivot) sees the offsets j = 0 ... K-1 (position t - j; j = 0 is the pivot itself):

    s_{t,j} = v_{t-j} . v_t                      similarities to the pivot (>= 0)
    a_t     = softmax(s_t W + c)                 attention over the offsets (W: K x K, c: K)
    z_t     = sum_j a_{t,j} v_{t-j}              attended vector (>= 0)
    h_t     = softmax(z_t U + b)                 hidden distribution

The document context uses z_t = mean of the inputs since the document began (reset after EOS).
The layer output is H_t = [h_t^1 ... h_t^C]; the next layer reads H_t / C and the language-model
head gives logits = H_t O + b_O, or, with `log_hidden_head`, logits = ln(H_t) O + b_O (a product of
the contexts' hidden distributions: with hidden units that are classes of the next token, O can hold
P(y | class) exactly; see `hf_saffu.warm_start`).

Each kind of context is a class (`SaffuContext`: `SaffuWindowContext`, `SaffuDocumentContext`) that owns its
z_t, its part of the decoding state and the count of inputs behind z_t that the warm start reads; a new kind
is one more subclass, added with `register_context_kind`.

Decoding keeps, per layer, the last max(windows) - 1 inputs and the running document sum and count:
a state whose size does not grow with the text.

This file ships to the Hub with saved models (`register_for_auto_class`), with configuration_saffu.py and
bit_cipher.py: it imports only the standard library, torch, transformers and those two files (relative
imports), so a model loads with `trust_remote_code=True` where hf_saffu is not installed. Training-only code
(the warm start, the frozen phase's cache) lives in the package; the one reference back to it,
`SaffuForCausalLM._upload_modified_files`, imports hf_saffu.model_card only where the package is installed.
"""

import copy
import math
import os
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .bit_cipher import bit_cipher_vectors
from .configuration_saffu import SaffuConfig

BAND_CHUNK = 32
# transformers 5.24 renamed the decoding-state argument and output field `past_key_values` to `cache`; the
# forward accepts both names and the outputs use whichever field the installed transformers reads.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def band_index(length: int, num_offsets: int, device: torch.device) -> torch.Tensor:
    """index[t, j] = t + num_offsets - 1 - j: where position t - j sits in a chunk that starts
    num_offsets - 1 positions before the chunk's first query."""
    positions = torch.arange(length, device=device)[:, None]
    return positions + (num_offsets - 1) - torch.arange(num_offsets, device=device)[None, :]


def band_chunks(extended: torch.Tensor, length: int, num_offsets: int):
    """(first, last, extended slice) per chunk of at most BAND_CHUNK query positions."""
    start = extended.shape[1] - length
    for first in range(0, length, BAND_CHUNK):
        last = min(length, first + BAND_CHUNK)
        yield first, last, extended[:, start + first - (num_offsets - 1) : start + last]


def banded_dot(extended: torch.Tensor, queries: torch.Tensor, num_offsets: int) -> torch.Tensor:
    """out[b, t, j] = extended[b, start + t - j] . queries[b, t], for j < num_offsets.

    `extended` holds `start` >= num_offsets - 1 earlier positions followed by the T query positions.
    Computed as a Gram matrix of each chunk of queries with its band of positions, then gathered.
    """
    batch, length, _ = queries.shape
    chunks = []
    for first, last, window in band_chunks(extended, length, num_offsets):
        gram = torch.bmm(queries[:, first:last], window.transpose(1, 2))
        index = band_index(last - first, num_offsets, queries.device).expand(batch, -1, -1)
        chunks.append(gram.gather(2, index))
    return torch.cat(chunks, dim=1)


def banded_mix(extended: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[b, t] = sum_j weights[b, t, j] * extended[b, start + t - j]."""
    batch, length, num_offsets = weights.shape
    chunks = []
    for first, last, window in band_chunks(extended, length, num_offsets):
        index = band_index(last - first, num_offsets, weights.device).expand(batch, -1, -1)
        band = weights.new_zeros(batch, last - first, window.shape[1]).scatter(2, index, weights[:, first:last])
        chunks.append(torch.bmm(band, window))
    return torch.cat(chunks, dim=1)


def running_sums(values: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
    """R[b, :, i] = sum_{i' < i} w[b, i'] for w = values, or [first, values] with a float64 `first` (batch, dim) in
    front: float64, the time axis laid out last (cumsum along the contiguous axis is several times faster than along
    the middle one); (batch, dim, len(w) + 1), R[..., 0] = 0."""
    batch, positions, dim = values.shape
    offset = 1 if first is None else 2
    running = values.new_zeros(batch, dim, positions + offset, dtype=torch.float64)
    if first is not None:
        running[..., 1] = first
    running[..., offset:] = values.transpose(1, 2)
    return running.cumsum_(dim=2)


def window_means(running: torch.Tensor, behind: torch.Tensor, num_offsets: int, dtype: torch.dtype) -> torch.Tensor:
    """out[b, t] = sum_{j < num_offsets} extended[b, start + t - j] / behind[b, t], from the running sums R of
    `extended` (`running_sums`): (R_{start+t+1} - R_{start+t+1-K}) / behind_t. With invalid positions zero, this is
    `banded_mix` with the uniform weights 1 / behind."""
    positions, length = running.shape[2] - 1, behind.shape[1]
    start = positions - length
    sums = running[..., start + 1 :] - running[..., start + 1 - num_offsets : positions + 1 - num_offsets]
    means = sums.div_(behind.to(torch.float64)[:, None]).transpose(1, 2)
    return means.to(dtype, memory_format=torch.contiguous_format)


def banded_valid(extended_valid: torch.Tensor, length: int, num_offsets: int) -> torch.Tensor:
    """valid[b, t, j]: position t - j holds a real input. The pivot (j = 0) always counts as valid, so a
    padding position still gets a finite (ignored) output."""
    start = extended_valid.shape[1] - length
    offsets = [extended_valid[:, start - j : start - j + length] for j in range(num_offsets)]
    valid = torch.stack(offsets, dim=-1)
    valid[..., 0] = True
    return valid


@dataclass
class SaffuLayerState:
    """Decoding state of one layer: the last inputs (as many as its longest-reaching context reads) and each
    context's own part (`SaffuContext.empty_state`: the document's running sum and count; a window's is empty)."""

    history: torch.Tensor  # (batch, history, input_dim)
    history_valid: torch.Tensor  # (batch, history) bool
    contexts: tuple[tuple[torch.Tensor, ...], ...]  # per context, in the layer's order

    def select(self, index: torch.Tensor) -> "SaffuLayerState":
        def pick(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.index_select(0, index.to(tensor.device))

        parts = tuple(tuple(pick(tensor) for tensor in part) for part in self.contexts)
        return SaffuLayerState(pick(self.history), pick(self.history_valid), parts)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.history, self.history_valid, *(tensor for part in self.contexts for tensor in part)


class SaffuDecodingState:
    """Constant-size generation state of a SAFFU model (what generate() passes as `cache`).

    Memory per sequence: sum over layers of (history + 1) * input_dim floats (history = max_window - 1 for the
    window and document contexts), whatever the length.
    """

    def __init__(self, layers: list[SaffuLayerState], seen_tokens: int, last_tokens: torch.Tensor | None = None):
        self.layers = layers
        self.seen_tokens = seen_tokens
        # (batch, ngram_order - 2): the last tokens read, oldest first, -1 where padding or unknown (what the n-gram
        # tables' histories need before the next pivot); None below order 3
        self.last_tokens = last_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the states of the selected beams (used by beam search)."""
        self.layers = [layer.select(beam_idx) for layer in self.layers]
        if self.last_tokens is not None:
            self.last_tokens = self.last_tokens.index_select(0, beam_idx.to(self.last_tokens.device))

    def nbytes(self) -> int:
        tensors = [tensor for layer in self.layers for tensor in layer.tensors()]
        tensors += [self.last_tokens] if self.last_tokens is not None else []
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def token_history(
    input_ids: torch.LongTensor, attention_mask: torch.Tensor | None, state: "SaffuDecodingState | None", count: int
) -> torch.LongTensor:
    """(batch, count + T): the `count` tokens read before the T new ones (the state's `last_tokens`; -1 where
    unknown, as for a text read without a state), then the new ones, -1 at padding."""
    length = input_ids.shape[1]
    valid = (
        torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask[:, -length:].bool()
    )
    before = input_ids.new_full((len(input_ids), count), -1)
    if state is not None and state.last_tokens is not None:
        before = state.last_tokens.to(input_ids.device)
    return torch.cat([before, torch.where(valid, input_ids, -1)], dim=1)


def previous_tokens(
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    state: "SaffuDecodingState | None",
    count: int = 1,
) -> torch.LongTensor:
    """(batch, T, count): previous[b, t, j] = x_{t-1-j}, the j-th token before each position, -1 where it is padding
    or unknown (before the first position of a text read without a state)."""
    history, length = token_history(input_ids, attention_mask, state, count), input_ids.shape[1]
    return torch.stack([history[:, count - 1 - j : count - 1 - j + length] for j in range(count)], dim=-1)


def recent_tokens(pivots: torch.LongTensor, previous: torch.LongTensor) -> torch.LongTensor:
    """(..., 1 + count): x_t, x_{t-1}, ..., from the pivots and their `previous_tokens` (one token before each may come
    in the pivots' shape)."""
    previous = previous[..., None] if previous.shape == pivots.shape else previous
    return torch.cat([pivots[..., None], previous], dim=-1)


def checked_previous(pivots: torch.LongTensor, previous: torch.LongTensor | None, count: int) -> torch.LongTensor:
    """`previous` as (*pivots.shape, >= count) tokens (a tensor of the pivots' shape is one token before each); a
    ValueError when the n-gram tables' histories cannot be read from it."""
    if previous is not None and previous.shape == pivots.shape and count == 1:
        previous = previous[..., None]
    if previous is None or previous.shape[:-1] != pivots.shape or previous.shape[-1] < count:
        shape = None if previous is None else tuple(previous.shape)
        raise ValueError(
            f"a model with n-gram tables up to order {count + 2} needs the {count} tokens before every position "
            f"(previous_tokens), shape {(*pivots.shape, count)}, got {shape}"
        )
    return previous


def history_keys(pivots: torch.LongTensor, previous: torch.LongTensor | None, order: int, vocab_size: int):
    """The integer keys of the histories of an order-n table, the last n - 1 tokens (pivot included):

        h_t = x_t + x_{t-1} V + ... + x_{t-n+2} V^(n-2)    (-1 where one of them is unknown)

    from the pivots and `previous` (`previous_tokens`, at least n - 2 of them). For n = 3, h = w V + x."""
    keys = pivots
    for j in range(order - 2):
        before = previous[..., j]
        keys = torch.where((keys >= 0) & (before >= 0), before * vocab_size ** (j + 1) + keys, -1)
    return keys


def decoding_state(cache, past_key_values) -> "SaffuDecodingState | None":
    """The state passed under either name (`cache` from transformers 5.24, `past_key_values` before)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the decoding state once, as `cache` (or `past_key_values`), not as both")
    state = cache if cache is not None else past_key_values
    if state is not None and not isinstance(state, SaffuDecodingState):
        raise TypeError(f"a SAFFU model continues from a SaffuDecodingState, got {type(state).__name__}")
    return state


def last_document_end(ends_document: torch.Tensor) -> torch.Tensor:
    """(batch, T): the position of the last EOS at or before t, -1 before the first. The k-th EOS of a row is
    stored at slot k of a table (scatter-max), then read back at k_t = number of EOS up to t: integer ops with
    static shapes (what torch.export and ONNX take; a running maximum, cummax, has no ONNX operator)."""
    batch, length = ends_document.shape
    positions = torch.arange(length, device=ends_document.device).expand(batch, length)
    count = torch.cumsum(ends_document.long(), dim=1)
    slots = torch.where(ends_document, count, 0)
    table = positions.new_full((batch, length + 1), -1)
    table = table.scatter_reduce(1, slots, torch.where(ends_document, positions, -1), reduce="amax")
    return table.gather(1, count)


def document_means(
    inputs: torch.Tensor,
    valid: torch.Tensor,
    ends_document: torch.Tensor,
    prior_sum: torch.Tensor,
    prior_count: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Running mean of the valid inputs since the document began; a document ends after an EOS.

        z_t = (sum_{tau in doc(t), tau <= t} v_tau) / |{tau in doc(t), tau <= t}|

    Sums are kept in float64, as running sums along the time axis laid out last (contiguous: cumsum along it is
    several times faster than along the middle axis). Returns the means (dtype and layout of `inputs`), the counts
    |doc(t)| (float64) and the sum and count carried to the next chunk (zero after a final EOS).
    """
    batch, length, dim = inputs.shape
    running = running_sums(inputs, first=prior_sum)  # R[..., t + 2] = the prior sum + sum_{tau <= t} v_tau
    counts = torch.cumsum(valid.to(torch.float64), dim=1)
    last_end = last_document_end(ends_document)
    previous_end = torch.cat([last_end.new_full((batch, 1), -1), last_end[:, :-1]], dim=1)
    first_segment = previous_end < 0
    # what the document excludes: R[previous end + 2], or R[0] = 0 where it began before these positions
    base_at = torch.where(first_segment, 0, previous_end + 2)
    document_sum = running[..., 2:] - running.gather(2, base_at[:, None].expand(batch, dim, length))
    base_count = torch.where(first_segment, -prior_count[:, None], counts.gather(1, previous_end.clamp_min(0)))
    document_count = counts - base_count
    ended = ends_document[:, -1]
    carried_sum = torch.where(ended[:, None], 0.0, document_sum[..., -1])
    carried_count = torch.where(ended, 0.0, document_count[:, -1])
    # divided in place, once the carried sum is taken: one float64 temporary fewer (the warm start's costliest pass)
    means = document_sum.div_(document_count.clamp_min(1.0)[:, None]).transpose(1, 2)
    means = means.to(inputs.dtype, memory_format=torch.contiguous_format)
    return means, document_count, carried_sum, carried_count


@dataclass
class ContextVectors:
    """One context's z_t for the T new positions, how many inputs each mixes (what `explicit_hidden_priming=
    "features"` averages) and the context's part of the state after them."""

    vectors: torch.Tensor  # (batch, T, input_dim): z_t
    inputs_behind: torch.Tensor  # (batch, T)
    state: tuple[torch.Tensor, ...] = ()


@dataclass
class SaffuContextInputs:
    """What one layer computes before its hidden softmaxes, shared by its contexts (the explicit warm start reads
    it too): the layer's inputs after the state's history, the window offsets' validity and similarities, and the
    output of every computed context."""

    inputs: torch.Tensor  # (batch, T, input_dim): v_t, zero at padding
    valid: torch.Tensor  # (batch, T) bool
    ends_document: torch.Tensor  # (batch, T) bool: x_t is the EOS token
    extended: torch.Tensor  # (batch, history + T, input_dim): the state's history, then the inputs
    extended_valid: torch.Tensor  # (batch, history + T) bool
    offset_valid: torch.Tensor  # (batch, T, max_window) bool
    similarities: torch.Tensor | None  # (batch, T, max_window): s_{t,j}; None with uniform attention (unread)
    # every window's a_t is uniform over its valid offsets (W = 0, c = 0, no gradient asked of them): the caller knows
    uniform_attention: bool = False
    outputs: dict[nn.Module, ContextVectors] = field(default_factory=dict)  # per computed context
    state: SaffuLayerState | None = None  # after these T positions (None when only some contexts were computed)

    @cached_property
    def running_sums(self) -> torch.Tensor:
        """`running_sums` of the extended inputs, computed once for the windows that read them."""
        return running_sums(self.extended)


class SaffuContext(nn.Module):
    """One context of a layer: a vector z_t >= 0 built from the layer's inputs, then h_t = softmax(z_t U + b).

    A kind of context is a subclass: how many past inputs it reads (`history`; the layer keeps the longest), its
    part of the decoding state (`empty_state`, carried through `context_vectors`) and its vectors; registered with
    `register_context_kind`, every layer builds it and the explicit warm start solves its U and b like any other."""

    history = 0

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.hidden = nn.Linear(input_dim, hidden_dim)  # h = softmax(z U + b): weight = U^T

    def empty_state(self, batch_size: int, reference: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This context's part of a fresh decoding state (none by default)."""
        return ()

    def context_vectors(self, computed: SaffuContextInputs, state: tuple[torch.Tensor, ...]) -> ContextVectors:
        raise NotImplementedError


class SaffuWindowContext(SaffuContext):
    """Pivot attention over the last K positions, then a softmax hidden layer."""

    def __init__(self, window: int, input_dim: int, hidden_dim: int):
        super().__init__(input_dim, hidden_dim)
        self.window = window
        self.history = window - 1
        self.attention = nn.Linear(window, window)  # a = softmax(s W + c): weight = W^T, bias = c

    def attention_weights(self, similarities: torch.Tensor, offset_valid: torch.Tensor) -> torch.Tensor:
        """a_t = softmax over the valid offsets of s_t W + c."""
        scores = self.attention(similarities[..., : self.window])
        return torch.softmax(scores.masked_fill(~offset_valid[..., : self.window], float("-inf")), dim=-1)

    def context_vectors(self, computed: SaffuContextInputs, state: tuple[torch.Tensor, ...]) -> ContextVectors:
        """z_t = sum_j a_{t,j} v_{t-j}, mixing the valid positions among t - K + 1 ... t."""
        behind = computed.offset_valid[..., : self.window].sum(-1)
        if computed.uniform_attention:  # a_{t,j} = 1 / behind_t: the mean, from running sums
            means = window_means(computed.running_sums, behind, self.window, computed.inputs.dtype)
            return ContextVectors(means, behind)
        weights = self.attention_weights(computed.similarities, computed.offset_valid)
        return ContextVectors(banded_mix(computed.extended, weights), behind)

    @classmethod
    def build(cls, config: SaffuConfig, input_dim: int) -> nn.ModuleList:
        return nn.ModuleList(cls(window, input_dim, config.hidden_bits) for window in config.windows)


class SaffuDocumentContext(SaffuContext):
    """The running document mean fed to a softmax hidden layer (no attention); its state is the running sum and
    count of the document so far (float64)."""

    def empty_state(self, batch_size: int, reference: torch.Tensor) -> tuple[torch.Tensor, ...]:
        input_dim, device = self.hidden.in_features, reference.device
        total = torch.zeros(batch_size, input_dim, dtype=torch.float64, device=device)
        return total, torch.zeros(batch_size, dtype=torch.float64, device=device)

    def context_vectors(self, computed: SaffuContextInputs, state: tuple[torch.Tensor, ...]) -> ContextVectors:
        """z_t = the mean of the inputs since the document began (`document_means`)."""
        means, counts, total, count = document_means(computed.inputs, computed.valid, computed.ends_document, *state)
        return ContextVectors(means, counts, (total.detach(), count))

    @classmethod
    def build(cls, config: SaffuConfig, input_dim: int) -> "SaffuDocumentContext | None":
        return cls(input_dim, config.hidden_bits) if config.use_document_context else None


# The kinds of context of every layer, in order: attribute name -> build(config, input_dim), giving a context, an
# nn.ModuleList of them, or None. The attribute names are the weights' names (`layers.N.windows.K.*`,
# `layers.N.document.*`); the layer output concatenates the contexts' h_t in this order.
CONTEXT_KINDS = {"windows": SaffuWindowContext.build, "document": SaffuDocumentContext.build}


def register_context_kind(name: str, build) -> None:
    """Add a kind of context (a `SaffuContext` subclass) to the layers built from now on, after the others:
    `build(config, input_dim)` returns its module(s), or None where the config asks for none."""
    if name in CONTEXT_KINDS:
        raise ValueError(f"a context kind named {name!r} is already registered")
    CONTEXT_KINDS[name] = build


class SaffuLayer(nn.Module):
    """One SAFFU layer: C contexts (windows, then the document, then any registered kind), their hidden
    distributions concatenated."""

    def __init__(self, config: SaffuConfig, input_dim: int):
        super().__init__()
        self.input_dim = input_dim
        self.max_window = config.max_window
        self.kinds = list(CONTEXT_KINDS)
        for name, build in CONTEXT_KINDS.items():
            setattr(self, name, build(config, input_dim))
        self.history = max((context.history for context in self.contexts), default=0)

    @property
    def contexts(self) -> list[SaffuContext]:
        found = []
        for name in self.kinds:
            module = getattr(self, name)
            found += list(module) if isinstance(module, nn.ModuleList) else [module] if module is not None else []
        return found

    def empty_state(self, batch_size: int, reference: torch.Tensor) -> SaffuLayerState:
        return SaffuLayerState(
            history=reference.new_zeros(batch_size, self.history, self.input_dim),
            history_valid=torch.zeros(batch_size, self.history, dtype=torch.bool, device=reference.device),
            contexts=tuple(context.empty_state(batch_size, reference) for context in self.contexts),
        )

    def context_inputs(
        self,
        inputs: torch.Tensor,
        valid: torch.Tensor,
        ends_document: torch.Tensor,
        state: SaffuLayerState | None,
        contexts: list[SaffuContext] | None = None,
        similarities: torch.Tensor | None = None,
        uniform_attention: bool = False,
    ) -> SaffuContextInputs:
        """z_t of every context for the T new positions, continuing from `state` (None: a fresh start).

        `contexts`: compute z_t only for these contexts (`outputs` holds only them, and the returned state is
        None): a warm-start pass that needs some contexts, or only the similarities, skips the rest.
        `similarities`: s_t already computed for these inputs and state (the frozen phase's cache).
        `uniform_attention`: the caller knows that every window's attention is uniform (W = 0 and c = 0, no gradient
        asked of them; the warm start before attention is solved): the windows' z_t are then the means of their
        valid inputs (`window_means`), and s_t, which nothing reads, are not computed."""
        if state is None:
            state = self.empty_state(inputs.shape[0], inputs)
        inputs = inputs * valid[..., None].to(inputs.dtype)
        extended = torch.cat([state.history.to(inputs.dtype), inputs], dim=1)
        extended_valid = torch.cat([state.history_valid, valid], dim=1)
        length = inputs.shape[1]
        offset_valid = banded_valid(extended_valid, length, self.max_window)
        if similarities is None and not uniform_attention:
            similarities = banded_dot(extended, inputs, self.max_window)
        computed = SaffuContextInputs(
            inputs, valid, ends_document, extended, extended_valid, offset_valid, similarities, uniform_attention
        )
        for context, part in zip(self.contexts, state.contexts, strict=True):
            if contexts is None or context in contexts:
                computed.outputs[context] = context.context_vectors(computed, part)
        if contexts is None:
            keep = extended.shape[1] - self.history
            computed.state = SaffuLayerState(
                history=extended[:, keep:].detach(),
                history_valid=extended_valid[:, keep:],
                contexts=tuple(computed.outputs[context].state for context in self.contexts),
            )
        return computed

    def forward(
        self,
        inputs: torch.Tensor,
        valid: torch.Tensor,
        ends_document: torch.Tensor,
        state: SaffuLayerState | None = None,
        log_probabilities: bool = False,
        similarities: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, SaffuLayerState]:
        """H_t = [softmax(z_t^c U^c + b^c)]_c, shape (batch, T, C * hidden_bits); ln H_t with
        `log_probabilities` (what a log-reading head takes)."""
        computed = self.context_inputs(inputs, valid, ends_document, state, similarities=similarities)
        vectors = {context: output.vectors for context, output in computed.outputs.items()}
        return self.hidden_distributions(vectors, log_probabilities), computed.state

    def hidden_distributions(self, vectors: dict[SaffuContext, torch.Tensor], log_probabilities: bool = False):
        """H_t = [softmax(z_t^c U^c + b^c)]_c from every context's z_t (`vectors`), or ln H_t."""
        normalise = torch.log_softmax if log_probabilities else torch.softmax
        return torch.cat([normalise(context.hidden(vectors[context]), dim=-1) for context in self.contexts], dim=-1)


def csr_entries(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(owners, entries): for each i and k < lengths[i], the pair (i, starts[i] + k), i ascending. The only
    data-dependent size is the number of entries (one expansion, the rest gathered from it), so `torch.export`
    and `torch.compile` trace it."""
    owners = torch.repeat_interleave(torch.arange(len(starts), device=starts.device), lengths)
    first_of_owner = (torch.cumsum(lengths, 0) - lengths - starts)[owners]
    return owners, torch.arange(owners.shape[0], device=starts.device) - first_of_owner


def add_csr_rows_(
    logits: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, columns: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Adds to logits (N, V), in place, in row i, values[starts[i] + k] at columns[starts[i] + k] for k <
    lengths[i] (a CSR table's rows; differentiable in `logits` and `values`). Only the stored entries are
    touched: a batch's rows hold far fewer entries than N x V, and no N x V copy is made."""
    owners, entries = csr_entries(starts, lengths)
    return logits.index_put_((owners, columns[entries]), values[entries].to(logits.dtype), accumulate=True)


class SaffuPivotBigrams(nn.Module):
    """The pivot's exact bigram channel: logits_y += b_y + S[x_t, y], with S sparse.

    A softmax layer on the one-hot pivot token has the explicit solution U = ln P(y | x) (K = 1). For the
    interpolated Kneser-Ney estimate from pair counts n_xy (discounts D(n) of `kneser_ney_discounts`),

        P(y | x) = (max(n_xy - D(n_xy), 0) + gamma_x P_c(y)) / n_x,    gamma_x = sum_y D(n_xy),

    every row is ln(gamma_x / n_x) + ln P_c(y) + [x y seen] ln(1 + (n_xy - D(n_xy)) / (gamma_x P_c(y))). The row
    constant cancels in the softmax, so the V x V layer is stored as the bias b = ln P_c (P_c: the continuation
    distribution, y's number of distinct predecessors) and the non-negative corrections S of the seen pairs,
    in CSR form: pivot x owns entries rows[x] : rows[x + 1], with next tokens `columns` and values `values`
    (`capacity` entries; those past rows[-1] are unused). Backprop trains `values` and `bias`; which pairs are
    stored is fixed by the warm start.
    """

    order = 2

    def __init__(self, vocab_size: int, capacity: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.register_buffer("rows", torch.zeros(vocab_size + 1, dtype=torch.long))
        self.register_buffer("columns", torch.zeros(capacity, dtype=torch.long))
        self.values = nn.Parameter(torch.zeros(capacity))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, logits: torch.Tensor, tokens: torch.LongTensor) -> torch.Tensor:
        """logits (N, V) + b + S[x_i] for the pivot tokens x (N,)."""
        starts = self.rows[tokens]
        return add_csr_rows_(logits + self.bias, starts, self.rows[tokens + 1] - starts, self.columns, self.values)

    @torch.no_grad()
    def set_pairs(self, keys: torch.LongTensor, values: torch.Tensor, bias: torch.Tensor) -> None:
        """Store the pairs `keys` = x V + y (sorted, unique, at most `capacity`) with their values, and the bias."""
        vocab_size = self.bias.shape[0]
        if len(keys) > len(self.columns):
            raise ValueError(f"{len(keys)} pairs do not fit the bigram table's {len(self.columns)} entries")
        counts = torch.bincount(keys // vocab_size, minlength=vocab_size)
        self.rows.zero_()
        self.rows[1:] = torch.cumsum(counts, 0)
        self.columns.zero_()
        self.columns[: len(keys)] = keys % vocab_size
        self.values.zero_()
        self.values[: len(keys)] = values.to(self.values.dtype)
        self.bias.copy_(bias.to(self.bias.dtype))

    @torch.no_grad()
    def resized(self, vocab_size: int, capacity: int) -> "SaffuPivotBigrams":
        """A copy for a vocabulary of `vocab_size` tokens and `capacity` entries: the pairs of tokens below both
        sizes are kept (new tokens have no entries and bias 0)."""
        old_vocab = self.bias.shape[0]
        used = int(self.rows[-1])
        pivots = torch.repeat_interleave(torch.arange(old_vocab, device=self.rows.device), self.rows.diff())
        keep = (pivots < vocab_size) & (self.columns[:used] < vocab_size)
        keys = (pivots * vocab_size + self.columns[:used])[keep][:capacity]
        bias = torch.zeros(vocab_size, dtype=self.bias.dtype, device=self.bias.device)
        bias[: min(old_vocab, vocab_size)] = self.bias[:vocab_size]
        new = SaffuPivotBigrams(vocab_size, capacity).to(device=self.bias.device, dtype=self.bias.dtype)
        new.set_pairs(keys, self.values[:used][keep][:capacity], bias)
        return new


class SaffuNgramTable(nn.Module):
    """One level of the pivot's channel above the bigram table: logits_y += T[h_t, y], with T sparse and h_t the
    last n - 1 tokens (`order` n >= 3; `history_keys`).

    Interpolated Kneser-Ney one order up, with the distribution of the levels below as the lower order,
    P_{n-1}(y | h') = softmax(b + S[x_t] + ... ) over the shorter history h' (for n = 3, the bigram table's): from
    n-gram counts n_hy (discounts D(n) of `kneser_ney_discounts`),

        P_n(y | h) ~ max(n_hy - D(n_hy), 0) + gamma_h P_{n-1}(y | h'),    gamma_h = sum_y D(n_hy),

    so ln P_n = ln P_{n-1}(y | h') + const_h + [h y seen] ln(1 + (n_hy - D(n_hy)) / (gamma_h P_{n-1}(y | h'))): the
    lower levels' logits plus non-negative corrections T of the seen n-grams. Stored in CSR form over the history
    keys (`histories`: sorted, padded with V^(n-1); history i owns entries rows[i] : rows[i + 1]). A position whose
    history is not all known (near the start of a block, or after padding) gets no correction.
    """

    def __init__(self, vocab_size: int, capacity: int, order: int = 3):
        super().__init__()
        self.vocab_size = vocab_size
        self.order = order
        self.register_buffer("histories", torch.full((capacity,), vocab_size ** (order - 1), dtype=torch.long))
        self.register_buffer("rows", torch.zeros(capacity + 1, dtype=torch.long))
        self.register_buffer("columns", torch.zeros(capacity, dtype=torch.long))
        self.values = nn.Parameter(torch.zeros(capacity))

    def forward(self, logits: torch.Tensor, histories: torch.LongTensor) -> torch.Tensor:
        """logits (N, V) + T[h_i] for the history keys h (N,; -1: none), added in place."""
        index = torch.searchsorted(self.histories, histories).clamp_max(len(self.histories) - 1)
        found = (self.histories[index] == histories) & (histories >= 0)
        starts = torch.where(found, self.rows[index], 0)
        lengths = torch.where(found, self.rows[index + 1] - self.rows[index], 0)
        return add_csr_rows_(logits, starts, lengths, self.columns, self.values)

    @torch.no_grad()
    def set_entries(self, keys: torch.LongTensor, values: torch.Tensor) -> None:
        """Store the n-grams `keys` = h V + y (sorted, unique, at most `capacity`) with their values."""
        if len(keys) > len(self.columns):
            raise ValueError(
                f"{len(keys)} {self.order}-grams do not fit the order-{self.order} table's {len(self.columns)} entries"
            )
        histories, counts = torch.unique_consecutive(keys // self.vocab_size, return_counts=True)
        self.histories.fill_(self.vocab_size ** (self.order - 1))
        self.histories[: len(histories)] = histories
        self.rows.zero_()
        self.rows[1 : len(histories) + 1] = torch.cumsum(counts, 0)
        self.rows[len(histories) + 1 :] = len(keys)
        self.columns.zero_()
        self.columns[: len(keys)] = keys % self.vocab_size
        self.values.zero_()
        self.values[: len(keys)] = values.to(self.values.dtype)

    @torch.no_grad()
    def resized(self, vocab_size: int, capacity: int) -> "SaffuNgramTable":
        """A copy for a vocabulary of `vocab_size` tokens and `capacity` entries, keeping the n-grams of tokens
        below both sizes."""
        used = int(self.rows[-1])
        owners = torch.repeat_interleave(self.histories[: len(self.rows) - 1], self.rows.diff())
        keep = self.columns[:used] < vocab_size
        keys = torch.zeros_like(owners)
        for j in reversed(range(self.order - 1)):  # the history's tokens, oldest first
            token = owners // self.vocab_size**j % self.vocab_size
            keep &= token < vocab_size
            keys = keys * vocab_size + token
        keys = (keys * vocab_size + self.columns[:used])[keep][:capacity]
        new = SaffuNgramTable(vocab_size, capacity, self.order).to(device=self.values.device, dtype=self.values.dtype)
        new.set_entries(keys, self.values[:used][keep][:capacity])
        return new


def table_name(order: int) -> str:
    """The attribute (and weight prefix) of the table of `order` in `SaffuForCausalLM`: pivot_bigrams, pivot_trigrams,
    then pivot_4grams, pivot_5grams, ..."""
    return {2: "pivot_bigrams", 3: "pivot_trigrams"}.get(order, f"pivot_{order}grams")


def new_table(order: int, vocab_size: int, capacity: int) -> "SaffuPivotBigrams | SaffuNgramTable":
    """An empty table of `order` (2: `SaffuPivotBigrams`, above: `SaffuNgramTable`)."""
    return SaffuPivotBigrams(vocab_size, capacity) if order == 2 else SaffuNgramTable(vocab_size, capacity, order)


def table_index_problem(table: "SaffuPivotBigrams | SaffuNgramTable", vocab_size: int) -> str | None:
    """What makes a loaded table's CSR index tensors unusable (the forward pass would index out of range or read
    another history's entries), or None: rows start at 0, never decrease and end within the entries; the used
    columns are token ids; the histories of an order-n table are sorted keys below V^(n-1) (V^(n-1) pads)."""
    rows, columns = table.rows, table.columns
    used = int(rows[-1])
    if int(rows[0]) != 0 or bool((rows.diff() < 0).any()) or used > len(columns):
        return f"rows must rise from 0 to at most {len(columns)} entries, got {rows.tolist()[:8]}..."
    if used and not (0 <= int(columns[:used].min()) and int(columns[:used].max()) < vocab_size):
        return f"columns must hold token ids < vocab_size={vocab_size}"
    histories = getattr(table, "histories", None)
    bound = vocab_size ** (table.order - 1)
    if histories is not None and (
        bool((histories.diff() < 0).any()) or int(histories.min()) < 0 or int(histories.max()) > bound
    ):
        return f"histories must be sorted keys in [0, {bound}]"
    return None


class SaffuResidualHead(nn.Module):
    """A word-level correction of the logits from the hidden distributions H_t (`config.residual_rank` = r):

        logits += H_t A B,   A: (C hidden_bits, r),   B: (r, V),   B = 0 at initialisation,

    residual learning over the n-gram logits (as NgramRes, Li et al. 2022): the warm start's logits are unchanged,
    and backprop learns what the tables and the class evidence cannot hold."""

    def __init__(self, input_dim: int, rank: int, vocab_size: int):
        super().__init__()
        self.down = nn.Parameter(torch.zeros(input_dim, rank))  # A
        self.up = nn.Parameter(torch.zeros(rank, vocab_size))  # B

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.down @ self.up


def add_at_targets(logits: torch.Tensor, targets: torch.LongTensor, change: torch.Tensor | None) -> torch.Tensor:
    """`logits` (..., N) plus `change` (...) at each position's target column (targets -100: none)."""
    if change is None:
        return logits
    index = targets.clamp_min(0)[..., None]
    return logits.scatter_add(-1, index, (change * (targets != -100))[..., None].to(logits.dtype))


def target_log_softmax(logits: torch.Tensor, targets: torch.LongTensor) -> torch.Tensor:
    """ln softmax(logits)_y at each position's target y (..., targets -100 read as 0): its entry minus logsumexp."""
    index = targets.clamp_min(0)[..., None]
    return (logits.gather(-1, index) - logits.logsumexp(-1, keepdim=True)).squeeze(-1)


class SaffuNeuralAttention(nn.Module):
    """A learned attention over the last w tokens for the neural word model's hidden path
    (`config.neural_mixture_attention_window` = w, `neural_mixture_attention_dim` = d, H heads of d_h = d / H):

        q, k, v = LN(E) W_q, LN(E) W_k, LN(E) W_v    (one row per token of the vocabulary),
        a_t = [sum_{j < w} softmax_j(q(x_t)_h . k(x_{t-j})_h / sqrt(d_h) + beta_hj) v(x_{t-j})_h]_h,

    over the known tokens among x_t, ..., x_{t-w+1} (the pivot is always one), with beta a learned bias per head
    and offset (the order of the tokens), and dropout p on a_t in training. Its rows are functions of the token
    alone, so each forward projects the distinct tokens it reads once. It also gives the hidden path the rows
    LN(E)[x_t], ..., LN(E)[x_{t-n+1}] themselves, in order (`config.neural_mixture_token_context` = n <= w)."""

    def __init__(self, vocab_size: int, window: int, dim: int, heads: int, dropout: float = 0.0, ordered: int = 0):
        super().__init__()
        self.heads = heads
        self.ordered = ordered  # n
        self.output_dim = dim * (1 + ordered)  # a_t, then the n ordered rows
        self.dropout = nn.Dropout(dropout)
        self.token_embeddings = nn.Parameter(torch.zeros(vocab_size, dim))  # E
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.offset_bias = nn.Parameter(torch.zeros(heads, window))  # beta

    def forward(self, tokens: torch.LongTensor) -> torch.Tensor:
        """a_t (..., d) from `tokens` (..., w): x_t, x_{t-1}, ..., x_{t-w+1}, -1 where unknown; then, for n > 0, the
        rows LN(E)[x_t], ..., LN(E)[x_{t-n+1}] (0 where unknown, dropout p in training): (..., `output_dim`)."""
        distinct, index = torch.unique(tokens.clamp_min(0), return_inverse=True)
        rows = self.norm(self.token_embeddings[distinct])
        attended = self.attend(rows, index, tokens)
        if not self.ordered:
            return attended
        known = (tokens[..., : self.ordered] >= 0)[..., None].to(rows.dtype)
        return torch.cat([attended, self.dropout((rows[index[..., : self.ordered]] * known).flatten(-2))], dim=-1)

    def attend(self, rows: torch.Tensor, index: torch.LongTensor, tokens: torch.LongTensor) -> torch.Tensor:
        """a_t from the distinct tokens' rows LN(E)[u] and each window's `index` into them."""
        split = (self.heads, rows.shape[-1] // self.heads)
        query = self.query(rows)[index[..., 0]].unflatten(-1, split)  # (..., H, d_h)
        key, value = (projection(rows)[index].unflatten(-1, split) for projection in (self.key, self.value))
        scores = torch.einsum("...hd,...jhd->...hj", query, key) / math.sqrt(split[1]) + self.offset_bias
        weights = torch.softmax(scores.masked_fill((tokens < 0)[..., None, :], float("-inf")), dim=-1)
        return self.dropout(torch.einsum("...hj,...jhd->...hd", weights, value).flatten(-2))


class SaffuTokenCache(nn.Module):
    """A cache of order n over the last W tokens (`config.neural_mixture_cache_window` = W), the pivot included: the
    tokens that followed the earlier occurrences of the last n - 1 tokens in the window, by recency,

        p_Kn(y) = sum_j alpha_tj [c_tj = y],   alpha_tj = softmax_j(beta_j) over the offsets j that match,

    for n = 1 the window's tokens c_tj = x_{t-j} (j = 0 ... W - 1, every known one matches); for n >= 2 the token
    c_tj = x_{t-j+1} after an earlier occurrence, matching where x_{t-j-k} = x_{t-k} for k = 0 ... n - 2 (j = 1 ...
    W - n + 1). beta is a learned bias per offset, 0 at first: the frequencies of the window's unigrams (n = 1) and of
    what followed the pivot before (n = 2), the closed-form (count) estimates of the text being read (Kuhn and De
    Mori 1990's cache, the bigram cache of Jelinek et al. 1991; Grave et al. 2017's neural cache, with a learned
    recency). Where nothing matches, the cache has no evidence (`forward`'s `matched` False)."""

    def __init__(self, window: int, order: int = 1):
        super().__init__()
        self.order = order  # n
        self.offset_bias = nn.Parameter(torch.zeros(window if order == 1 else window - order + 1))  # beta

    def candidates(self, tokens: torch.LongTensor) -> tuple[torch.LongTensor, torch.Tensor]:
        """(c_t, valid) (..., offsets) from `tokens` (..., W): x_t, ..., x_{t-W+1}, -1 where unknown."""
        if self.order == 1:
            return tokens, tokens >= 0
        offsets = self.offset_bias.shape[0]
        candidates = tokens[..., :offsets]  # x_{t-j+1}, j = 1 ... W - n + 1
        valid = candidates >= 0
        for k in range(self.order - 1):
            earlier = tokens[..., 1 + k : 1 + k + offsets]  # x_{t-j-k}
            valid = valid & (earlier >= 0) & (earlier == tokens[..., k : k + 1])
        return candidates, valid

    def weights(self, valid: torch.Tensor) -> torch.Tensor:
        """alpha_t (..., offsets): softmax(beta) over the valid offsets, 0 elsewhere (all 0 where none is)."""
        return torch.softmax(self.offset_bias.masked_fill(~valid, float("-inf")), dim=-1).nan_to_num(0.0)

    def target_log_probs(self, tokens: torch.LongTensor, targets: torch.LongTensor):
        """(ln p_Kn(y_t), matched) at the targets y_t: ln p -inf where y_t is not a candidate."""
        candidates, valid = self.candidates(tokens)
        mass = (self.weights(valid) * (candidates == targets[..., None])).sum(-1)
        return safe_log(mass), valid.any(-1)

    def forward(self, tokens: torch.LongTensor, vocab_size: int):
        """(index, ln p_Kn(index), matched): each offset's candidate c_tj (..., offsets; 0 where unknown) with the
        cache's ln p of that token (the mass of every valid offset holding it; -inf where none does), so that p_Kn is
        known everywhere (0 off the candidates) without a V-wide log."""
        candidates, valid = self.candidates(tokens)
        weights, index = self.weights(valid), candidates.clamp_min(0)
        mass = weights.new_zeros(*tokens.shape[:-1], vocab_size).scatter_add(-1, index, weights)
        return index, safe_log(mass.gather(-1, index)), valid.any(-1)


def safe_log(mass: torch.Tensor) -> torch.Tensor:
    """ln of a probability, -inf at 0 with no gradient there (the log's own gradient at 0 would be a NaN)."""
    positive = mass > 0
    return torch.where(positive, torch.log(torch.where(positive, mass, 1.0)), float("-inf"))


class SaffuNeuralMixture(nn.Module):
    """A neural word model mixed linearly with the count-based logits (`config.neural_mixture_dim` = d):

        u_t = [H_t, v_t, v_{t-1}],   o_t = [u_t, v_{t-2}, ..., v_{t-k+1}, H_t^2, ..., H_t^L],
        g_t = dropout_p(GELU(o_t A + a)),
        lambda_t = sigmoid(g_t w + c),   z_t = u_t D + g_t W + b_W,
        p(y) = (1 - lambda_t) softmax(logits_t)_y + lambda_t p_N(y),   p_N(y) = softmax(z_t)_y,

    (W = P E^T when `tied`: E the attention's token embeddings, P learned), returned as ln p. A linear mixture, unlike a
    product, lets the neural part add probability where the counts have little without having to be right where they are
    (Kneser-Ney + neural LM hybrids); trained with the tables' leave-one-out values it learns where the counts fail on
    text they did not see. The direct path D, b_W is a softmax layer on non-negative inputs and has the explicit warm
    start (`hf_saffu.warm_start`); the hidden path starts at W = 0 (P = 0), and the weight at w = 0, c =
    logit(`config.neural_mixture_weight`). The hidden path also reads the codes of k - 2 earlier tokens in order (k =
    `config.neural_mixture_context`; o_t = u_t for k = 2), the H_t of the layers above the first with
    `config.upper_layers="neural"` (H_t, in u_t, is then the first layer's), and with `attention`
    (`SaffuNeuralAttention`) a learned attention a_t over the last w tokens, then the learned embeddings LN(E)[x_t],
    ..., LN(E)[x_{t-n+1}] of the last n tokens in order (`config.neural_mixture_token_context`), o_t's last entries.
    The module takes o_t; D reads its first `direct_dim` entries, u_t.

    With C token classes k(y) (`config.neural_mixture_classes`; the buffer `token_classes`), p_N is factored,

        p_N(y) = softmax(u_t D^c + g_t W^c + b^c)_{k(y)} exp(z_ty) / sum_{y': k(y') = k(y)} exp(z_ty'),

    D^c, b^c the explicit solution on class targets; a training step's loss then reads z_t on the target's class
    only (`target_log_probs`). Both return ln p_N beside ln p: with `config.neural_mixture_aux_loss_coef` alpha the
    training loss adds -alpha mean_t ln p_N(y_t), p_N's own cross-entropy.

    With caches (`SaffuTokenCache`, p_K1 ... p_KN of orders 1 ... N over the last W tokens), the mixture above is mixed
    with each in turn, from p^0 = the mixture,

        p^n(y) = (1 - kappa_tn) p^{n-1}(y) + kappa_tn p_Kn(y),   kappa_tn = sigmoid(r_tn),   r_tn = g_t w_Kn + c_Kn,

    p = p^N, where p_Kn is p^{n-1} itself when it has no evidence (nothing in the window matches); w_K = 0 and c_K =
    logit(`config.neural_mixture_cache_weight`) at first. The methods then take the window's tokens (`cache_tokens`,
    (..., W))."""

    def __init__(
        self,
        direct_dim: int,
        input_dim: int,
        width: int,
        vocab_size: int,
        num_classes: int = 0,
        attention: SaffuNeuralAttention | None = None,
        dropout: float = 0.0,
        tied: bool = False,
        caches: list[SaffuTokenCache] | None = None,
    ):
        super().__init__()
        self.attention = attention  # a_t, the last entries of o_t
        self.caches = nn.ModuleList(caches or [])  # p_K1 ... p_KN
        if caches:
            self.cache_gate_weight = nn.Parameter(torch.zeros(width, len(caches)))  # w_K1 ... w_KN
            self.cache_gate_bias = nn.Parameter(torch.zeros(len(caches)))  # c_K1 ... c_KN
        self.dropout = nn.Dropout(dropout)  # on g_t, in training
        self.direct_weight = nn.Parameter(torch.zeros(direct_dim, vocab_size))  # D
        self.feature_weight = nn.Parameter(torch.zeros(input_dim, width))  # A
        self.feature_bias = nn.Parameter(torch.zeros(width))  # a
        self.tied = tied
        if tied:  # W = P E^T
            self.word_projection = nn.Parameter(torch.zeros(width, attention.token_embeddings.shape[1]))  # P
        else:
            self.word_weight = nn.Parameter(torch.zeros(width, vocab_size))  # W
        self.word_bias = nn.Parameter(torch.zeros(vocab_size))  # b_W
        self.gate_weight = nn.Parameter(torch.zeros(width, 1))  # w
        self.gate_bias = nn.Parameter(torch.zeros(1))  # c
        self.num_classes = num_classes
        # Set to a list by `hf_saffu.calibration` while it scores held-out text: each `target_log_probs` call appends
        # the terms (s_t, ln p_C(y_t), ln p_N(y_t)) of its positions, and with caches (r_tn, ln p_Kn(y_t)) after them
        # (ln p_Kn NaN where the cache has no evidence), (..., 3 + 2 N), NaN where there is no target.
        self.recorded_terms = None
        if num_classes:
            self.class_direct_weight = nn.Parameter(torch.zeros(direct_dim, num_classes))  # D^c
            self.class_word_weight = nn.Parameter(torch.zeros(width, num_classes))  # W^c
            self.class_bias = nn.Parameter(torch.zeros(num_classes))  # b^c
            self.register_buffer("token_classes", torch.arange(vocab_size) % num_classes)  # k(y); set by the warm start

    def forward(
        self,
        logits: torch.Tensor,
        inputs: torch.Tensor,
        targets: torch.LongTensor | None = None,
        changes=None,
        tokens: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ln p and the neural part's own ln p_N, both over the vocabulary, from the counted `logits` and the inputs
        o_t. `changes`: (word, class) changes (..., each None or a tensor) added to the neural part's logits at each
        position's target (and target class) before its softmax (training only: the direct path's leave-one-out
        values, `targets` then given). `tokens`: the caches' window, with caches."""
        gate, direct, hidden = self.features(inputs)
        words, classes = self.neural_logits(direct, hidden, targets, changes)
        if classes is None:
            neural = torch.log_softmax(words, dim=-1)
        else:
            class_log_probs = torch.log_softmax(classes, dim=-1)
            neural = words + (class_log_probs - self.class_log_normalisers(words))[..., self.token_classes]
        mixed = self.mix(gate, torch.log_softmax(logits, dim=-1), neural)
        if self.caches:
            gates = self.cache_gates(hidden)
            for n, cache in enumerate(self.caches):
                mixed = self.mix_cache(gates[..., n], mixed, *cache(tokens, mixed.shape[-1]))
        return mixed, neural

    def mix_cache(self, gate, mixed, index, cached, matched) -> torch.Tensor:
        """ln p^n = ln((1 - kappa) p^{n-1} + kappa p_Kn) over the vocabulary from ln p^{n-1} (`mixed`, (..., V)) and
        p_Kn's values at its candidates (`index`, `cached`: `SaffuTokenCache.forward`), kappa = sigmoid(`gate`); p^{n-1}
        kept where the cache has no evidence (not `matched`). Off the candidates p_Kn = 0, so ln p^n = ln(1 - kappa) +
        ln p^{n-1} there and only the candidates take a mix: no V-wide ln p_Kn. A token at several offsets gets the same
        value from each (amax over them: that value, its gradient shared; the candidates' old entries are set to -inf
        first so that none ties with them)."""
        kept = torch.where(matched, nn.functional.logsigmoid(-gate), 0.0)
        before = mixed.gather(-1, index)
        at = torch.where(matched[..., None], self.mix(gate[..., None], before, cached), before)
        rest = (mixed + kept[..., None]).scatter_(-1, index, float("-inf"))
        return rest.scatter_reduce(-1, index, at, "amax")

    def cache_gates(self, hidden: torch.Tensor) -> torch.Tensor:
        """The caches' logits r_tn = g_t w_Kn + c_Kn, (..., N)."""
        return hidden @ self.cache_gate_weight + self.cache_gate_bias

    def target_log_probs(
        self,
        counted: torch.Tensor,
        inputs: torch.Tensor,
        targets: torch.LongTensor,
        changes=None,
        tokens: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ln p(y_t) of `forward`'s equation and ln p_N(y_t) at the targets y_t only (..., -100: none, read as 0),
        from the counted part's ln softmax(logits_t)_{y_t} (`counted`, `target_log_softmax`) and the neural part's,

            ln p(y) = logaddexp(ln(1 - lambda_t) + l_y - logsumexp(l), ln lambda_t + ln p_N(y)),

        so no V-wide ln p is built (nor its backward); with classes z_t is computed on the target's class alone."""
        gate, direct, hidden = self.features(inputs)
        if self.num_classes:
            neural = self.class_target_log_probs(direct, hidden, targets, changes)
        else:
            words, _ = self.neural_logits(direct, hidden, targets, changes)
            neural = target_log_softmax(words, targets)
        gate = gate.squeeze(-1)
        mixed = self.mix(gate, counted, neural)
        terms = [gate, counted, neural]
        if self.caches:
            gates = self.cache_gates(hidden)
            for n, cache in enumerate(self.caches):
                cached, matched = cache.target_log_probs(tokens, targets)
                mixed = self.mix(gates[..., n], mixed, torch.where(matched, cached, mixed))
                terms += [gates[..., n], cached.masked_fill(~matched, float("nan"))]
        unknown = targets == -100
        if self.recorded_terms is not None:
            terms = torch.stack(terms, dim=-1).detach().double()
            self.recorded_terms.append(terms.masked_fill(unknown[..., None], float("nan")))
        return mixed.masked_fill(unknown, 0.0), neural.masked_fill(unknown, 0.0)

    @torch.no_grad()
    def calibrate_gate(self, scale: float, shift: float, *caches: float) -> None:
        """Fold a held-out calibration of the gates, lambda_t = sigmoid(a s_t + d) with s_t = g_t w + c (and with
        caches kappa_tn = sigmoid(a_n r_tn + d_n), `caches` = a_1, d_1, ..., a_N, d_N), into their weights: w <- a w,
        c <- a c + d, and the same for each w_Kn, c_Kn (`hf_saffu.calibration.fit_gate` chooses them)."""
        if len(caches) != 2 * len(self.caches):
            raise ValueError(f"calibrate_gate: a scale and a shift for each of {len(self.caches)} caches, got {caches}")
        self.gate_weight.mul_(scale)
        self.gate_bias.mul_(scale).add_(shift)
        if self.caches:
            scales, shifts = torch.tensor(caches[0::2]), torch.tensor(caches[1::2])
            self.cache_gate_weight.mul_(scales.to(self.cache_gate_weight))
            self.cache_gate_bias.mul_(scales.to(self.cache_gate_bias)).add_(shifts.to(self.cache_gate_bias))

    @staticmethod
    def mix(gate: torch.Tensor, counted: torch.Tensor, neural: torch.Tensor) -> torch.Tensor:
        """ln p = ln((1 - lambda) p_C + lambda p_N), lambda = sigmoid(`gate`), from ln p_C (`counted`) and ln p_N."""
        return torch.logaddexp(nn.functional.logsigmoid(-gate) + counted, nn.functional.logsigmoid(gate) + neural)

    def features(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gate's logit g_t w + c, the direct inputs u_t and the hidden features g_t."""
        hidden = self.dropout(nn.functional.gelu(inputs @ self.feature_weight + self.feature_bias))
        return hidden @ self.gate_weight + self.gate_bias, self.direct_inputs(inputs), hidden

    def word_weights(self, columns: torch.LongTensor | None = None) -> torch.Tensor:
        """W (width, V), or its `columns` in that order: the free weights, or P E^T when tied to the attention's
        token embeddings (then only the columns asked for are computed)."""
        if self.tied:
            embeddings = self.attention.token_embeddings
            return self.word_projection @ (embeddings if columns is None else embeddings[columns]).T
        return self.word_weight if columns is None else self.word_weight[:, columns]

    @staticmethod
    def affine(direct, hidden, direct_weight, word_weight, bias) -> torch.Tensor:
        """u_t D + g_t W + b for the given (blocks of) weights: the word logits z_t and the class logits."""
        return direct @ direct_weight + hidden @ word_weight + bias

    def neural_logits(self, direct, hidden, targets=None, changes=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z_t over the vocabulary and, with classes, the class logits, each with its `changes` at the targets."""
        word_change, class_change = changes if changes is not None else (None, None)
        words = self.affine(direct, hidden, self.direct_weight, self.word_weights(), self.word_bias)
        words = add_at_targets(words, targets, word_change)
        if not self.num_classes:
            return words, None
        class_targets = self.class_targets(targets) if class_change is not None else None
        return words, self.class_logits(direct, hidden, class_targets, class_change)

    def class_logits(self, direct, hidden, class_targets=None, class_change=None) -> torch.Tensor:
        """u_t D^c + g_t W^c + b^c (plus `class_change` at `class_targets`), -inf for a class with no words (its
        share would be lost)."""
        classes = self.affine(direct, hidden, self.class_direct_weight, self.class_word_weight, self.class_bias)
        empty = torch.bincount(self.token_classes, minlength=self.num_classes) == 0
        return add_at_targets(classes.masked_fill(empty, float("-inf")), class_targets, class_change)

    def class_members(self) -> torch.Tensor:
        """M (V, C): M_yk = 1 where k(y) = k (float64)."""
        return nn.functional.one_hot(self.token_classes, self.num_classes).to(torch.float64)

    def class_targets(self, targets: torch.LongTensor) -> torch.LongTensor:
        """k(y) of each target (-100 stays -100)."""
        return torch.where(targets == -100, targets, self.token_classes[targets.clamp_min(0)])

    def class_log_normalisers(self, words: torch.Tensor) -> torch.Tensor:
        """logsumexp of z_t over each class's words: (..., C)."""
        flat = words.reshape(-1, words.shape[-1])
        index = self.token_classes.expand_as(flat)
        top = flat.new_full((len(flat), self.num_classes), float("-inf"))
        top = top.scatter_reduce(1, index, flat.detach(), "amax").clamp_min(torch.finfo(flat.dtype).min)
        sums = flat.new_zeros(len(flat), self.num_classes).scatter_add(1, index, (flat - top.gather(1, index)).exp())
        return (sums.log() + top).view(*words.shape[:-1], self.num_classes)

    def class_target_log_probs(self, direct, hidden, targets, changes=None) -> torch.Tensor:
        """ln p_N(y_t) with classes, z_t computed only on each target's class: the positions sorted by target
        class and the columns of D, W, b_W by class, then one product per class on contiguous blocks (one gather
        and one split each way, so the backward pass writes each gradient once, not once per class)."""
        word_change, class_change = changes if changes is not None else (None, None)
        target_classes = self.class_targets(targets)
        class_log_probs = torch.log_softmax(self.class_logits(direct, hidden, target_classes, class_change), dim=-1)
        result = class_log_probs.gather(-1, target_classes.clamp_min(0)[..., None]).squeeze(-1)
        flat_targets, flat_classes = targets.reshape(-1), target_classes.reshape(-1)
        words = torch.argsort(self.token_classes, stable=True)  # the vocabulary, class by class
        word_counts = torch.bincount(self.token_classes, minlength=self.num_classes)
        place = torch.empty_like(words)  # y's index within its class
        place[words] = torch.arange(len(words), device=words.device) - (
            word_counts.cumsum(0) - word_counts
        ).repeat_interleave(word_counts)
        known = torch.nonzero(flat_classes >= 0).squeeze(1)
        rows = known[torch.argsort(flat_classes[known], stable=True)]  # the positions, class by class
        row_counts = torch.bincount(flat_classes[rows], minlength=self.num_classes).tolist()
        columns = place[flat_targets[rows]][:, None].split(row_counts)
        row_change = word_change.reshape(-1)[rows].split(row_counts) if word_change is not None else None
        blocks = zip(
            direct.reshape(len(flat_targets), -1)[rows].split(row_counts),
            hidden.reshape(len(flat_targets), -1)[rows].split(row_counts),
            self.direct_weight[:, words].split(word_counts.tolist(), dim=1),
            self.word_weights(words).split(word_counts.tolist(), dim=1),
            self.word_bias[words].split(word_counts.tolist()),
            strict=True,
        )
        within = []
        for group, (u, g, direct_weight, word_weight, word_bias) in enumerate(blocks):
            if row_counts[group] == 0:
                continue
            z = self.affine(u, g, direct_weight, word_weight, word_bias)
            if row_change is not None:
                z = z.scatter_add(1, columns[group], row_change[group][:, None].to(z.dtype))
            within.append(z.gather(1, columns[group]) - z.logsumexp(1, keepdim=True))
        if not within:
            return result
        by_position = result.new_zeros(len(flat_targets)).index_put((rows,), torch.cat(within).squeeze(1))
        return result + by_position.view(targets.shape)

    def direct_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """u_t, the direct path's share of o_t."""
        return inputs[..., : self.direct_weight.shape[0]]

    def learned_parameters(self) -> list[nn.Parameter]:
        """The parameters only backprop sets: all but the explicit solution D, b_W (and D^c, b^c)."""
        solved = {"direct_weight", "word_bias", "class_direct_weight", "class_bias"}
        return [parameter for name, parameter in self.named_parameters() if name not in solved]


class SaffuPreTrainedModel(PreTrainedModel):
    config_class = SaffuConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["SaffuLayer"]
    _supports_sdpa = False
    _supports_flash_attn = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing (a `ValueError` naming them) weights that disagree with the
        config: a tensor the model needs that the checkpoint lacks (it would be left random), a tensor of another
        shape (naming vocab_size when the vocabulary differs; `ignore_mismatched_sizes=True` re-initialises such
        tensors as transformers does), or, for the causal LM, a tensor the model has no place for (e.g.
        num_layers=2 in the config of a one-layer model). A base `SaffuModel` may leave a causal LM checkpoint's
        head unused."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
        if info["mismatched_keys"] and not ignore_mismatched_sizes:
            raise ValueError(f"{pretrained_model_name_or_path}: {cls._shape_mismatch(info['mismatched_keys'])}")
        problems = {
            "missing": info["missing_keys"],
            "unexpected": info["unexpected_keys"] if cls is not SaffuModel else [],
        }
        problems = {kind: sorted(keys) for kind, keys in problems.items() if keys}
        if problems:
            listed = "; ".join(
                f"{kind}: {', '.join(keys[:4])}{f' and {len(keys) - 4} more' if len(keys) > 4 else ''}"
                for kind, keys in problems.items()
            )
            raise ValueError(f"{pretrained_model_name_or_path}: the weights do not match its config ({listed})")
        for order in model.config.table_orders if isinstance(model, SaffuForCausalLM) else ():
            name = table_name(order)
            problem = table_index_problem(getattr(model, name), model.config.vocab_size)
            if problem:
                raise ValueError(f"{pretrained_model_name_or_path}: {name}.{problem} (corrupt index tensors)")
        return (model, info) if output_loading_info else model

    @staticmethod
    def _shape_mismatch(mismatched_keys) -> str:
        """What disagrees, from `from_pretrained`'s (name, checkpoint shape, model shape) triples: vocab_size with
        both numbers when the embeddings' rows (the vocabulary) differ, else the first tensor and its two shapes."""
        mismatched = sorted((name, list(stored), list(expected)) for name, stored, expected in mismatched_keys)
        for name, stored, expected in mismatched:
            if name.endswith("embeddings.weight") and stored[0] != expected[0]:
                return f"its config's vocab_size={expected[0]} does not match the weights' {stored[0]} tokens ({name})"
        name, stored, expected = mismatched[0]
        return (
            f"the weights' shapes do not match its config (e.g. embed_bits, hidden_bits, windows or the table sizes): "
            f"{name} holds {stored}, the config makes it {expected}"
        )

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """SAFFU keeps its own constant-size `SaffuDecodingState`, not a key/value cache."""
        return False

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """`PreTrainedModel.resize_token_embeddings`, refused before anything changes (a `ValueError` naming the
        field) when the config could not hold the new vocabulary: at most 2^embed_bits - 1 and 2^hidden_bits - 1
        tokens, and the special token ids inside it."""
        if new_num_tokens is not None or pad_to_multiple_of is not None:
            resized = copy.deepcopy(self.config)
            resized.vocab_size = new_num_tokens if new_num_tokens is not None else self.config.vocab_size
            if pad_to_multiple_of is not None:
                resized.vocab_size = math.ceil(resized.vocab_size / pad_to_multiple_of) * pad_to_multiple_of
            resized.validate_saffu()
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        for order in self.config.table_orders if isinstance(self, SaffuForCausalLM) else ():
            table = getattr(self, table_name(order))
            if table.vocab_size != self.config.vocab_size:
                setattr(
                    self, table_name(order), table.resized(self.config.vocab_size, self.config.table_capacity(order))
                )
        return embeddings

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Bit-cipher embeddings (frequency rank = token id until the warm start counts tokens);
        normal(0, initializer_range) dense weights and zero biases.

        `config.warm_started` follows the weights: a freshly initialised layer (a model built from a config,
        or a weight missing from a checkpoint) resets it; `from_pretrained` initialises only missing weights,
        so a complete warm-started checkpoint keeps it."""
        if isinstance(module, (nn.Embedding, nn.Linear, SaffuPivotBigrams, SaffuNgramTable)):
            self.config.warm_started = False
        if isinstance(module, (SaffuPivotBigrams, SaffuNgramTable)):  # empty tables until the warm start
            for tensor in module.parameters(recurse=False):
                init.zeros_(tensor)
            for name, tensor in module.named_buffers(recurse=False):
                pad = self.config.vocab_size ** (module.order - 1)
                init.constant_(tensor, pad) if name == "histories" else init.zeros_(tensor)
        if isinstance(module, nn.Embedding):
            ranks = torch.arange(module.num_embeddings)
            init.copy_(module.weight, bit_cipher_vectors(ranks, module.embedding_dim))
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        if isinstance(module, SaffuResidualHead):  # B = 0 leaves the logits (and the warm start) unchanged
            init.normal_(module.down, mean=0.0, std=1.0)  # z = H A of unit scale: a random projection of H
            init.zeros_(module.up)
        if isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if isinstance(module, SaffuNeuralAttention):  # GPT-2's initialisation; beta = 0
            init.normal_(module.token_embeddings, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.offset_bias)
        if isinstance(module, SaffuNeuralMixture):  # the neural part starts at b_W, weighted lambda_0
            weight = self.config.neural_mixture_weight
            init.normal_(module.feature_weight, mean=0.0, std=1.0 / math.sqrt(module.feature_weight.shape[0]))
            word = module.word_projection if module.tied else module.word_weight  # P or W
            for tensor in (module.direct_weight, module.feature_bias, word, module.word_bias):
                init.zeros_(tensor)
            init.zeros_(module.gate_weight)
            init.constant_(module.gate_bias, math.log(weight / (1 - weight)))
            if module.caches:  # kappa_0
                weight = self.config.neural_mixture_cache_weight
                init.zeros_(module.cache_gate_weight)
                init.constant_(module.cache_gate_bias, math.log(weight / (1 - weight)))
        if isinstance(module, SaffuTokenCache):  # beta = 0: the window's frequencies
            init.zeros_(module.offset_bias)


class SaffuModel(SaffuPreTrainedModel):
    """Bit-cipher embeddings and the stack of SAFFU layers; returns the last layer's H_t."""

    def __init__(self, config: SaffuConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.embed_bits)
        first = SaffuLayer(config, config.embed_bits)
        self.num_contexts = len(first.contexts)  # C
        above = [SaffuLayer(config, self.num_contexts * config.hidden_bits) for _ in range(config.num_layers - 1)]
        self.layers = nn.ModuleList([first, *above])
        # A hook for the frozen-embedding phase of training (`hf_saffu.frozen_phase.FrozenInputCache`): while set, the
        # embeddings are read detached and the first layer's s_t of a training block comes from its `lookup`.
        self.frozen_inputs = None
        self.post_init()
        self.embeddings.weight.requires_grad_(not config.freeze_embeddings)

    def input_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        """v = E[input_ids]; detached in the frozen phase (`frozen_inputs` set), so no gradient reaches E."""
        vectors = self.embeddings(input_ids)
        return vectors.detach() if self.frozen_inputs is not None else vectors

    def cached_similarities(self, input_ids, vectors, valid, ends_document, state) -> torch.Tensor | None:
        """The first layer's s_t from the frozen phase's cache when training on blocks read from a fresh state;
        None (the layer computes s_t) otherwise."""
        if self.frozen_inputs is None or state is not None or not self.training:
            return None
        first = self.layers[0]
        return self.frozen_inputs.lookup(
            (input_ids, valid), lambda: first.context_inputs(vectors, valid, ends_document, None, []).similarities
        )

    def document_ends(self, input_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(batch, T) bool: x_t is the EOS token, after which a new document begins (none without an eos_token_id)."""
        eos = self.config.eos_token_id
        return input_ids == eos if eos is not None else torch.zeros_like(valid)

    def returns_log(self, index: int) -> bool:
        """Whether layer `index` gives ln H_t instead of H_t: the head's layer (`config.head_layer`) with
        `log_hidden_head`."""
        return self.config.log_hidden_head and index == self.config.head_layer

    def layer_input(self, index: int, below: torch.Tensor) -> torch.Tensor:
        """What layer `index` reads from `below` (the input vectors, or the layer below's output): v_t for the first,
        H_t / C of the layer below for the others (unit L1 norm)."""
        if index == 0:
            return below
        return (below.exp() if self.returns_log(index - 1) else below) / self.num_contexts

    def layer_outputs(
        self,
        vectors: torch.Tensor,
        valid: torch.Tensor,
        ends_document: torch.Tensor,
        states: list[SaffuLayerState | None],
        similarities: torch.Tensor | None = None,
    ):
        """Per layer, bottom-up from the input vectors: (H_t, the layer's state after these positions); the head's
        layer gives ln H_t with `log_hidden_head` (`returns_log`). `similarities`: the first layer's s_t, when already
        computed."""
        hidden = vectors
        for index, (layer, state) in enumerate(zip(self.layers, states, strict=True)):
            cached = similarities if index == 0 else None
            inputs = self.layer_input(index, hidden)
            hidden, new_state = layer(inputs, valid, ends_document, state, self.returns_log(index), cached)
            yield hidden, new_state

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def check_input_ids(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None) -> None:
        """Clear errors for inputs the layers cannot read: shapes and dtypes (static, free under compile),
        then the token range (read back to the host, so skipped while compiling)."""
        if input_ids is None:
            raise ValueError("SaffuModel needs input_ids (token ids drive the document resets at EOS)")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(
                f"input_ids must have shape (batch, length) with length >= 1, got shape {tuple(input_ids.shape)} "
                "(a SAFFU text starts with the EOS token; give at least one token, as a 2-D tensor)"
            )
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if attention_mask is not None and (
            attention_mask.dim() != 2
            or attention_mask.shape[0] != input_ids.shape[0]
            or attention_mask.shape[1] < input_ids.shape[1]
        ):
            raise ValueError(
                f"attention_mask must have shape (batch, length) or (batch, past + length) for input_ids of shape "
                f"{tuple(input_ids.shape)}, got shape {tuple(attention_mask.shape)}"
            )
        if torch.compiler.is_compiling():  # the range check reads values back to the host: no graph break
            return
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"input_ids hold token ids in [{int(input_ids.min())}, {int(input_ids.max())}] but the model's "
                f"vocab_size is {self.config.vocab_size}: the tokenizer and the model config do not match"
            )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: SaffuDecodingState | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: SaffuDecodingState | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Args:
        input_ids: (batch, T) token ids; with a state, only the tokens after it.
        attention_mask: (batch, T) or (batch, T_past + T) with 0 at padding (left padding supported).
        cache: a `SaffuDecodingState` to continue from (`past_key_values`, its name before transformers
            5.24, is accepted too).
        """
        state = decoding_state(cache, past_key_values)
        self.check_input_ids(input_ids, attention_mask)
        use_cache = use_cache if use_cache is not None else not self.training
        length = input_ids.shape[1]
        if attention_mask is None:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            valid = attention_mask[:, -length:].to(torch.bool)
        ends_document = self.document_ends(input_ids, valid)
        layer_states = state.layers if state is not None else [None] * len(self.layers)

        hidden = self.input_vectors(input_ids)
        similarities = self.cached_similarities(input_ids, hidden, valid, ends_document, layer_states[0])
        all_hidden = [hidden] if output_hidden_states else None
        new_states = []
        for output, new_state in self.layer_outputs(hidden, valid, ends_document, layer_states, similarities):
            hidden = output
            new_states.append(new_state)
            if output_hidden_states:
                all_hidden.append(hidden)

        new_cache = None
        if use_cache:
            seen = state.seen_tokens if state is not None else 0
            count = self.config.previous_token_count
            last = token_history(input_ids, attention_mask, state, count)[:, -count:] if count > 0 else None
            new_cache = SaffuDecodingState(new_states, seen + length, last)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            **{CACHE_FIELD: new_cache},
        )


class SaffuForCausalLM(SaffuPreTrainedModel, GenerationMixin):
    """SAFFU layers and the output layer logits = H_t O + b_O (ln H_t O + b_O with `config.log_hidden_head`),
    plus a channel from the pivot token: its n-gram tables' rows b + S[x_t] + T[h_t] + ... (`config.ngram_order`)
    or v_t Q, a path from the pivot's embedding (`config.pivot_head`)."""

    def __init__(self, config: SaffuConfig):
        super().__init__(config)
        self.model = SaffuModel(config)
        self.lm_head = nn.Linear(self.model.num_contexts * config.hidden_bits, config.vocab_size)
        self.pivot_head = nn.Linear(config.embed_bits, config.vocab_size, bias=False) if config.pivot_head else None
        self.pivot_bigrams = self.pivot_trigrams = (
            None  # the tables of orders 2 and 3, when config.ngram_order has them
        )
        for order in config.table_orders:
            setattr(self, table_name(order), new_table(order, config.vocab_size, config.table_capacity(order)))
        hidden_dim, rank = config.num_contexts * config.hidden_bits, config.residual_rank
        self.residual_head = SaffuResidualHead(hidden_dim, rank, config.vocab_size) if rank else None
        width, direct = config.neural_mixture_dim, hidden_dim + 2 * config.embed_bits
        inputs = hidden_dim * (1 + len(self.upper_layers)) + config.neural_mixture_context * config.embed_bits
        classes, window, attention = config.neural_mixture_classes, config.neural_mixture_attention_window, None
        dropout, tied = config.neural_mixture_dropout, config.neural_mixture_tied_output
        if width and window:
            dim, heads = config.neural_mixture_attention_dim, config.neural_mixture_attention_heads
            ordered = config.neural_mixture_token_context
            attention = SaffuNeuralAttention(config.vocab_size, window, dim, heads, dropout, ordered)
            inputs += attention.output_dim
        cache_window, orders = config.neural_mixture_cache_window, config.neural_mixture_cache_order
        caches = [SaffuTokenCache(cache_window, order) for order in range(1, orders + 1)] if cache_window else None
        self.neural_mixture = (
            SaffuNeuralMixture(direct, inputs, width, config.vocab_size, classes, attention, dropout, tied, caches)
            if width
            else None
        )
        # Training only, set by the trainer (`hf_saffu.leave_one_out`): (logits, pivots, previous, labels) -> logits
        # with the tables' values at each training position as if its own occurrence had not been counted; and
        # (u_t, targets, target classes) -> the same changes of the neural word model's target (class) logits.
        self.table_leave_one_out = None
        self.neural_leave_one_out = None
        # Training only, with the counted parts frozen (`freeze_counted_parts`): a `hf_saffu.frozen_phase.
        # FrozenInputCache` of their ln p at each training block's targets (`counted_target_log_probs`).
        self.frozen_counted = None
        self.post_init()

    @property
    def upper_layers(self) -> list[SaffuLayer]:
        """The layers whose H_t only the neural word model's hidden path reads: those above the head's layer
        (`config.head_layer`; the layers above the first with `config.upper_layers="neural"`, none otherwise)."""
        return list(self.model.layers[self.config.head_layer + 1 :])

    def backprop_parameters(self) -> list[nn.Parameter]:
        """The parameters `freeze_counted_parts` trains: the neural word model's learned ones
        (`SaffuNeuralMixture.learned_parameters`) and the `upper_layers` (solved by the warm start, then trained with
        the neural word model that alone reads them)."""
        upper = [parameter for layer in self.upper_layers for parameter in layer.parameters()]
        return self.neural_mixture.learned_parameters() + upper

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; when the code is saved with the model (`register_for_auto_class`),
        the auto_map also names the base `SaffuModel` for `AutoModel`, so `AutoModel.from_pretrained(path,
        trust_remote_code=True)` loads it where hf_saffu is not installed."""
        if self._auto_class is not None:
            module = SaffuModel.__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": f"{module}.SaffuModel",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _upload_modified_files(self, working_dir, repo_id: str, *args, **kwargs):
        """The upload step of `push_to_hub`, given the saved folder and transformers' card (the repo's own, or a
        generic one): with the hf_saffu package, the SAFFU model card (`model_card_for_dir`) is published, with
        the results of the folder the model was loaded from when it still holds these weights."""
        try:
            from hf_saffu.model_card import model_card_for_dir
        except ImportError:  # loaded as remote code where hf_saffu is not installed: keep transformers' card
            pass
        else:
            with open(os.path.join(working_dir, "README.md"), "w", encoding="utf-8") as readme:
                readme.write(model_card_for_dir(working_dir, repo_id, results_dir=self.name_or_path or None))
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    def _assisted_decoding(self, *args, **kwargs):
        """`generate` with an `assistant_model` or `prompt_lookup_num_tokens` (assisted decoding, prompt lookup)
        would have to return the decoding state to the last accepted draft token; SAFFU's constant-size state keeps
        no earlier states, so these modes are refused with a ValueError before any step."""
        raise ValueError(
            "SAFFU does not support assisted decoding or prompt lookup (assistant_model, prompt_lookup_num_tokens): "
            "its constant-size decoding state cannot be cropped back to the accepted draft tokens; generate without "
            "them"
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: SaffuDecodingState | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        past_key_values: SaffuDecodingState | None = None,
        skip_logits: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Next-token logits (batch, T, vocab_size); `loss` is the mean token cross-entropy when `labels`
        are given (labels are shifted inside; -100 is ignored; see `causal_lm_loss` for labels with no
        target). `cache` (or `past_key_values`): the decoding state to continue from. `skip_logits`: return the
        loss alone (logits None, as Liger's fused losses do); with the neural mixture the loss then reads ln p
        at the targets only (`SaffuNeuralMixture.target_log_probs`). `ExplicitTrainer` trains with it."""
        if skip_logits and labels is None:
            raise ValueError("skip_logits=True returns only the loss: pass labels too")
        state = decoding_state(cache, past_key_values)
        upper = len(self.upper_layers)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=state,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states or upper > 0,
        )
        # the head's layer's output and the upper layers' H_t (`upper_layers`)
        hidden, *above = outputs.hidden_states[1:] if upper else (outputs.last_hidden_state,)
        count = self.config.previous_token_count  # the tokens before the pivot: tables' histories, v_{t-1}
        previous = previous_tokens(input_ids, attention_mask, state, count) if count > 0 else None
        if logits_to_keep:
            hidden, input_ids = hidden[:, -logits_to_keep:], input_ids[:, -logits_to_keep:]
            above = [layer[:, -logits_to_keep:] for layer in above]
            previous = previous[:, -logits_to_keep:] if previous is not None else None

        def counted_logits() -> torch.Tensor:
            logits = self.output_logits(hidden, input_ids, previous)
            if self.training and labels is not None and self.table_leave_one_out is not None:
                logits = self.table_leave_one_out(logits, input_ids, previous, labels)
            return logits

        logits, loss, aux_loss = None, None, None
        coef = self.config.neural_mixture_aux_loss_coef if self.training and labels is not None else 0
        if self.neural_mixture is not None:
            probabilities = hidden.exp() if self.config.log_hidden_head else hidden
            inputs = self.neural_inputs(probabilities, input_ids, previous, above=above)
            targets, changes = None, None
            if labels is not None:
                targets, count = self.loss_targets(labels, dict(kwargs))
            if self.training and labels is not None and self.neural_leave_one_out is not None:
                mixture = self.neural_mixture
                classes = mixture.class_targets(targets) if mixture.num_classes else None
                changes = self.neural_leave_one_out(mixture.direct_inputs(inputs), targets, classes)
            window = self.cache_tokens(input_ids, previous)
            if skip_logits:
                counted = self.counted_target_log_probs(counted_logits, input_ids, attention_mask, labels, targets)
                mixed, own = self.neural_mixture.target_log_probs(counted, inputs, targets, changes, window)
                loss = -mixed.sum() / count
            else:
                logits, own = self.neural_mixture(counted_logits(), inputs, targets, changes, window)
                if coef:
                    own = own.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1).masked_fill(targets == -100, 0)
            if coef:
                aux_loss = -coef * own.sum() / count  # the neural part's own cross-entropy, alpha-weighted
        else:
            logits = counted_logits()
        if labels is not None and loss is None:
            loss = self.causal_lm_loss(logits, labels, **kwargs)
        if aux_loss is not None:
            loss = loss + aux_loss
        return CausalLMOutputWithPast(
            loss=loss,
            logits=None if skip_logits else logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )

    def counted_target_log_probs(self, counted_logits, input_ids, attention_mask, labels, targets) -> torch.Tensor:
        """ln softmax(logits_t)_{y_t} of the counted parts (`counted_logits()`) at the targets; in training with
        `frozen_counted` set (the counted parts frozen) from its cache, keyed by the block's tokens, mask and labels,
        so a block's V-wide counted logits are computed once."""
        if self.frozen_counted is None or not self.training:
            return target_log_softmax(counted_logits(), targets)
        keys = tuple(tensor for tensor in (input_ids, attention_mask, labels) if tensor is not None)
        return self.frozen_counted.lookup(keys, lambda: target_log_softmax(counted_logits(), targets))

    def output_logits(
        self, hidden: torch.Tensor, pivots: torch.LongTensor, previous: torch.LongTensor | None = None
    ) -> torch.Tensor:
        """The output layer: H_t O + b_O (ln H_t O + b_O when `hidden` is the log-hidden output), plus H_t A B
        (`residual_head`) and the pivot's channel (`pivot_logits`)."""
        logits = self.lm_head(hidden)
        if self.residual_head is not None:
            logits = logits + self.residual_head(hidden.exp() if self.config.log_hidden_head else hidden)
        return self.pivot_logits(pivots, previous, logits)

    def neural_inputs(
        self,
        hidden: torch.Tensor,
        pivots: torch.LongTensor,
        previous: torch.LongTensor,
        attend: bool = True,
        above: list[torch.Tensor] | tuple = (),
    ) -> torch.Tensor:
        """o_t = [H_t, v_t, v_{t-1}, ..., v_{t-k+1}, H_t^2, ..., H_t^L] for `neural_mixture`, then a_t and the ordered
        embeddings with its attention unless not `attend` (the warm start reads only u_t) (`hidden`: H_t, the head's
        layer's hidden distributions; `above`: H_t^2 ... of the `upper_layers`; `previous`: `previous_tokens`, at least
        max(k, w) - 1 of them, or one in the pivots' shape for k = 2 without attention; v = 0 where there is no
        token)."""
        tokens = recent_tokens(pivots, previous)
        read = tokens[..., : self.config.neural_mixture_context]
        vectors = self.model.input_vectors(read.clamp_min(0)) * (read >= 0)[..., None].to(hidden.dtype)
        inputs = [hidden, vectors.flatten(-2), *above]
        if attend and self.neural_mixture.attention is not None:
            window = self.config.neural_mixture_attention_window
            inputs.append(self.neural_mixture.attention(tokens[..., :window]).to(hidden.dtype))
        return torch.cat(inputs, dim=-1)

    def cache_tokens(self, pivots: torch.LongTensor, previous: torch.LongTensor) -> torch.LongTensor | None:
        """x_t, x_{t-1}, ..., x_{t-W+1} (-1 where unknown) for the neural mixture's caches; None without them."""
        window = self.config.neural_mixture_cache_window
        if not window:
            return None
        return recent_tokens(pivots, previous)[..., :window]

    @property
    def ngram_tables(self) -> list["SaffuPivotBigrams | SaffuNgramTable"]:
        """The pivot's n-gram tables, orders 2 ... config.ngram_order."""
        return [getattr(self, table_name(order)) for order in self.config.table_orders]

    @property
    def has_pivot_channel(self) -> bool:
        return self.pivot_head is not None or self.pivot_bigrams is not None

    def pivot_logits(
        self, pivots: torch.LongTensor, previous: torch.LongTensor | None = None, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`logits` (default zeros, shape pivots.shape + (V,)) plus the pivot's channel: v_t Q, or b + S[x_t] and,
        with tables of higher orders n, T_n[h_t] (`history_keys`; `previous`: `previous_tokens`, the n - 2 tokens
        before each pivot, -1 where there are none; for order 3, the one token may come in the pivots' shape).

        v_t Q is computed once per distinct pivot token u and gathered, (E[u] Q)[index of x_t in u]: a batch of N
        positions holds far fewer distinct tokens than N (about a third for 32 x 128 Brown blocks). The tables
        add only their stored entries to the logits. Both give the dense result, row for row."""
        vocab_size = self.config.vocab_size
        if logits is None:
            logits = torch.zeros(*pivots.shape, vocab_size, device=pivots.device, dtype=self.lm_head.weight.dtype)
        if self.pivot_head is not None:
            distinct, index = torch.unique(pivots, return_inverse=True)
            return logits + self.pivot_head(self.model.input_vectors(distinct))[index]
        if self.pivot_bigrams is None:
            return logits
        flat = self.pivot_bigrams(logits.reshape(-1, vocab_size), pivots.reshape(-1))
        if len(self.ngram_tables) > 1:
            previous = checked_previous(pivots, previous, self.config.ngram_order - 2)
        for table in self.ngram_tables[1:]:
            flat = table(flat, history_keys(pivots, previous, table.order, vocab_size).reshape(-1))
        return flat.view(logits.shape)

    def causal_lm_loss(self, logits: torch.Tensor, labels: torch.LongTensor, **kwargs) -> torch.Tensor:
        """Summed next-token cross-entropy / number of targets (`num_items_in_batch` when Trainer gives it).

        Labels with no target (all -100 after the shift) give loss 0 with a zero gradient: the sum over no
        tokens divided by max(count, 1), not the NaN of 0 / 0, so a block of padding cannot poison a run.
        """
        _, kwargs["num_items_in_batch"] = self.loss_targets(labels, kwargs)
        return self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

    @staticmethod
    def loss_targets(labels: torch.LongTensor, kwargs: dict) -> tuple[torch.LongTensor, "torch.Tensor | int"]:
        """Each position's target (labels shifted left, -100 at the end; or the given `shift_labels`) and the
        loss's divisor: `num_items_in_batch` when Trainer gives it, else the number of targets, at least 1."""
        targets = kwargs.get("shift_labels")
        if targets is None:
            targets = nn.functional.pad(labels[..., 1:], (0, 1), value=-100)
        count = kwargs.pop("num_items_in_batch", None)
        if count is None:
            count = (targets != -100).sum()
        return targets, count.clamp_min(1) if torch.is_tensor(count) else max(count, 1)


__all__ = [
    "SaffuPreTrainedModel",
    "SaffuModel",
    "SaffuForCausalLM",
    "SaffuDecodingState",
    "SaffuPivotBigrams",
    "SaffuNgramTable",
    "SaffuResidualHead",
    "SaffuNeuralMixture",
    "SaffuNeuralAttention",
    "SaffuTokenCache",
]
