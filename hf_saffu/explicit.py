"""Explicit (closed-form) solutions of single softmax layers on non-negative inputs.

Williams & Zhao, "Reducing the Need for Backpropagation and Discovering Better Optima With Explicit
Optimizations of Neural Networks" (arXiv 2311.07498). A layer p = softmax(x U + b), x >= 0 of
dimension D, N outputs, trained with cross-entropy against targets y (one-hot or distributions), has
the loss gradient X^T (P - Y). Everything its optimum needs is the generalised co-occurrence matrix

    F = sum_m x_m^T y_m                              (D x N, float64, one pass; a plain sum)

and the priming number K = mean_m ||x_m||_1. The explicit solution is

    U_ij = ln(F_ij + alpha),    b_j = -(K - 1) ln phi_j,    phi_j = sum_i (F_ij + alpha)

exact (stationary) for one-hot inputs (K = 1: each row's softmax is the empirical P(j | i)) and
near-optimal for K > 1 (naive Bayes: P(j | x) ~ P(j)^(1-K) prod_k P(x_k, j)). alpha > 0 keeps every
logarithm finite.
"""

import math
from dataclasses import dataclass

import torch


class ExplicitStatisticsError(ValueError):
    """Co-occurrence statistics that cannot give a finite explicit solution."""


def check_statistics(name: str, values: torch.Tensor) -> None:
    """Raise an `ExplicitStatisticsError` if `values` hold NaN, inf or negative entries (one pass: the
    extremes of a tensor are NaN if any entry is)."""
    if values.numel() == 0:
        return
    smallest, largest = (v.item() for v in torch.aminmax(values.detach()))
    if not (math.isfinite(smallest) and math.isfinite(largest)):
        raise ExplicitStatisticsError(f"{name} holds non-finite values (NaN or inf): the inputs were not finite")
    if smallest < 0:
        raise ExplicitStatisticsError(
            f"{name} holds negative values (min {smallest:.4g}): "
            "explicit solutions need non-negative inputs and targets"
        )


CHUNK_BYTES = 8 << 20


