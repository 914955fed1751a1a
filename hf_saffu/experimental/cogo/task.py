"""Modular addition on Z_d: every pair (g1, g2) with target y = g1 + g2 mod d."""

import torch


def all_pairs(modulus: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All d² operand pairs as a LongTensor [d², 2] (row g1 * d + g2) and their sums mod d."""
    operands = torch.arange(modulus)
    pairs = torch.cartesian_prod(operands, operands)
    return pairs, pairs.sum(dim=-1) % modulus


def split_pairs(modulus: int, test_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Random train/test split of the d² pairs (a seeded permutation; the test part gets
    round(test_fraction · d²) pairs). Returns pairs and labels of both parts."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    pairs, labels = all_pairs(modulus)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    num_test = round(test_fraction * len(pairs))
    test, train = order[:num_test], order[num_test:]
    return {
        "train_pairs": pairs[train],
        "train_labels": labels[train],
        "test_pairs": pairs[test],
        "test_labels": labels[test],
    }
