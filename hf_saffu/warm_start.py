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
3. the pivot's channel: by default its n-gram tables of orders 2 ... `ngram_order` (3: the bigram table and the
   (previous, pivot) trigram table over it), interpolated Kneser-Ney from one count of the top order's n-grams,
   each level over the one below (`solve_tables`; `hf_saffu.explicit.solve_bigram_channel`, `solve_ngram_channel`);
   optionally the pivot head instead (`pivot_head`): F_Q = sum_t v_t^T e_{y_t}, Q = ln F_Q (K = 1);
4. the head: with `log_hidden_head`, O and b_O in closed form from the class codes (`set_class_head`, no
   data pass); otherwise F_O = sum_t H_t^T e_{y_t}, solved with K = mean ||H_t||_1 = C. H_t is the last layer's, or
   the first's with `upper_layers="neural"` (`config.head_layer`), as for the neural word model's direct path.

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
from .explicit import (
    Cooccurrence,
    ExplicitStatisticsError,
    check_statistics,
    solve_bigram_channel,
    solve_ngram_channel,
)
from .modeling_saffu import (
    SaffuContext,
    SaffuDocumentContext,
    SaffuForCausalLM,
    SaffuLayer,
    SaffuWindowContext,
    banded_dot,
    new_table,
    previous_tokens,
    table_name,
)
from .token_classes import accumulate_profiles, anchored_codes, cluster_tokens, profile_columns

PROFILE_COLUMNS = 1024  # width of the pair profiles (the rarer tokens share the last column)

Batch = dict[str, torch.Tensor]


# The kinds of context whose z_t are convex mixtures of the layer's inputs (attention weights, document means): finite
# and non-negative when the inputs are, so the warm start checks the inputs once, not every z_t (a registered kind's
# z_t are checked)
CONVEX_CONTEXTS = (SaffuWindowContext, SaffuDocumentContext)


