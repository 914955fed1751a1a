"""Leave-one-out table values for the training positions (docs/DESIGN.md, section 8, "Beyond counting").

The pivot's tables hold interpolated Kneser-Ney estimates from the training data's counts, so on its own training
text a model sees tables that already contain every training trigram: the gradient rewards reading the
memorised counts. Count models answer the same bias with held-out estimates (Kneser-Ney's discounts come from
leave-one-out counts). `TableLeaveOneOut` gives every training position the table values it would have if its
own occurrence had not been counted: the values stay trainable, the trainer adds (value with the occurrence
removed) - (value with it) to the logits of that position (`SaffuForCausalLM.table_leave_one_out`); evaluation
and generation read the plain tables.

For the occurrence (w, x, y) of a position with pivot x, previous token w and next token y (the discounts D1,
D2, D3+ are held fixed, as in Kneser-Ney's own leave-one-out estimate of them):

trigram level (n: triple counts, row h = w x, entries z of the row):
    n'_hz = n_hz - [z = y],   gamma'_h = gamma_h - D(n_hy) + D(n_hy - 1),
    T'_hz = ln(1 + (n'_hz - D(n'_hz)) / (gamma'_h P2'(z | x)))   (0 for every z when gamma'_h = 0: h unseen);
bigram level (c: continuation counts, the number of distinct tokens seen before x z; the occurrence counted in
c_xy only when n_wxy = 1; N(. z): the pivots seen before z, P_c(z) = (N(. z) + alpha) / (sum N + alpha V)):
    c'_xz = c_xz - [z = y] [n_wxy = 1],   gamma'_x = sum_z D(c'_xz),   N'(. y) = N(. y) - [c'_xy = 0],
    S'_xz = ln(1 + (c'_xz - D(c'_xz)) / (gamma'_x P_c'(z))),   b'_y - b_y = ln((N'(. y) + alpha) / (N(. y) + alpha)),
    P2'(z | x) = (c'_xz - D(c'_xz) + gamma'_x P_c'(z)) / c'_x   (P_c'(z) when c'_x = 0).

Exact: the logits of a position equal, up to a constant per position, those of tables solved from the counts
minus that occurrence (tests/test_leave_one_out.py). Approximated: the discounts (fixed); an occurrence whose
triple or pair the tables did not keep (a table over capacity) is left counted. Written for the default order,
`ngram_order` = 3 (the two levels above); other orders are refused.
"""

import torch

from .explicit import count_discounts, kneser_ney_discounts
from .modeling_saffu import SaffuForCausalLM, csr_entries
from .warm_start import ExplicitWarmStart


