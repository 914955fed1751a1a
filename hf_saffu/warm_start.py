"""The explicit warm start of a SAFFU model, bottom-up (docs/DESIGN.md, section 5).

Every step applies the explicit softmax solution (`hf_saffu.explicit`: ln of the counts with the additive
floor, or discounted with `explicit_discount`) to one sub-layer, with everything below it fixed, from
float64 co-occurrence sums accumulated in one forward pass over this process's shard of the data and summed
across processes before every process solves:

1. token counts -> frequency ranks; with `embedding_codes="anchored"` or `hidden_targets="clusters"`, one
   more pass for the pair profiles (`hf_saffu.token_classes`) -> bit-cipher input codes (by rank, or
   anchored on similar frequent tokens) and the hidden targets l(y) (label codes by rank, or one-hot token
   classes); optionally contextual input embeddings (normalised sums of the neighbours' codes);
2. for each layer, for each context:
   a. uniform attention (W = 0, c = 0): F_U = sum_t z_t^T l(y_t), U0 = ln F_U (with
      `explicit_hidden_priming` K: U0 = K ln F_U, b0 = -(K - 1) ln phi);
   b. attention targets: g_{t,j} = l(y_t) . ln softmax(v_{t-j} U0 + b0), a*_t = softmax over the valid j
      (not the pivot, when the pivot's channel carries it); F_W = sum_t s_t^T a*_t, solved with K = mean ||s_t||_1;
   c. U again with the solved attention; b-c repeat `explicit_attention_iters` times;
3. the pivot's channel: by default its bigram table (`pivot_bigrams`, interpolated Kneser-Ney from the pair
   counts; `hf_saffu.explicit.solve_bigram_channel`) and the (previous, pivot) trigram table over it
   (`pivot_trigrams`, from the triple counts; `hf_saffu.explicit.solve_trigram_channel`); optionally the pivot
   head instead (`pivot_head`): F_Q = sum_t v_t^T e_{y_t}, Q = ln F_Q (K = 1);
4. the head: with `log_hidden_head`, O and b_O in closed form from the class codes (`set_class_head`, no
   data pass); otherwise F_O = sum_t H_t^T e_{y_t}, solved with K = mean ||H_t||_1 = C.

No autograd: every pass is forward computation only. Memory is that of one batch plus the
fixed-size statistics, whatever the corpus size.
"""

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import torch
from tqdm.auto import tqdm

from .bit_cipher import (
    accumulate_neighbour_sums,
    bit_cipher_codes,
    bit_cipher_vectors,
    codes_to_vectors,
    contextual_vectors,
    frequency_ranks,
)
from .explicit import Cooccurrence, ExplicitStatisticsError, solve_bigram_channel, solve_trigram_channel
from .modeling_saffu import SaffuContext, SaffuForCausalLM, SaffuLayer, banded_dot
from .token_classes import accumulate_profiles, anchored_codes, cluster_tokens, profile_columns

PROFILE_COLUMNS = 1024  # width of the pair profiles (the rarer tokens share the last column)

Batch = dict[str, torch.Tensor]


@dataclass
class WarmStartReport:
    """What the warm start did: tokens read per pass, seconds per step and the priming numbers."""

    tokens: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    priming_numbers: dict[str, float] = field(default_factory=dict)
    pivot_bigrams: dict[str, int] = field(default_factory=dict)  # pairs seen and kept by the bigram table
    pivot_trigrams: dict[str, int] = field(default_factory=dict)  # triples seen and kept by the trigram table
    statistics: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # `table_statistics`

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