@dataclass
class WarmStartReport:
    """What the warm start did: tokens read per pass, seconds per step and the priming numbers."""

    tokens: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    priming_numbers: dict[str, float] = field(default_factory=dict)
    tables: dict[int, dict[str, int]] = field(default_factory=dict)  # per order: n-grams "seen" and "kept"
    statistics: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # `table_statistics`
    direct_path_counts: torch.Tensor | None = field(default=None, repr=False)  # F of `count_neural_inputs`

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def pivot_bigrams(self) -> dict[str, int]:
        """The bigram table's pairs seen and kept (`tables[2]`, as the results files name them)."""
        return {f"pairs_{what}": number for what, number in self.tables.get(2, {}).items()}

    @property
    def pivot_trigrams(self) -> dict[str, int]:
        """The trigram table's triples seen and kept (`tables[3]`, as the results files name them)."""
        return {f"triples_{what}": number for what, number in self.tables.get(3, {}).items()}


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
        # What the passes keep in memory, within recipe.warm_start_cache_mb (`room`, bytes): the batches read by the
        # first pass (`iterate`), then the head layer's z_t per batch from its hidden pass (`solve_hidden`)
        self.room = self.recipe.warm_start_cache_mb * 2**20
        self.read: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.kept: list | None = None

    # -- data -------------------------------------------------------------------------------------

    def iterate(self, description: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(input_ids, valid, target_weight) per batch; target_weight[t] = 1 where t and t + 1 are real. The first
        pass keeps the batches it reads when they fit in `room`, and the later passes read them from memory."""
        reading, room = self.read is None, self.room
        read = [] if reading else None
        for batch in tqdm(
            self.batches if reading else self.read, desc=f"warm start: {description}", disable=not self.show_progress
        ):
            if reading:
                input_ids = batch["input_ids"].to(self.device)
                mask = batch.get("attention_mask")
                valid = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.to(self.device).bool()
                room -= tensor_bytes(input_ids, valid)
                if room < 0:
                    read = None  # past the budget: every pass reads the data
                elif read is not None:
                    read.append((input_ids, valid))
            else:
                input_ids, valid = batch
            yield input_ids, valid, valid[:, :-1] & valid[:, 1:]
        if reading:  # what did not fit once never will: nothing more is kept
            self.read, self.room = (read, room) if read is not None else (None, 0.0)

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
        mixture = self.model.neural_mixture
        mixture_classes = mixture.num_classes if mixture is not None else 0
        if anchored or self.recipe.hidden_targets == "clusters" or mixture_classes:
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
        if mixture_classes:  # the neural word model's output classes: the hidden targets' when they are the same
            same = self.recipe.hidden_targets == "clusters" and mixture_classes == config.hidden_bits
            classes = self.target_classes if same else cluster_tokens(predecessors, counts, mixture_classes)
            mixture.token_classes.copy_(classes)
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

    def layer_batches(
        self, layer_index: int, description: str, contexts: list[SaffuContext], need_similarities: bool = False
    ):
        """Per batch: the tokens, the layer's computed contexts (z_t of `contexts` only) and the target weights.
        Unless the similarities s_t are needed, while every window's attention is uniform (W = 0, c = 0: a_t =
        softmax(s_t W + c) whatever s_t) the windows' z_t are their inputs' means and s_t are not computed."""
        layer = self.model.model.layers[layer_index]
        attention = [parameter for window in layer.windows for parameter in window.attention.parameters()]
        uniform = not need_similarities and not any(parameter.any() for parameter in attention)
        for input_ids, valid, target_weight in self.iterate(description):
            ends = self.model.model.document_ends(input_ids, valid)
            inputs = self.layer_inputs(layer_index, input_ids, valid, ends)
            computed = layer.context_inputs(inputs, valid, ends, None, contexts, uniform_attention=uniform)
            yield input_ids, computed, target_weight

    def solve_hidden(
        self, layer_index: int, contexts: list[SaffuContext], description: str, keep: bool = False
    ) -> None:
        """U (and b) of the given contexts of a layer: F_U = sum_t z_t^T l(y_t), accumulated per next token
        and mapped through the label embeddings once (`Cooccurrence.map_targets`), or, for one-hot token
        classes, accumulated per class directly. `keep`: keep each batch's tokens and z_t (`self.kept`) within what is
        left of `warm_start_cache_mb`, for the passes that read H_t (`head_hidden`)."""
        layer: SaffuLayer = self.model.model.layers[layer_index]
        classes = self.target_classes
        width = self.config.vocab_size if classes is None else self.config.hidden_bits
        statistics = [Cooccurrence.zeros(layer.input_dim, width, self.device) for _ in contexts]
        count_features = self.recipe.explicit_hidden_priming == "features"
        features = torch.zeros(len(contexts), dtype=torch.float64, device=self.device)
        if layer_index == 0:  # the windows' and the document's z_t mix the layer's inputs convexly; above, softmaxes
            check_statistics("explicit-solution inputs", self.model.model.embeddings.weight)
        trusted = [isinstance(context, CONVEX_CONTEXTS) for context in contexts]
        room = self.room if keep else 0.0
        kept = [] if room > 0 else None
        start = time.perf_counter()
        for input_ids, computed, weight in self.layer_batches(layer_index, description, contexts):
            vectors = {context: output.vectors for context, output in computed.outputs.items()}
            if kept is not None:
                kept.append((input_ids, computed.valid, weight, vectors))
                room -= tensor_bytes(input_ids, *vectors.values())
                if room < 0:
                    kept = None  # past the budget: the passes that read H_t compute them again
            labels = input_ids[:, 1:]
            targets = labels if classes is None else classes[labels]
            for index, (context, statistic) in enumerate(zip(contexts, statistics, strict=True)):
                output = computed.outputs[context]
                statistic.add(output.vectors[:, :-1], targets, weight, trusted_inputs=trusted[index])
                if count_features:
                    features[index] += (output.inputs_behind[:, :-1] * weight).sum()
        if keep:
            self.kept = kept
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
        batches = self.layer_batches(layer_index, f"layer {layer_index} attention", [], need_similarities=True)
        for input_ids, computed, weight in batches:
            targets = self.label_vectors[input_ids[:, 1:]]
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

    def count_neural_inputs(self) -> Cooccurrence:
        """F = sum_t u_t^T e_{y_t} of the neural word model's direct inputs u_t = [H_t, v_t, v_{t-1}]
        (`SaffuForCausalLM.neural_inputs`, `SaffuNeuralMixture.direct_inputs`), over the (all-process) data. The H_t
        block is added position by position; the code blocks from the counts N_j(x, y) of the pairs (x_{t-j}, y_t),
        j = 0, 1 (`NgramCounts`), as F_{v_{t-j}} = V^T N_j (V: every token's code, v = 0 where x_{t-j} is unknown; a
        sparse product), so a pass adds H_t's columns only."""
        model, vocab_size = self.model, self.config.vocab_size
        codes = model.model.input_vectors(torch.arange(vocab_size, device=self.device)).detach().double()
        check_statistics("explicit-solution inputs", codes)
        hidden_dim = model.neural_mixture.direct_weight.shape[0] - 2 * codes.shape[1]
        statistic = Cooccurrence.zeros(hidden_dim, vocab_size, self.device)
        pairs = [NgramCounts(vocab_size) for _ in range(2)]
        for input_ids, valid, weight, hidden in self.head_hidden("neural word model"):
            statistic.add(hidden[:, :-1], input_ids[:, 1:], weight, trusted_inputs=True)  # softmaxes
            previous = previous_tokens(input_ids, valid.long(), None)[..., 0]
            for counts, tokens in zip(pairs, (input_ids, previous), strict=True):
                known = weight & (tokens[:, :-1] >= 0)
                counts.add(tokens[:, :-1][known], input_ids[:, 1:][known])
        self.reduce(statistic)
        blocks = []
        for counts in pairs:
            keys, numbers = (tensor.to(self.device) for tensor in counts.merged(self.accelerator))
            firsts, nexts = keys // vocab_size, keys % vocab_size
            pair_counts = torch.sparse_coo_tensor(  # N_j^T, (next, first)
                torch.stack([nexts, firsts]), numbers, (vocab_size, vocab_size), check_invariants=False
            )
            blocks.append(torch.sparse.mm(pair_counts, codes))
            statistic.input_mass += numbers @ codes.sum(1)[firsts]
        transposed = torch.cat([statistic.transposed_counts, *blocks], dim=1)
        return Cooccurrence(transposed, statistic.input_mass, statistic.num_rows)

    def head_hidden(self, description: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(input_ids, valid, target_weight, H_t of the head's layer `config.head_layer`) per batch: from the z_t that
        layer's hidden pass kept (`solve_hidden`), else from the data."""
        head = self.config.head_layer
        layer = self.model.model.layers[head]
        if self.kept is not None:
            for input_ids, valid, weight, vectors in tqdm(
                self.kept, desc=f"warm start: {description} (kept z_t)", disable=not self.show_progress
            ):
                yield input_ids, valid, weight, layer.hidden_distributions(vectors)
            return
        for input_ids, computed, weight in self.layer_batches(head, description, layer.contexts):
            vectors = {context: output.vectors for context, output in computed.outputs.items()}
            yield input_ids, computed.valid, weight, layer.hidden_distributions(vectors)

    def solve_neural_mixture(self) -> None:
        """The neural word model's direct path D, b_W: the explicit solution of softmax(u_t D + b_W) from the
        co-occurrences of its inputs with the next token (`count_neural_inputs`; K = mean ||u_t||_1)."""
        start = time.perf_counter()
        statistic = self.count_neural_inputs()
        self.report.direct_path_counts = statistic.counts
        weight, bias = statistic.solve(self.recipe.explicit_smoothing, None, self.recipe.explicit_discount)
        self.report.priming_numbers["neural word model"] = statistic.priming_number
        mixture = self.model.neural_mixture
        mixture.direct_weight.copy_(weight.to(mixture.direct_weight.dtype))
        mixture.word_bias.copy_(bias.to(mixture.word_bias.dtype))
        if mixture.num_classes:  # D^c, b^c: the same solution on the class columns F^c
            classes = statistic.map_targets(mixture.class_members())
            weight, bias = classes.solve(self.recipe.explicit_smoothing, None, self.recipe.explicit_discount)
            mixture.class_direct_weight.copy_(weight.to(mixture.class_direct_weight.dtype))
            mixture.class_bias.copy_(bias.to(mixture.class_bias.dtype))
        self.timed("neural word model", start)

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

    def count_ngrams(self, order: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys h V + y and counts of the n-grams of `order` of real tokens inside one block (h: the key of the first
        order - 1 tokens, `history_keys`), merged over the processes."""
        vocab_size = self.config.vocab_size
        start = time.perf_counter()
        ngrams = NgramCounts(vocab_size)
        for input_ids, valid, _ in self.iterate(table_step(order)):
            length = input_ids.shape[1] - order + 1
            if length < 1:
                continue
            histories, real = input_ids[:, :length], valid[:, :length]
            for i in range(1, order):
                real = real & valid[:, i : i + length]
                if i < order - 1:
                    histories = histories * vocab_size + input_ids[:, i : i + length]
            ngrams.add(histories[real], input_ids[:, order - 1 :][real])
        merged = ngrams.merged(self.accelerator)
        self.timed(table_step(order), start)
        return merged

    def solve_tables(self, ngrams: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Every n-gram table, orders 2 ... ngram_order, from the counted n-grams of the top order (`count_ngrams`):
        the top level reads their counts, every lower level its continuation counts, as Kneser-Ney does (the number
        of distinct tokens seen before each shorter n-gram, from the distinct n-grams one order up); each level is
        solved over the one below it (`solve_table`)."""
        vocab_size, top = self.config.vocab_size, self.config.ngram_order
        levels = {top: ngrams}
        for order in range(top - 1, 1, -1):
            keys, counts = torch.unique(levels[order + 1][0] % vocab_size**order, return_counts=True)
            levels[order] = (keys, counts.to(torch.float64))
        for order in range(2, top + 1):
            self.solve_table(order, *levels[order])

    def solve_table(self, order: int, keys: torch.Tensor, counts: torch.Tensor) -> None:
        """The table of `order` from its n-gram `keys` and counts: the closed form over all of them (order 2:
        `solve_bigram_channel`, the bias and the pairs; above: `solve_ngram_channel` over the distribution of the
        levels below, `lower_probabilities`), the table sized (`sized_table`) and filled with the n-grams of largest
        contribution (`strongest_entries`)."""
        vocab_size = self.config.vocab_size
        start = time.perf_counter()
        if order == 2:
            values, bias = solve_bigram_channel(
                keys, counts, vocab_size, self.recipe.explicit_smoothing, self.recipe.explicit_discount is not None
            )
        else:
            values = solve_ngram_channel(keys, counts, self.lower_probabilities(keys, order), vocab_size)
        table = self.sized_table(order, len(keys))
        kept, values = strongest_entries(keys, counts, values, len(table.columns))
        self.report.tables[order] = {"seen": len(keys), "kept": len(kept)}
        if order == 2:
            table.set_pairs(kept.to(table.columns.device), values, bias)
        else:
            table.set_entries(kept.to(table.columns.device), values)
        self.timed(table_step(order), start)

    def lower_probabilities(self, keys: torch.Tensor, order: int) -> torch.Tensor:
        """P_{n-1}(y | h') of every n-gram h V + y (`order` n), read from the solved tables below n: softmax of the
        bigram logits of the pivot plus the corrections of orders 3 ... n - 1 (h': the last n - 2 tokens of h)."""
        vocab_size = self.config.vocab_size
        lower = torch.zeros(len(keys), dtype=torch.float64)
        shorter, nexts = (keys // vocab_size) % vocab_size ** (order - 2), keys % vocab_size
        distinct, index = torch.unique(shorter, return_inverse=True)
        bigrams = self.model.pivot_bigrams
        for first in range(0, len(distinct), 256):  # row by row, 256 histories at a time
            histories = distinct[first : first + 256].to(bigrams.rows.device)
            zeros = torch.zeros(len(histories), vocab_size, dtype=bigrams.values.dtype, device=histories.device)
            logits = bigrams(zeros, histories % vocab_size)
            for table in self.model.ngram_tables[1 : order - 2]:  # orders 3 ... n - 1
                logits = table(logits, histories % vocab_size ** (table.order - 1))
            rows = torch.softmax(logits.double(), -1).cpu()
            chunk = (index >= first) & (index < first + 256)
            lower[chunk] = rows[index[chunk] - first, nexts[chunk]]
        return lower

    def sized_table(self, order: int, seen: int) -> torch.nn.Module:
        """The model's table of `order` with the capacity it keeps: with `config.pivot_table_mb`, every one of the
        `seen` entries within what is left of the budget (the lower orders are sized first), at least 1, as a new
        table of that size whose size is written into the config (from_pretrained rebuilds the same shapes);
        without, the table as it is (a fixed size)."""
        table = getattr(self.model, table_name(order))
        if self.config.pivot_table_mb is None:
            return table
        if order == 2:
            self.table_bytes_left = self.config.pivot_table_mb * 2**20
        per_entry = entry_bytes(order, table.values.dtype)
        capacity = max(1, min(seen, int(self.table_bytes_left // per_entry), self.config.vocab_size**order))
        self.table_bytes_left -= capacity * per_entry
        return set_table_capacity(self.model, order, capacity)

    def solve_output(self) -> None:
        """O and b_O: F_O = sum_t H_t^T e_{y_t}, K = C."""
        statistic = Cooccurrence.zeros(self.model.lm_head.in_features, self.config.vocab_size, self.device)
        start = time.perf_counter()
        for input_ids, _, weight, hidden in self.head_hidden("output layer"):
            statistic.add(hidden[:, :-1], input_ids[:, 1:], weight, trusted_inputs=True)  # softmaxes
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
        layers = self.model.model.layers
        for index, layer in enumerate(layers):
            for window in layer.windows:
                window.attention.weight.zero_()
                window.attention.bias.zero_()
            final = index == self.config.head_layer and not (self.attention_iters and layer.windows)  # z_t as they stay
            self.solve_hidden(index, layer.contexts, f"layer {index} hidden (uniform attention)", keep=final)
            for _ in range(self.attention_iters if layer.windows else 0):
                self.solve_attention(index)
                self.solve_hidden(index, list(layer.windows), f"layer {index} hidden")
        if self.model.pivot_head is not None:
            self.solve_pivot_head()
        if self.model.ngram_tables:
            ngrams = self.count_ngrams(self.config.ngram_order)
            self.solve_tables(ngrams)
            self.report.statistics = table_statistics(counts, ngrams, self.config.ngram_order)
        if self.config.log_hidden_head:
            self.set_class_head(counts)
        else:
            self.solve_output()
        if self.model.neural_mixture is not None:
            self.solve_neural_mixture()
        self.kept = None
        self.model.config.warm_started = True
        self.model.train(was_training)
        return self.report


class NgramCounts:
    """Counts of (history, next token) keys h V + y (h: the key of the n - 1 tokens before y) with float64 counts;
    merged into the running table whenever the pending keys outgrow it, so memory follows the distinct n-grams."""

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
    entry, S_xy = ln(P(y | x) / (gamma_x P_lower(y) / n_x)) (`solve_ngram_channel`, every order),
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


def table_statistics(token_counts: torch.Tensor, ngrams, order: int) -> dict[str, torch.Tensor]:
    """The sufficient statistics of the pivot's tables (`hf_saffu.counts`): the token counts, and the keys and counts
    of the n-grams of the top `order` (every lower level's continuation counts follow from them)."""
    keys, counts = ngrams
    return {
        "token_counts": token_counts.cpu(),
        "keys": keys.cpu(),
        "counts": counts.cpu(),
        "order": torch.tensor(order),
    }


def set_table_capacity(model: SaffuForCausalLM, order: int, capacity: int) -> torch.nn.Module:
    """The model's table of `order` with `capacity` entries: a new, empty table when its size differs; the size is
    written into the config (`ngram_capacities`), so a saved model reloads with this shape."""
    name = table_name(order)
    table = getattr(model, name)
    if capacity != len(table.columns):
        device, dtype = table.values.device, table.values.dtype
        table = new_table(order, model.config.vocab_size, capacity).to(device=device, dtype=dtype)
        setattr(model, name, table)
    capacities = list(model.config.ngram_capacities)
    capacities[order - 2] = capacity
    model.config.ngram_capacities = capacities
    return table


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """The bytes the tensors' elements take."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def entry_bytes(order: int, dtype: torch.dtype) -> int:
    """Bytes one more entry takes in a pivot table of `order` (its per-entry parameters and buffers)."""

    def size(capacity: int) -> int:
        table = new_table(order, 1, capacity).to(dtype)
        return tensor_bytes(*table.parameters(), *table.buffers())

    return size(2) - size(1)


def table_step(order: int) -> str:
    """The step that counts and solves the table of `order`: pivot bigrams, pivot trigrams, pivot 4grams, ..."""
    return table_name(order).replace("_", " ")


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
