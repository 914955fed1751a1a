"""Interpolated modified Kneser-Ney n-gram language models: the count-based arms of the benchmarks.

Chen & Goodman (1998), "An Empirical Study of Smoothing Techniques for Language Modeling", interpolated
modified Kneser-Ney. For an n-gram model, with history h (the last n - 1 tokens) and its shortened
history h' (the last n - 2):

    P(w | h) = (max(c(h w) - D(c(h w)), 0) + gamma(h) P(w | h')) / c(h),
    gamma(h) = D1 N1(h .) + D2 N2(h .) + D3 N3+(h .)

where c are raw counts at the highest order and continuation counts N1+(. h w) (the number of distinct
tokens seen before h w) at every lower order; N_k(h .) counts the tokens seen after h exactly k times
(k = 3: three times or more); D1, D2, D3 come from the count-of-counts n_1 ... n_4 of each order,
Y = n1 / (n1 + 2 n2), D_k = k - (k + 1) Y n_{k+1} / n_k. A history never seen (c(h) = 0) falls back to
P(w | h'); the unigram level interpolates with the uniform distribution 1 / V.

All n-grams are counted inside packed blocks (`input_ids`, `attention_mask` as the benchmarks pack
them), and evaluation scores the same predicted tokens as the neural models: every real token after the
first of its block, from the tokens before it in the same block (a shorter history near the block start).
One counting pass, closed form, a few CPU seconds on Brown.
"""

import math
from dataclasses import dataclass

import torch

from hf_saffu.explicit import kneser_ney_discounts


def ngram_keys(ids: torch.Tensor, valid: torch.Tensor, order: int, vocab_size: int) -> torch.Tensor:
    """Integer keys sum_i ids[t - order + 1 + i] V^(order - 1 - i) of every n-gram of real tokens in the rows."""
    length = ids.shape[1]
    if length < order:
        return ids.new_zeros(0)
    keys = torch.zeros(ids.shape[0], length - order + 1, dtype=torch.int64)
    ok = torch.ones_like(keys, dtype=torch.bool)
    for i in range(order):
        keys = keys * vocab_size + ids[:, i : length - order + 1 + i]
        ok &= valid[:, i : length - order + 1 + i]
    return keys[ok]


def lookup(table_keys: torch.Tensor, table_values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """table_values at `keys` (0 where a key is absent); `table_keys` sorted and unique."""
    if len(table_keys) == 0:
        return torch.zeros(keys.shape, dtype=table_values.dtype)
    position = torch.searchsorted(table_keys, keys).clamp_max(len(table_keys) - 1)
    return torch.where(table_keys[position] == keys, table_values[position], torch.zeros((), dtype=table_values.dtype))


@dataclass
class Level:
    """Counts of one order: n-gram keys and their (raw or continuation) counts, and per history h the total
    count c(h) and the numerator gamma(h) of the back-off weight."""

    keys: torch.Tensor
    counts: torch.Tensor
    history_keys: torch.Tensor
    history_totals: torch.Tensor
    history_gamma: torch.Tensor
    discount: torch.Tensor


def build_level(keys: torch.Tensor, counts: torch.Tensor, vocab_size: int) -> Level:
    """One order's table from its sorted unique n-gram keys and counts."""
    discount = kneser_ney_discounts(counts)
    history, inverse = torch.unique(keys // vocab_size, return_inverse=True)
    totals = torch.zeros(len(history), dtype=torch.float64).index_add_(0, inverse, counts)
    per_gram = discount[(counts.clamp(1, 3) - 1).long()]
    gamma = torch.zeros(len(history), dtype=torch.float64).index_add_(0, inverse, per_gram)
    return Level(keys, counts, history, totals, gamma, discount)


class KneserNeyLM:
    """An interpolated modified Kneser-Ney model of order `order` (2 = bigram) over `vocab_size` tokens."""

    def __init__(self, order: int, vocab_size: int):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.order = order
        self.vocab_size = vocab_size
        self.levels: list[Level] = []  # index k - 1 holds order k

    def fit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> "KneserNeyLM":
        """Count every n-gram (n <= order) of the real tokens of each block; continuation counts below the top."""
        valid = attention_mask.bool()
        raw = [
            torch.unique(ngram_keys(input_ids, valid, n, self.vocab_size), return_counts=True)
            for n in range(1, self.order + 1)
        ]
        self.levels = []
        for n in range(1, self.order + 1):
            if n == self.order:
                keys, counts = raw[n - 1]
            else:  # continuation counts: distinct left extensions of each n-gram, from the (n+1)-grams
                longer = raw[n][0]
                keys, counts = torch.unique(longer % self.vocab_size**n, return_counts=True)
            self.levels.append(build_level(keys, counts.to(torch.float64), self.vocab_size))
        return self

    def log_probs(self, histories: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """ln P(target | history) for M predictions; histories[k] holds the keys of the last k tokens
        (k = 1 ... order - 1) and -1 where the history is shorter than k."""
        unigram = self.levels[0]
        total = unigram.history_totals[0] if len(unigram.history_totals) else torch.tensor(0.0)
        counts = lookup(unigram.keys, unigram.counts, targets)
        discount = unigram.discount[(counts.clamp(1, 3) - 1).long()]
        gamma = unigram.history_gamma[0] if len(unigram.history_gamma) else torch.tensor(0.0)
        probs = ((counts - discount).clamp_min(0) + gamma / self.vocab_size) / total
        for k in range(1, self.order):
            level = self.levels[k]
            history = histories[k - 1]
            keys = history * self.vocab_size + targets
            counts = lookup(level.keys, level.counts, keys)
            discount = level.discount[(counts.clamp(1, 3) - 1).long()]
            totals = lookup(level.history_keys, level.history_totals, history)
            gamma = lookup(level.history_keys, level.history_gamma, history)
            seen = (totals > 0) & (history >= 0)
            mixed = ((counts - discount).clamp_min(0) + gamma * probs) / totals.clamp_min(1e-300)
            probs = torch.where(seen, mixed, probs)
        return torch.log(probs)

    def token_log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """ln P of every real token after the first of its block (the neural models' tokens), row by row."""
        valid = attention_mask.bool()
        batch, length = input_ids.shape
        predicted = valid[:, 1:] & valid[:, :-1]
        targets = input_ids[:, 1:][predicted]
        histories = []
        history = torch.zeros(batch, length - 1, dtype=torch.int64)
        for k in range(1, self.order):
            shifted = torch.full((batch, length - 1), -1, dtype=torch.int64)
            shifted[:, k - 1 :] = input_ids[:, : length - k]
            shifted_valid = torch.zeros(batch, length - 1, dtype=torch.bool)
            shifted_valid[:, k - 1 :] = valid[:, : length - k]
            history = torch.where(shifted_valid & (history >= 0), shifted * self.vocab_size ** (k - 1) + history, -1)
            histories.append(history[predicted])
        return self.log_probs(histories, targets)

    def perplexity(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
        """exp(mean NLL) over every real token after the first of its block (the neural models' tokens)."""
        return math.exp(-self.token_log_probs(input_ids, attention_mask).mean().item())
