"""The two-layer quadratic network of CoGO and its centred L2 loss (docs/DESIGN.md section 7).

With one-hot inputs e_{g1}, e_{g2} and real weights W_a, W_b (q x d), W_c (d x q):

    o(g1, g2) = W_c (W_a e_{g1} + W_b e_{g2})^{∘2}

    loss = mean over pairs of ‖P⊥ o − (e_y − 1/d · 1)‖²,   y = g1 + g2 mod d,

where P⊥ removes the mean of o over the d outputs. Everything here works in the dtype of
the weights, so float64 weights give a float64 loss.
"""

import torch
import torch.nn.functional as F


def hidden_activations(w_a: torch.Tensor, w_b: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(W_a e_{g1} + W_b e_{g2})^{∘2} for pairs [..., 2] → [..., q]. W_a e_g is row g of W_aᵀ,
    looked up as an embedding (fast when W_aᵀ is contiguous, as for an nn.Embedding table)."""
    return (F.embedding(pairs[..., 0], w_a.T) + F.embedding(pairs[..., 1], w_b.T)).square()


def network_outputs(w_a: torch.Tensor, w_b: torch.Tensor, w_c: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """o = W_c (W_a e_{g1} + W_b e_{g2})^{∘2} for pairs [..., 2] → [..., d]."""
    return hidden_activations(w_a, w_b, pairs) @ w_c.T


def centred_l2_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean ‖P⊥ o − (e_y − 1/d · 1)‖², computed as a sum of squares (no cancellation, so
    a loss of 1e-30 is resolved in float64)."""
    modulus = outputs.shape[-1]
    centred = outputs - outputs.mean(dim=-1, keepdim=True)
    target = F.one_hot(labels, modulus).to(outputs.dtype) - 1.0 / modulus
    return (centred - target).square().sum(dim=-1).mean()


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of pairs whose largest output is the correct sum."""
    return (outputs.argmax(dim=-1) == labels).double().mean().item()