def lookup(sorted_keys: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, found): where each key sits in `sorted_keys`, and whether it is there."""
    if len(sorted_keys) == 0:
        return torch.zeros_like(keys), torch.zeros_like(keys, dtype=torch.bool)
    index = torch.searchsorted(sorted_keys, keys).clamp_max(len(sorted_keys) - 1)
    return index, sorted_keys[index] == keys


def kneser_ney_value(counts: torch.Tensor, discounts: torch.Tensor, gamma: torch.Tensor, lower: torch.Tensor):
    """ln(1 + (n - D(n)) / (gamma P)), 0 where gamma = 0 (an unseen history)."""
    seen = gamma > 0
    ratio = (counts - count_discounts(discounts, counts)) / torch.where(seen, gamma * lower, 1.0)
    return torch.where(seen, torch.log1p(ratio), 0.0)


class TableLeaveOneOut:
    """Leave-one-out corrections of a warm-started model's bigram and trigram tables (see the module docstring).

    `triple_keys`, `triple_counts`: the triples (w V + x) V + y of the training data and their counts, as the warm
    start counted them (`ExplicitWarmStart.count_ngrams(3)`). Everything else is read from the model's tables and
    config; every stored triple and pair must be among the counted ones (the tables were solved from this data).
    """

    def __init__(self, model: SaffuForCausalLM, triple_keys: torch.Tensor, triple_counts: torch.Tensor):
        bigrams, trigrams = model.pivot_bigrams, model.pivot_trigrams
        if model.config.ngram_order != 3 or model.config.warm_start_recipe.explicit_discount is None:
            raise ValueError(
                "table_leave_one_out needs Kneser-Ney bigram and trigram tables (ngram_order=3 and explicit_discount "
                f"set), got ngram_order={model.config.ngram_order} and explicit_discount="
                f"{model.config.warm_start_recipe.explicit_discount}"
            )
        vocab = self.vocab_size = model.config.vocab_size
        self.smoothing = model.config.warm_start_recipe.explicit_smoothing
        triple_keys, triple_counts = triple_keys.cpu(), triple_counts.cpu().to(torch.float64)
        # bigram table: pairs p = (x, z), continuation counts c_p
        self.pair_rows = bigrams.rows.cpu()
        used = int(self.pair_rows[-1])
        self.pair_columns = bigrams.columns[:used].cpu()
        pair_pivots = torch.repeat_interleave(torch.arange(vocab), self.pair_rows.diff())
        self.pair_keys = pair_pivots * vocab + self.pair_columns
        continuation_keys, continuation = torch.unique(triple_keys % vocab**2, return_counts=True)
        index, found = lookup(continuation_keys, self.pair_keys)
        if not bool(found.all()):
            raise ValueError(
                "table_leave_one_out: the bigram table holds pairs the training data does not: the "
                "tables were not counted from this training data"
            )
        self.pair_counts = continuation[index].to(torch.float64)
        self.pair_discounts = kneser_ney_discounts(self.pair_counts)
        self.pair_gamma = torch.zeros(vocab, dtype=torch.float64).index_add_(
            0, pair_pivots, count_discounts(self.pair_discounts, self.pair_counts)
        )
        self.pivot_totals = torch.zeros(vocab, dtype=torch.float64).index_add_(0, pair_pivots, self.pair_counts)
        self.seen_before = torch.bincount(self.pair_columns, minlength=vocab).to(torch.float64)
        self.continuation_total = float(self.seen_before.sum()) + self.smoothing * vocab
        continuation_p = (self.seen_before + self.smoothing) / self.continuation_total
        self.pair_values = kneser_ney_value(
            self.pair_counts, self.pair_discounts, self.pair_gamma[pair_pivots], continuation_p[self.pair_columns]
        )
        # trigram table: entries e = (h, z), triple counts n_e, lower P2(z | x)
        self.histories = trigrams.histories.cpu()
        self.triple_rows = trigrams.rows.cpu()
        used = int(self.triple_rows[-1])
        self.triple_columns = trigrams.columns[:used].cpu()
        owners = torch.repeat_interleave(torch.arange(len(self.histories)), self.triple_rows.diff())
        self.triple_keys = self.histories[owners] * vocab + self.triple_columns
        index, found = lookup(triple_keys, self.triple_keys)
        if not bool(found.all()):
            raise ValueError(
                "table_leave_one_out: the trigram table holds triples the training data does not: "
                "the tables were not counted from this training data"
            )
        self.triple_counts = triple_counts[index]
        self.triple_discounts = kneser_ney_discounts(self.triple_counts)
        self.triple_gamma = torch.zeros(len(self.histories), dtype=torch.float64).index_add_(
            0, owners, count_discounts(self.triple_discounts, self.triple_counts)
        )
        self.triple_pivots = self.histories[owners] % vocab
        self.triple_pairs, pair_found = lookup(self.pair_keys, self.triple_pivots * vocab + self.triple_columns)
        self.triple_pairs = torch.where(pair_found, self.triple_pairs, -1)
        self.triple_lower = self.lower(self.triple_pivots, self.triple_columns, self.triple_pairs)
        self.triple_values = kneser_ney_value(
            self.triple_counts, self.triple_discounts, self.triple_gamma[owners], self.triple_lower
        )

    def pair_count(self, pairs: torch.Tensor) -> torch.Tensor:
        """c_p, 0 where p = -1 (a pair the bigram table does not hold)."""
        return torch.where(pairs >= 0, self.pair_counts[pairs.clamp_min(0)], 0.0)

    def lower(self, pivots, nexts, pairs, counts=None, gamma=None, totals=None, continuation=None) -> torch.Tensor:
        """P2(z | x) of the bigram table in closed form, (c_xz - D(c_xz) + gamma_x P_c(z)) / c_x (P_c(z) where
        c_x = 0), from the given counts (default: the table's own)."""
        counts = self.pair_count(pairs) if counts is None else counts
        gamma = self.pair_gamma[pivots] if gamma is None else gamma
        totals = self.pivot_totals[pivots] if totals is None else totals
        if continuation is None:
            continuation = (self.seen_before[nexts] + self.smoothing) / self.continuation_total
        discounted = counts - count_discounts(self.pair_discounts, counts)
        return torch.where(totals > 0, (discounted + gamma * continuation) / totals.clamp_min(1.0), continuation)

    @torch.no_grad()
    def corrections(self, pivots: torch.Tensor, previous: torch.Tensor, targets: torch.Tensor):
        """(positions, columns, deltas): what to add to the flat logits (N, V) of positions with pivots x, previous
        tokens w (-1: none) and next tokens y (-100: none) so that they read the leave-one-out tables."""
        vocab = self.vocab_size
        real = (previous >= 0) & (targets >= 0)
        history = previous.clamp_min(0) * vocab + pivots
        entry, found = lookup(self.triple_keys, history * vocab + targets.clamp_min(0))
        positions = torch.nonzero(real & found).squeeze(1)
        entry, x, y = entry[positions], pivots[positions], targets[positions]
        row = torch.searchsorted(self.histories, history[positions])
        count = self.triple_counts[entry]
        # bigram level, where the occurrence was the only one of its triple
        pair, pair_found = lookup(self.pair_keys, x * vocab + y)
        thinned = (count == 1) & pair_found
        pair = torch.where(thinned, pair, -1)
        pair_count = self.pair_count(pair)
        emptied = thinned & (pair_count == 1)
        pair_gamma = self.pair_gamma[x] - torch.where(
            thinned,
            count_discounts(self.pair_discounts, pair_count) - count_discounts(self.pair_discounts, pair_count - 1),
            0.0,
        )
        pivot_total = self.pivot_totals[x] - thinned.double()
        total = self.continuation_total - emptied.double()

        def continuation(owner, nexts):  # P_c'(z) of the positions `owner`
            seen = self.seen_before[nexts] - (emptied[owner] & (nexts == y[owner])).double()
            return (seen + self.smoothing) / total[owner]

        # a count above 3 keeps its discount D3+ (gamma unchanged): only the entry itself changes
        whole = thinned & (pair_count <= 3)
        owner, pair_entry = csr_entries(
            torch.where(whole, self.pair_rows[x], pair.clamp_min(0)),
            torch.where(whole, self.pair_rows[x + 1] - self.pair_rows[x], thinned.long()),
        )
        nexts = self.pair_columns[pair_entry]
        counts = self.pair_counts[pair_entry] - (pair_entry == pair[owner]).double()
        bigram_delta = (
            kneser_ney_value(counts, self.pair_discounts, pair_gamma[owner], continuation(owner, nexts))
            - self.pair_values[pair_entry]
        )
        seen_y = self.seen_before[y]
        bias_delta = torch.log((seen_y - 1 + self.smoothing) / (seen_y + self.smoothing))
        # trigram level
        whole = count <= 3
        owner_t, triple_entry = csr_entries(
            torch.where(whole, self.triple_rows[row], entry),
            torch.where(whole, self.triple_rows[row + 1] - self.triple_rows[row], 1),
        )
        triple_counts = self.triple_counts[triple_entry] - (triple_entry == entry[owner_t]).double()
        triple_gamma = self.triple_gamma[row] - (
            count_discounts(self.triple_discounts, count) - count_discounts(self.triple_discounts, count - 1)
        )
        z, z_pair = self.triple_columns[triple_entry], self.triple_pairs[triple_entry]
        thinned_t = thinned[owner_t]
        lower = torch.where(
            thinned_t,
            self.lower(
                x[owner_t],
                z,
                z_pair,
                counts=self.pair_count(z_pair) - ((z_pair == pair[owner_t]) & thinned_t).double(),
                gamma=pair_gamma[owner_t],
                totals=pivot_total[owner_t],
                continuation=continuation(owner_t, z),
            ),
            self.triple_lower[triple_entry],
        )
        trigram_delta = kneser_ney_value(triple_counts, self.triple_discounts, triple_gamma[owner_t], lower)
        trigram_delta = trigram_delta - self.triple_values[triple_entry]
        emptied_at = torch.nonzero(emptied).squeeze(1)
        return (
            torch.cat([positions[owner], positions[emptied_at], positions[owner_t]]),
            torch.cat([nexts, y[emptied_at], z]),
            torch.cat([bigram_delta, bias_delta[emptied_at], trigram_delta]),
        )

    def __call__(
        self, logits: torch.Tensor, pivots: torch.Tensor, previous: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """`logits` (batch, T, V) of a training batch plus the leave-one-out corrections of every position whose
        next token (labels[:, t + 1], -100: none) is known; differentiable in `logits`. `previous`: the model's
        `previous_tokens` (batch, T, >= 1), of which the trigrams read the first."""
        targets = torch.cat([labels[:, 1:], labels.new_full((len(labels), 1), -100)], dim=1).reshape(-1).cpu()
        previous = previous[..., 0].reshape(-1).cpu()
        positions, columns, deltas = self.corrections(pivots.reshape(-1).cpu(), previous, targets)
        flat = logits.reshape(-1, logits.shape[-1])
        device = logits.device
        flat = flat.index_put(
            (positions.to(device), columns.to(device)), deltas.to(device, logits.dtype), accumulate=True
        )
        return flat.view(logits.shape)


def table_leave_one_out(model: SaffuForCausalLM, batches, accelerator=None, statistics=None) -> TableLeaveOneOut:
    """The leave-one-out corrections of `model`'s tables for training on `batches` (the warm start's data):
    from the triples the warm start counted (`statistics`, `WarmStartReport.statistics`, when it ran in this
    process), else counted again from `batches`."""
    if statistics and int(statistics["order"]) == 3:
        return TableLeaveOneOut(model, statistics["keys"], statistics["counts"])
    keys, counts = ExplicitWarmStart(model, batches, accelerator=accelerator, show_progress=False).count_ngrams(3)
    return TableLeaveOneOut(model, keys, counts)


class DirectPathLeaveOneOut:
    """Leave-one-out values of the neural word model's direct path (`SaffuNeuralMixture`, D) at the training positions.

    D is the explicit solution from F = sum_t u_t^T e_{y_t}: with a discount delta, D_iy = ln F'_iy,
    F' = max(F - delta, 0) + (R + alpha) pi (`hf_saffu.explicit.discounted_counts`; F + alpha without). A training
    position's own u_t is in F_{:, y_t}, so its target's logit sum_i u_ti D_iy is memorised; without it,

        logit'_y = logit_y + sum_i u_ti (ln F'_iy[F_iy - u_ti] - ln F'_iy)

    added to the target's logit (R, pi and the other columns held fixed: a position moves one column of F). With
    token classes, D^c is solved from the class columns F^c_{:, k} = sum_{k(y) = k} F_{:, y} and its target class's
    logit moves the same way (`classes`: a second `DirectPathLeaveOneOut` on F^c = F M, M = `class_members`)."""

    def __init__(self, counts: torch.Tensor, smoothing: float, discount: float | None, class_members=None):
        counts = counts.to(torch.float64)
        self.counts = counts  # F, kept so a checkpoint can save it (`ExplicitTrainer`: a resume reads the same F)
        self.discount = discount
        if discount is None:
            self.backoff_rows, self.marginal = torch.full((counts.shape[0],), smoothing), torch.ones(counts.shape[1])
        else:
            column_mass = counts.sum(dim=0)
            self.marginal = ((column_mass + smoothing) / (column_mass.sum() + smoothing * counts.shape[1])).float()
            self.backoff_rows = (counts.clamp(max=discount).sum(dim=1) + smoothing).float()
        self.counts_by_target = counts.T.float().contiguous()  # (V, D): a target's column of F as a row
        self.classes = None
        if class_members is not None:  # (V, C) one-hot rows: F^c = F M
            self.classes = DirectPathLeaveOneOut(counts @ class_members.to(counts.dtype), smoothing, discount)

    def smoothed(self, counts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """F'_iy for the rows `counts` (..., D) of F at targets y."""
        backoff = self.backoff_rows * self.marginal[targets][:, None]
        if self.discount is None:
            return counts + backoff
        return (counts - self.discount).clamp_min(0) + backoff

    def change(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logit'_y - logit_y at each position (`inputs` u_t (..., D), `targets` (...), -100: none, change 0)."""
        known = targets != -100
        target = targets[known]
        own = inputs[known].detach().float()
        counts = self.counts_by_target[target]
        without = self.smoothed((counts - own).clamp_min(0), target)
        moved = (own * (torch.log(without) - torch.log(self.smoothed(counts, target)))).sum(-1)
        changes = torch.zeros(targets.shape, dtype=inputs.dtype, device=inputs.device)
        return changes.index_put((known,), moved.to(inputs.dtype))

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, class_targets=None):
        """The changes of each target's word logit and (with classes) of its class's logit: `SaffuNeuralMixture`'s
        `changes`; `targets` (batch, T): the model's `loss_targets`; `class_targets`: their classes k(y)."""
        if self.classes is None:
            return self.change(inputs, targets), None
        return self.change(inputs, targets), self.classes.change(inputs, class_targets)


def direct_path_leave_one_out(model: SaffuForCausalLM, batches, accelerator=None, counts=None) -> DirectPathLeaveOneOut:
    """The leave-one-out corrections of `model`'s neural direct path for training on `batches` (the warm start's
    data): from the co-occurrences the warm start counted (`counts`: `WarmStartReport.direct_path_counts` when it
    ran in this process, or, resuming, the checkpoint's copy of them), else counted again from the model's inputs
    u_t (a model warm-started before, not trained since)."""
    if counts is None:
        with torch.no_grad():
            counter = ExplicitWarmStart(model, batches, accelerator=accelerator, show_progress=False)
            counts = counter.count_neural_inputs().counts
    recipe = model.config.warm_start_recipe
    mixture = model.neural_mixture
    members = mixture.class_members().cpu() if mixture.num_classes else None
    return DirectPathLeaveOneOut(counts, recipe.explicit_smoothing, recipe.explicit_discount, members)