class ExplicitWarmStart:
    """Runs the explicit warm start of `model` over `batches` (a re-iterable of {"input_ids",
    optional "attention_mask"} dicts: this process's disjoint shard).

    With an `accelerator` of several processes, every statistic is summed over the processes before
    solving, so every process ends with the same weights as a single process reading all shards.
    """

    def __init__(
        self,
        model: SaffuForCausalLM,
        batches: Iterable[Batch],
        attention_iters: int | None = None,
        accelerator=None,
        show_progress: bool = True,
    ):
        self.model = model
        self.config = model.config
        self.recipe = model.config.warm_start_recipe  # the recipe: what this class reads of the config
        self.recipe.validate()
        if attention_iters is not None and attention_iters < 0:
            raise ValueError(f"attention_iters must be >= 0, got {attention_iters}")
        self.batches = batches
        self.attention_iters = self.recipe.explicit_attention_iters if attention_iters is None else attention_iters
        self.accelerator = accelerator
        self.show_progress = show_progress
        self.device = next(model.parameters()).device
        self.report = WarmStartReport()
        self.label_vectors: torch.Tensor | None = None  # l(y), (vocab_size, hidden_bits)
        self.target_classes: torch.Tensor | None = None  # class(y) when the targets are one-hot classes
        self.table_bytes_left = 0.0  # of config.pivot_table_mb, while the tables are sized (`sized_table`)

    # -- data -------------------------------------------------------------------------------------

    def iterate(self, description: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(input_ids, valid, target_weight) per batch; target_weight[t] = 1 where t and t + 1 are real."""
        for batch in tqdm(self.batches, desc=f"warm start: {description}", disable=not self.show_progress):
            input_ids = batch["input_ids"].to(self.device)
            mask = batch.get("attention_mask")
            valid = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.to(self.device).bool()
            target_weight = valid[:, :-1] & valid[:, 1:]
            yield input_ids, valid, target_weight

    def reduce(self, *statistics: Cooccurrence | torch.Tensor) -> None:
        for statistic in statistics:
            if isinstance(statistic, Cooccurrence):
                statistic.all_reduce(self.accelerator)
            elif self.accelerator is not None and self.accelerator.num_processes > 1:
                statistic.copy_(self.accelerator.reduce(statistic, reduction="sum"))

    def timed(self, step: str, start: float) -> None:
        self.report.seconds[step] = self.report.seconds.get(step, 0.0) + time.perf_counter() - start

    # -- steps ------------------------------------------------------------------------------------

    def count_tokens(self) -> torch.Tensor:
        """Token counts of the (all-process) data, float64."""
        counts = torch.zeros(self.config.vocab_size, dtype=torch.float64, device=self.device)
        tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        for input_ids, valid, _ in self.iterate("token counts"):
            self.model.model.check_input_ids(input_ids)
            counts.index_add_(0, input_ids[valid], torch.ones_like(input_ids[valid], dtype=torch.float64))
            tokens += valid.sum()
        self.reduce(counts, tokens)
        if tokens.item() == 0:
            raise ExplicitStatisticsError("the warm-start data holds no tokens (empty dataset or all padding)")
        self.report.tokens = int(tokens.item())
        return counts

    def set_embeddings(self, counts: torch.Tensor) -> None:
        """Input embeddings (bit-cipher codes by frequency rank or anchored on similar frequent tokens,
        contextual if configured) and the hidden targets l(y) (bit-cipher label codes by frequency rank, or
        one-hot token classes); see `hf_saffu.token_classes`."""
        config = self.config
        ranks = frequency_ranks(counts.cpu())
        anchored = self.recipe.embedding_codes == "anchored"
        if anchored or self.recipe.hidden_targets == "clusters":
            successors, predecessors = self.pair_profiles(ranks.to(self.device))
        if anchored:
            codes = anchored_codes(
                successors, ranks, bit_cipher_codes(config.vocab_size, config.embed_bits), config.embed_bits
            )
            vectors = codes_to_vectors(codes, config.embed_bits).to(self.device)
        else:
            vectors = bit_cipher_vectors(ranks, config.embed_bits).to(self.device)
        if self.recipe.hidden_targets == "clusters":
            self.target_classes = cluster_tokens(predecessors, counts, config.hidden_bits)
            self.label_vectors = torch.nn.functional.one_hot(self.target_classes, config.hidden_bits).to(vectors.dtype)
        else:
            self.label_vectors = bit_cipher_vectors(ranks, config.hidden_bits).to(self.device)
        if self.recipe.contextual_embeddings:
            sums = torch.zeros(config.vocab_size, config.embed_bits, dtype=torch.float64, device=self.device)
            for input_ids, valid, _ in self.iterate("contextual embeddings"):
                for row, row_valid in zip(input_ids, valid, strict=True):
                    accumulate_neighbour_sums(row[row_valid], vectors, self.recipe.contextual_radius, sums)
            self.reduce(sums)
            vectors = contextual_vectors(sums, vectors)
        self.model.model.embeddings.weight.copy_(vectors.to(self.model.model.embeddings.weight.dtype))

    def pair_profiles(self, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Successor and predecessor profiles of every token (`accumulate_profiles`), summed over processes."""
        num_columns = min(PROFILE_COLUMNS, self.config.vocab_size)
        columns = profile_columns(ranks, num_columns)
        successors, predecessors = (
            torch.zeros(self.config.vocab_size, num_columns, dtype=torch.float64, device=self.device) for _ in range(2)
        )
        for input_ids, _, target_weight in self.iterate("pair profiles"):
            accumulate_profiles(input_ids, target_weight, columns, successors, predecessors)
        self.reduce(successors, predecessors)
        return successors, predecessors

    def layer_inputs(self, layer_index: int, input_ids: torch.Tensor, valid: torch.Tensor, ends: torch.Tensor):
        """Inputs of layer `layer_index`: the embeddings through the (already solved) layers below, stacked by the
        model's own `SaffuModel.layer_outputs`."""
        model = self.model.model
        vectors = model.embeddings(input_ids)
        below = islice(model.layer_outputs(vectors, valid, ends, [None] * len(model.layers)), layer_index)
        hidden = vectors
        for hidden, _ in below:  # noqa: B007 (the last layer below's H_t)
            pass
        return model.layer_input(layer_index, hidden)

    def layer_batches(self, layer_index: int, description: str, contexts: list[SaffuContext]):
        """Per batch: the layer's computed contexts (z_t of `contexts` only), the next-token labels and weights."""
        layer = self.model.model.layers[layer_index]
        for input_ids, valid, target_weight in self.iterate(description):
            ends = self.model.model.document_ends(input_ids, valid)
            inputs = self.layer_inputs(layer_index, input_ids, valid, ends)
            computed = layer.context_inputs(inputs, valid, ends, None, contexts)
            yield computed, input_ids[:, 1:], target_weight

    def solve_hidden(self, layer_index: int, contexts: list[SaffuContext], description: str) -> None:
        """U (and b) of the given contexts of a layer: F_U = sum_t z_t^T l(y_t), accumulated per next token
        and mapped through the label embeddings once (`Cooccurrence.map_targets`), or, for one-hot token
        classes, accumulated per class directly."""
        layer: SaffuLayer = self.model.model.layers[layer_index]
        classes = self.target_classes
        width = self.config.vocab_size if classes is None else self.config.hidden_bits
        statistics = [Cooccurrence.zeros(layer.input_dim, width, self.device) for _ in contexts]
        count_features = self.recipe.explicit_hidden_priming == "features"
        features = torch.zeros(len(contexts), dtype=torch.float64, device=self.device)
        start = time.perf_counter()
        for computed, labels, weight in self.layer_batches(layer_index, description, contexts):
            targets = labels if classes is None else classes[labels]
            for index, (context, statistic) in enumerate(zip(contexts, statistics, strict=True)):
                output = computed.outputs[context]
                statistic.add(output.vectors[:, :-1], targets, weight)
                if count_features:
                    features[index] += (output.inputs_behind[:, :-1] * weight).sum()
        self.reduce(*statistics, features)
        for index, (context, statistic) in enumerate(zip(contexts, statistics, strict=True)):
            priming = self.recipe.explicit_hidden_priming
            if count_features:  # K = the mean number of inputs behind z_t
                priming = (features[index] / statistic.num_rows).item()
            self.set_linear(
                context.hidden,
                statistic if classes is not None else statistic.map_targets(self.label_vectors),
                f"layer {layer_index} context {layer.contexts.index(context)} U",
                priming=priming,
            )
        self.timed(f"layer {layer_index} hidden", start)

    def solve_attention(self, layer_index: int) -> None:
        """W and c of every window context from the responsibilities a*_t of the context positions. With a
        pivot channel, the pivot's own evidence already reaches the logits, so the first layer's responsibilities
        go to the other positions (the pivot keeps them only where it is the one valid position)."""
        layer: SaffuLayer = self.model.model.layers[layer_index]
        skip_pivot = self.model.has_pivot_channel and layer_index == 0
        statistics = [Cooccurrence.zeros(window.window, window.window, self.device) for window in layer.windows]
        start = time.perf_counter()
        for computed, labels, weight in self.layer_batches(layer_index, f"layer {layer_index} attention", []):
            targets = self.label_vectors[labels]
            for window, statistic in zip(layer.windows, statistics, strict=True):
                log_hidden = torch.log_softmax(window.hidden(computed.extended[:, :-1]), dim=-1)
                scores = banded_dot(log_hidden, targets, window.window)
                candidates = computed.offset_valid[:, :-1, : window.window]
                if skip_pivot:
                    others = candidates.clone()
                    others[..., 0] = False
                    candidates = torch.where(others.any(dim=-1, keepdim=True), others, candidates)
                responsibilities = torch.softmax(scores.masked_fill(~candidates, float("-inf")), dim=-1)
                similarities = computed.similarities[:, :-1, : window.window]
                statistic.add(similarities, responsibilities, weight)
        self.reduce(*statistics)
        for window, statistic in zip(layer.windows, statistics, strict=True):
            self.set_linear(window.attention, statistic, f"layer {layer_index} window {window.window} W")
        self.timed(f"layer {layer_index} attention", start)

    def set_class_head(self, counts: torch.Tensor) -> None:
        """O and b_O of a head reading ln H_t, from the class codes c(y) = [l_k(y) > 0] (no data pass):

            logits_y = sum_c c(y) . ln h^c_t + ln P(y) - C c(y) . ln pi,     pi = sum_y P(y) l(y)

        For one-hot classes this is naive Bayes over the contexts' class predictions times the class's own
        distribution, P(y | ctx) ~ P(y | k(y)) prod_c h^c(k(y)) / P(k(y))^(C - 1), with
        P(y) = (n_y + alpha) / (N + alpha V) (alpha = explicit_smoothing)."""
        start = time.perf_counter()
        smoothing = self.recipe.explicit_smoothing
        unigram = (counts + smoothing) / (counts.sum() + smoothing * counts.numel())
        labels = self.label_vectors.to(torch.float64)
        codes = (labels > 0).to(torch.float64)
        class_prior = (unigram @ labels).clamp_min(torch.finfo(torch.float64).tiny)  # a class no token is in: 0
        num_contexts, beta = self.model.model.num_contexts, self.recipe.explicit_context_weight
        weight = beta * codes.repeat(1, num_contexts)
        bias = -beta * num_contexts * (codes @ torch.log(class_prior))
        if not self.model.has_pivot_channel:  # with a pivot channel, it carries P(y | pivot) instead of P(y)
            bias += torch.log(unigram)
        self.model.lm_head.weight.copy_(weight.to(self.model.lm_head.weight.dtype))
        self.model.lm_head.bias.copy_(bias.to(self.model.lm_head.bias.dtype))
        self.report.priming_numbers["output O"] = float(num_contexts)
        self.timed("output", start)

    def solve_pivot_head(self) -> None:
        """Q = ln P(y | pivot bits): F_Q = sum_t v_t^T e_{y_t}, solved with K = 1 (a bigram for one-bit codes)."""
        embeddings = self.model.model.embeddings
        statistic = Cooccurrence.zeros(self.config.embed_bits, self.config.vocab_size, self.device)
        start = time.perf_counter()
        for input_ids, _, weight in self.iterate("pivot head"):
            statistic.add(embeddings(input_ids[:, :-1]), input_ids[:, 1:], weight)
        self.reduce(statistic)
        self.set_linear(self.model.pivot_head, statistic, "pivot head Q")
        self.timed("pivot head", start)

    def count_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys x V + y and counts of the pairs of real tokens in one block, merged over the processes."""
        start = time.perf_counter()
        pairs = NgramCounts(self.config.vocab_size)
        for input_ids, _, weight in self.iterate("pivot bigrams"):
            pairs.add(input_ids[:, :-1][weight], input_ids[:, 1:][weight])
        merged = pairs.merged(self.accelerator)
        self.timed("pivot bigrams", start)
        return merged

    def solve_pivot_bigrams(
        self,
        triples: tuple[torch.Tensor, torch.Tensor] | None = None,
        pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """The pivot's bigram channel (`SaffuPivotBigrams`) from the pair counts n_xy (`pairs`, counted by
        `count_pairs` when not given): the closed form of `solve_bigram_channel` over all of them, and the table
        sized (`sized_table`) and filled with the pairs of largest contribution (`strongest_entries`). Under a
        trigram table (`triples`: its counted keys), the bigram level is the lower order of Kneser-Ney: n_xy = the
        continuation count, the number of distinct tokens w seen before x y."""
        vocab_size = self.config.vocab_size
        start = time.perf_counter()
        if triples is None:
            keys, counts = self.count_pairs() if pairs is None else pairs
        else:
            keys, counts = torch.unique(triples[0] % vocab_size**2, return_counts=True)
            counts = counts.to(torch.float64)
        values, bias = solve_bigram_channel(
            keys, counts, vocab_size, self.recipe.explicit_smoothing, self.recipe.explicit_discount is not None
        )
        channel = self.sized_table("pivot_bigrams", len(keys))
        kept, values = strongest_entries(keys, counts, values, len(channel.columns))
        self.report.pivot_bigrams = {"pairs_seen": len(keys), "pairs_kept": len(kept)}
        channel.set_pairs(kept.to(channel.columns.device), values, bias)
        self.timed("pivot bigrams", start)

    def count_triples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (w V + x) V + y and counts of the triples of real tokens in one block, merged over the processes."""
        vocab_size = self.config.vocab_size
        start = time.perf_counter()
        triples = NgramCounts(vocab_size)
        for input_ids, valid, _ in self.iterate("pivot trigrams"):
            real = valid[:, :-2] & valid[:, 1:-1] & valid[:, 2:]
            triples.add(input_ids[:, :-2][real] * vocab_size + input_ids[:, 1:-1][real], input_ids[:, 2:][real])
        merged = triples.merged(self.accelerator)
        self.timed("pivot trigrams", start)
        return merged

    def solve_pivot_trigrams(self, triples: tuple[torch.Tensor, torch.Tensor]) -> None:
        """The trigram table (`SaffuPivotTrigrams`) from the counted `triples`: the closed form of
        `solve_trigram_channel` over the solved bigram table's distribution P2(y | x) for every triple, and the
        table sized (`sized_table`) and filled with the triples of largest contribution (`strongest_entries`)."""
        vocab_size = self.config.vocab_size
        start = time.perf_counter()
        keys, counts = triples
        lower = torch.zeros(len(keys), dtype=torch.float64)
        pivots, nexts = (keys // vocab_size) % vocab_size, keys % vocab_size
        distinct, index = torch.unique(pivots, return_inverse=True)
        channel = self.model.pivot_bigrams
        for first in range(0, len(distinct), 256):  # P2(y | x) row by row, 256 pivots at a time
            tokens = distinct[first : first + 256].to(channel.rows.device)
            zeros = torch.zeros(len(tokens), vocab_size, dtype=channel.values.dtype, device=tokens.device)
            rows = torch.softmax(channel(zeros, tokens).double(), -1).cpu()
            chunk = (index >= first) & (index < first + 256)
            lower[chunk] = rows[index[chunk] - first, nexts[chunk]]
        values = solve_trigram_channel(keys, counts, lower, vocab_size)
        table = self.sized_table("pivot_trigrams", len(keys))
        kept, values = strongest_entries(keys, counts, values, len(table.columns))
        self.report.pivot_trigrams = {"triples_seen": len(keys), "triples_kept": len(kept)}
        table.set_triples(kept.to(channel.rows.device), values)
        self.timed("pivot trigrams", start)

    def sized_table(self, name: str, seen: int) -> torch.nn.Module:
        """The model's table `name` (pivot_bigrams, pivot_trigrams) with the capacity it keeps: with
        `config.pivot_table_mb`, every one of the `seen` entries within what is left of the budget (the bigram
        table is sized first), at least 1, as a new table of that size whose size is written into the config
        (from_pretrained rebuilds the same shapes); without, the table as it is (a fixed size)."""
        table = getattr(self.model, name)
        if self.config.pivot_table_mb is None:
            return table
        if name == "pivot_bigrams":
            self.table_bytes_left = self.config.pivot_table_mb * 2**20
        per_entry = entry_bytes(type(table), table.values.dtype)
        limit = table_limit(name, self.config.vocab_size)
        capacity = max(1, min(seen, int(self.table_bytes_left // per_entry), limit))
        self.table_bytes_left -= capacity * per_entry
        return set_table_capacity(self.model, name, capacity)

    def solve_output(self) -> None:
        """O and b_O: F_O = sum_t H_t^T e_{y_t}, K = C."""
        last = len(self.model.model.layers) - 1
        statistic = Cooccurrence.zeros(self.model.lm_head.in_features, self.config.vocab_size, self.device)
        start = time.perf_counter()
        for input_ids, valid, weight in self.iterate("output layer"):
            ends = self.model.model.document_ends(input_ids, valid)
            inputs = self.layer_inputs(last, input_ids, valid, ends)
            hidden, _ = self.model.model.layers[last](inputs, valid, ends, None)
            statistic.add(hidden[:, :-1], input_ids[:, 1:], weight)
        self.reduce(statistic)
        self.set_linear(self.model.lm_head, statistic, "output O")
        self.timed("output", start)

    def set_linear(
        self, linear: torch.nn.Linear, statistic: Cooccurrence, name: str, priming: float | None = None
    ) -> None:
        """Copy the explicit solution (U, b) into a Linear layer computing x U + b (weight = U^T); `priming`
        overrides the measured priming number (`Cooccurrence.solve`). A Linear without a bias takes U only (its
        inputs have unit L1 norm, K = 1, so b = 0)."""
        weight, bias = statistic.solve(self.recipe.explicit_smoothing, priming, self.recipe.explicit_discount)
        self.report.priming_numbers[name] = statistic.priming_number if priming is None else priming
        linear.weight.copy_(weight.T.to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_(bias.to(linear.bias.dtype))

    @torch.no_grad()
    def run(self) -> WarmStartReport:
        was_training = self.model.training
        self.model.eval()
        start = time.perf_counter()
        counts = self.count_tokens()
        self.set_embeddings(counts)
        self.timed("embeddings", start)
        for index, layer in enumerate(self.model.model.layers):
            for window in layer.windows:
                window.attention.weight.zero_()
                window.attention.bias.zero_()
            self.solve_hidden(index, layer.contexts, f"layer {index} hidden (uniform attention)")
            for _ in range(self.attention_iters if layer.windows else 0):
                self.solve_attention(index)
                self.solve_hidden(index, list(layer.windows), f"layer {index} hidden")
        if self.model.pivot_head is not None:
            self.solve_pivot_head()
        triples = self.count_triples() if self.model.pivot_trigrams is not None else None
        if self.model.pivot_bigrams is not None:
            pairs = self.count_pairs() if triples is None else None
            self.solve_pivot_bigrams(triples, pairs)
            self.report.statistics = table_statistics(counts, triples, pairs)
        if triples is not None:
            self.solve_pivot_trigrams(triples)
        if self.config.log_hidden_head:
            self.set_class_head(counts)
        else:
            self.solve_output()
        self.model.config.warm_started = True
        self.model.train(was_training)
        return self.report


class NgramCounts:
    """Counts of (history, next token) keys h V + y (h: a pivot, or a (previous, pivot) key) with float64 counts; merged
    into the running table whenever the pending keys outgrow it, so memory follows the distinct pairs."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.keys = torch.zeros(0, dtype=torch.long)
        self.counts = torch.zeros(0, dtype=torch.float64)
        self.pending: list[torch.Tensor] = []
        self.pending_size = 0

    def add(self, pivots: torch.Tensor, nexts: torch.Tensor) -> None:
        self.pending.append((pivots.reshape(-1) * self.vocab_size + nexts.reshape(-1)).cpu())
        self.pending_size += self.pending[-1].numel()
        if self.pending_size > max(len(self.keys), 2**20):
            self.compress()

    def compress(self) -> None:
        keys, counts = torch.unique(torch.cat(self.pending), return_counts=True)
        self.keys, self.counts = merge_counts(self.keys, self.counts, keys, counts.to(torch.float64))
        self.pending, self.pending_size = [], 0

    def merged(self, accelerator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, counts) of all processes: each process's table padded to the longest, gathered and merged."""
        if self.pending:
            self.compress()
        if accelerator is None or accelerator.num_processes == 1:
            return self.keys, self.counts
        device = accelerator.device
        keys = accelerator.pad_across_processes(self.keys.to(device), pad_index=-1)
        counts = accelerator.pad_across_processes(self.counts.to(device), pad_index=0)
        keys, counts = accelerator.gather(keys).cpu(), accelerator.gather(counts).cpu()
        real = keys >= 0
        empty = NgramCounts(self.vocab_size)
        return merge_counts(empty.keys, empty.counts, keys[real], counts[real])


def strongest_entries(keys, counts, values, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `capacity` entries of the sorted `keys` that contribute most, still sorted, with their `values`.

    A table's value is the log ratio of the full estimate to the back-off estimate the row falls to without the
    entry, S_xy = ln(P(y | x) / (gamma_x P_lower(y) / n_x)) (`solve_bigram_channel`, `solve_trigram_channel`),
    so the weighted-difference criterion of n-gram pruning (Seymore & Rosenfeld 1996; SRILM's and KenLM's
    pruning are of this family) is

        score = n_xy |ln P(y | x) - ln P_backoff(y | x)| = n_xy S_xy   (n: the level's count, S >= 0)

    the log-likelihood the training data loses when the entry goes (back-off weights held fixed; the softmax
    renormalises each row). Kept entries keep the values solved over all entries. Ties keep the smaller key."""
    if len(keys) <= capacity:
        return keys, values
    scores = counts.to(torch.float64) * values.to(torch.float64)
    kept = torch.sort(torch.argsort(scores, descending=True, stable=True)[:capacity]).values
    return keys[kept], values[kept]


def table_statistics(token_counts: torch.Tensor, triples=None, pairs=None) -> dict[str, torch.Tensor]:
    """The sufficient statistics of the pivot's tables (`hf_saffu.counts`): the token counts, and the keys and
    counts of the triples (with a trigram table; `order` 3) or of the pairs (`order` 2)."""
    keys, counts = triples if triples is not None else pairs
    order = torch.tensor(3 if triples is not None else 2)
    return {"token_counts": token_counts.cpu(), "keys": keys.cpu(), "counts": counts.cpu(), "order": order}


def set_table_capacity(model: SaffuForCausalLM, name: str, capacity: int) -> torch.nn.Module:
    """The model's table `name` with `capacity` entries: a new, empty table when its size differs; the size is
    written into the config (`pivot_bigrams` / `pivot_trigrams`), so a saved model reloads with this shape."""
    table = getattr(model, name)
    if capacity != len(table.columns):
        device, dtype = table.values.device, table.values.dtype
        table = type(table)(model.config.vocab_size, capacity).to(device=device, dtype=dtype)
        setattr(model, name, table)
    setattr(model.config, name, capacity)
    return table


def entry_bytes(table_class: type, dtype: torch.dtype) -> int:
    """Bytes one more entry takes in a pivot table (its per-entry parameters and buffers)."""

    def size(capacity: int) -> int:
        table = table_class(1, capacity).to(dtype)
        return sum(t.numel() * t.element_size() for t in (*table.parameters(), *table.buffers()))

    return size(2) - size(1)


def table_limit(name: str, vocab_size: int) -> int:
    """The most entries a table can hold: one per pair (V^2) or triple (V^3)."""
    return vocab_size ** (2 if name == "pivot_bigrams" else 3)


def merge_counts(keys, counts, more_keys, more_counts) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted unique union of two (keys, counts) tables, counts of equal keys added."""
    union, inverse = torch.unique(torch.cat([keys, more_keys]), return_inverse=True)
    return union, torch.zeros(len(union), dtype=torch.float64).index_add_(0, inverse, torch.cat([counts, more_counts]))


def explicit_warm_start(
    model: SaffuForCausalLM,
    batches: Iterable[Batch],
    attention_iters: int | None = None,
    accelerator=None,
    show_progress: bool = True,
) -> WarmStartReport:
    """Warm-start every sub-layer of `model` explicitly from `batches` with the recipe of its config
    (`SaffuConfig.warm_start_recipe`; `attention_iters`, when given, replaces its `explicit_attention_iters`);
    see `ExplicitWarmStart`."""
    return ExplicitWarmStart(model, batches, attention_iters, accelerator, show_progress).run()