@dataclass
class Cooccurrence:
    """Streaming accumulator of F = sum_m x_m^T y_m and of the priming number K = mean ||x_m||_1.

    `add` takes a batch of inputs (M, D) and targets, either class ids (M,) or distributions (M, N);
    rows with weight 0 (padding) are skipped. Sums are float64 so shards can be added up across
    processes (`all_reduce`) before every process solves identically.
    """

    transposed_counts: torch.Tensor  # F^T, (N, D) float64 (rows indexed by the target: fast index_add)
    input_mass: torch.Tensor  # sum_m ||x_m||_1, () float64
    num_rows: torch.Tensor  # M, () float64

    @classmethod
    def zeros(cls, input_dim: int, output_dim: int, device: torch.device | str = "cpu") -> "Cooccurrence":
        zeros = torch.zeros((), dtype=torch.float64, device=device)
        return cls(torch.zeros(output_dim, input_dim, dtype=torch.float64, device=device), zeros.clone(), zeros.clone())

    @property
    def counts(self) -> torch.Tensor:
        """F, (D, N)."""
        return self.transposed_counts.T

    def add(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
        trusted_inputs: bool = False,
    ) -> None:
        """F += X^T Y (rows scaled by `weights`, e.g. a 0/1 mask), ||x||_1 and M accumulated likewise; in blocks of
        rows whose float64 copies take at most `CHUNK_BYTES` (a larger temporary is fresh memory from the system
        each time, past glibc's mmap threshold: converting a pass of the warm start took 5x as long). The inputs are
        checked (finite, >= 0) unless the caller vouches for them (`trusted_inputs`: softmaxes, or convex mixtures
        of checked vectors), which saves a pass over them."""
        if not trusted_inputs:
            check_statistics("explicit-solution inputs", inputs)
        inputs = inputs.reshape(-1, inputs.shape[-1])
        distributions = targets.is_floating_point()
        if distributions:
            check_statistics("explicit-solution targets", targets)
            targets = targets.reshape(-1, targets.shape[-1])
        else:
            targets = targets.reshape(-1).to(torch.int64)
        if weights is not None:
            check_statistics("explicit-solution row weights", weights)
            weights = weights.reshape(-1).to(torch.float64)
        step = max(1, CHUNK_BYTES // (8 * inputs.shape[-1]))
        for start in range(0, inputs.shape[0], step):
            rows = slice(start, start + step)
            # a float64 copy scaled in place: the values of float32 * float64 by promotion, which torch computes 2-4x
            # slower (a float64 input is copied before scaling, never scaled in place)
            block = inputs[rows].to(torch.float64, copy=weights is not None)
            if weights is not None:
                block.mul_(weights[rows, None])
            if distributions:
                self.transposed_counts.addmm_(targets[rows].to(torch.float64).T, block)
            else:
                self.transposed_counts.index_add_(0, targets[rows], block)
            self.input_mass += block.sum()
        self.num_rows += weights.sum() if weights is not None else inputs.shape[0]

    def map_targets(self, target_vectors: torch.Tensor) -> "Cooccurrence":
        """Statistics for targets l(y) from statistics for class ids y, by linearity:

            sum_m x_m^T l(y_m) = sum_y (sum_{m: y_m = y} x_m)^T l(y) = F_ids L    (L: N x N', rows l(y))

        so a pass accumulates cheap per-class input sums and the product is taken once.
        """
        mapped = target_vectors.to(torch.float64).T @ self.transposed_counts
        return Cooccurrence(mapped, self.input_mass.clone(), self.num_rows.clone())

    def all_reduce(self, accelerator=None) -> None:
        """Sum the statistics over all processes (no-op in a single process)."""
        if accelerator is None or accelerator.num_processes == 1:
            return
        for tensor in (self.transposed_counts, self.input_mass, self.num_rows):
            tensor.copy_(accelerator.reduce(tensor, reduction="sum"))

    @property
    def priming_number(self) -> float:
        """K = mean_m ||x_m||_1 (1.0 for one-hot or unit-L1 inputs)."""
        if self.num_rows.item() == 0:
            raise ExplicitStatisticsError("no data was accumulated: the explicit solution needs at least one row")
        return (self.input_mass / self.num_rows).item()

    def solve(
        self, smoothing: float, priming: float | None = None, discount: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The explicit solution (weight (D, N), bias (N,)) of these statistics; see `solve_softmax`.

        `priming` overrides the measured priming number K: the layer is solved as if its inputs had
        L1 norm `priming`, i.e. were x' = (priming / K) x (each x counting as `priming` observations):

            x' ln(F' + alpha) = (priming / K) x ln(F + alpha) + const    (F' = (priming / K) F)

        so the weight is scaled by priming / K and the bias is -(priming - 1) ln phi. `discount`: see
        `solve_softmax`.
        """
        measured = self.priming_number
        if priming is None:
            return solve_softmax(self.counts, measured, smoothing, discount=discount)
        return solve_softmax(self.counts, priming, smoothing, weight_scale=priming / measured, discount=discount)


def discounted_counts(counts: torch.Tensor, discount: float, smoothing: float) -> torch.Tensor:
    """Absolute discounting with back-off to the column marginal, the closed form behind Kneser-Ney:

        F'_ij = max(F_ij - D, 0) + (R_i + alpha) pi_j,   R_i = sum_j min(F_ij, D),   pi_j = phi_j / sum phi

    Each row keeps its mass plus alpha; what the discount D takes from the seen entries goes to every
    entry in proportion to how often it occurs overall, so a rarely seen input backs off to the marginal
    instead of to a flat floor. One-hot inputs then get the interpolated absolute-discounting estimate.
    """
    column_mass = counts.sum(dim=0)
    marginal = (column_mass + smoothing) / (column_mass.sum() + smoothing * counts.shape[1])
    removed = counts.clamp(max=discount).sum(dim=1, keepdim=True)
    return (counts - discount).clamp_min(0) + (removed + smoothing) * marginal


def kneser_ney_discounts(counts: torch.Tensor) -> torch.Tensor:
    """(D1, D2, D3+) of modified Kneser-Ney (Chen & Goodman 1998) from the count-of-counts n_1 ... n_4 of the
    observed n-gram counts: Y = n1 / (n1 + 2 n2), D_k = k - (k + 1) Y n_{k+1} / n_k, each kept in [0.05, k]
    (0.5, 0.75, 0.9 when n1 or n2 is 0)."""
    n = [float((counts == k).sum()) for k in range(1, 5)]
    if n[0] == 0 or n[1] == 0:
        return torch.tensor([0.5, 0.75, 0.9], dtype=torch.float64)
    y = n[0] / (n[0] + 2 * n[1])
    values = [k - (k + 1) * y * n[k] / n[k - 1] if n[k - 1] > 0 else 0.9 for k in range(1, 4)]
    return torch.tensor([min(max(v, 0.05), k) for k, v in zip(range(1, 4), values, strict=True)], dtype=torch.float64)


def count_discounts(discounts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """D(n) of each count n from (D1, D2, D3+): D(0) = 0, D(n) = min(D_min(n, 3), n)."""
    return discounts.to(counts.dtype)[(counts.clamp(1, 3) - 1).long()].clamp(max=counts)


def solve_bigram_channel(
    keys: torch.Tensor,
    counts: torch.Tensor,
    vocab_size: int,
    smoothing: float,
    discount: bool = True,
    discounts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The explicit solution of a softmax layer on one-hot pivots x, stored sparsely (`SaffuPivotBigrams`):
    from the pair counts n_xy (`keys` = x V + y, sorted and unique, with `counts`), the bias b (V,) and the
    values S_xy of the given pairs such that softmax(b + S[x]) = P(y | x), with

        discount: the interpolated Kneser-Ney level (`solve_ngram_channel`) over the continuation distribution
            P_c(y) = (N(. y) + alpha) / (sum_y N(. y) + alpha V)   (N(. y): distinct pivots seen before y),
            b = ln P_c,   S_xy = ln(1 + (n_xy - D(n_xy)) / (gamma_x P_c(y)));
        no discount (the additive floor alpha): P(y | x) ~ n_xy + alpha,   b = 0,   S_xy = ln(1 + n_xy / alpha).

    `discounts`: (D1, D2, D3+) to use instead of those of `kneser_ney_discounts(counts)`.
    """
    counts = counts.to(torch.float64)
    check_statistics("bigram counts", counts)
    if not smoothing > 0:
        raise ExplicitStatisticsError(f"smoothing must be > 0 so that ln(F + alpha) is finite, got {smoothing}")
    if not discount:
        return torch.log1p(counts / smoothing), torch.zeros(vocab_size, dtype=torch.float64)
    nexts = keys % vocab_size
    seen_before = torch.bincount(nexts, minlength=vocab_size).to(torch.float64)
    continuation = (seen_before + smoothing) / (seen_before.sum() + smoothing * vocab_size)
    values = solve_ngram_channel(keys, counts, continuation[nexts], vocab_size, discounts)
    return values, torch.log(continuation)


def solve_ngram_channel(
    keys: torch.Tensor,
    counts: torch.Tensor,
    lower: torch.Tensor,
    vocab_size: int,
    discounts: torch.Tensor | None = None,
) -> torch.Tensor:
    """One level of interpolated modified Kneser-Ney, for every order: the values T of the n-grams `keys` = h V + y
    (h: the history's integer key; sorted, unique) with counts n_hy, such that softmax(lower levels' logits +
    T[h]) is the level's estimate over the lower-order distribution `lower` = P_{n-1}(y | h') of each n-gram
    (h': h without its oldest token; for the bigram level, the continuation unigram P_c(y)):

        P_n(y | h) ~ max(n_hy - D(n_hy), 0) + gamma_h P_{n-1}(y | h'),   gamma_h = sum_y D(n_hy),
        T_hy = ln(1 + (n_hy - D(n_hy)) / (gamma_h P_{n-1}(y | h'))),

    D = `kneser_ney_discounts(counts)` (Chen & Goodman 1998), or `discounts` (D1, D2, D3+) when given. The counts
    are raw at the model's highest order and continuation counts below it (`hf_saffu.warm_start`).
    """
    counts = counts.to(torch.float64)
    check_statistics("n-gram counts", counts)
    check_statistics("lower-order probabilities", lower)
    histories = torch.unique_consecutive(keys // vocab_size, return_inverse=True)[1]
    discounts = count_discounts(kneser_ney_discounts(counts) if discounts is None else discounts, counts)
    gamma = torch.zeros(int(histories.max()) + 1 if len(keys) else 0, dtype=torch.float64)
    gamma.index_add_(0, histories, discounts)
    tiny = torch.finfo(torch.float64).tiny
    return torch.log1p((counts - discounts) / (gamma[histories] * lower.to(torch.float64)).clamp_min(tiny))


def solve_softmax(
    counts: torch.Tensor, priming: float, smoothing: float, weight_scale: float = 1.0, discount: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax layer from co-occurrences F (D x N) and the priming number K.

        U = s ln(F + alpha),   b_j = -(K - 1) ln phi_j,   phi_j = sum_i (F_ij + alpha)

    with s = `weight_scale` (1 in the paper's form; see `Cooccurrence.solve`). With a `discount` D, the
    discounted counts F' (`discounted_counts`) replace F + alpha.

    Returns float64 (U, b). Raises `ExplicitStatisticsError` on non-finite or negative statistics, a
    non-positive smoothing or priming number, or statistics with no mass.
    """
    check_statistics("co-occurrence matrix F", counts)
    if not smoothing > 0:
        raise ExplicitStatisticsError(f"smoothing must be > 0 so that ln(F + alpha) is finite, got {smoothing}")
    if not (priming > 0 and priming < float("inf")):
        raise ExplicitStatisticsError(f"the priming number must be finite and > 0, got {priming}")
    if not (weight_scale > 0 and weight_scale < float("inf")):
        raise ExplicitStatisticsError(f"the weight scale must be finite and > 0, got {weight_scale}")
    if counts.sum() == 0:
        raise ExplicitStatisticsError("the co-occurrence matrix F is all zeros: no data reached this layer")
    if discount is not None and not (0 <= discount < float("inf")):
        raise ExplicitStatisticsError(f"the discount must be finite and >= 0, got {discount}")
    counts = counts.to(torch.float64)
    smoothed = counts + smoothing if discount is None else discounted_counts(counts, discount, smoothing)
    weight = (weight_scale * torch.log(smoothed)).contiguous()
    bias = -(priming - 1.0) * torch.log(smoothed.sum(dim=0))
    return weight, bias


def softmax_cross_entropy(
    inputs: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of softmax(x U + b) against class ids (M,) or target distributions (M, N)."""
    log_probs = torch.log_softmax(inputs.to(weight.dtype) @ weight + bias, dim=-1)
    if not targets.is_floating_point():
        return -log_probs.gather(1, targets.long()[:, None]).mean()
    return -(targets.to(weight.dtype) * log_probs).sum(dim=-1).mean()
