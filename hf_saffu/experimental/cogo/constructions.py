"""Global optimizers of the CoGO loss composed from building blocks (docs/DESIGN.md section 7).

For odd d every frequency pair ±k (k = 1 … (d−1)/2) gets its own block:

    order 6:  z_ν * z_syn,      c scaled by 1/(12d)   → 6 nodes, r̃_{kkk} = 2·3·2d/(12d) = 1
    order 4:  z_{ν=i} * z_ξ,    c scaled by 1/(8d)    → 4 nodes, r̃_{kkk} = 2·2·2d/(8d)  = 1

An order-4 block leaves one potential alive: Σ_p Σ_{k'} r_{p,k',−k',k} = (1 − i)/d, i.e. the
constant-input part of output frequency k (loss 2(d−1)/d for an all-order-4 net). It is
cancelled either by one constant node (activation 1) with z_c = −(1 − i)/d at every order-4
frequency, or by letting an order-6 block with |ν| = 1 ride it: each of its six nodes has
|z_a|² + |z_b|² = 2 and feeds 2(|z_a|² + |z_b|²)·z_c = 4 z_c into that potential, so an extra
output coefficient −(1 − i)/(24d) per node at every order-4 frequency cancels it, while the
z_syn factor keeps every other potential it touches at zero.

Perfect memorization is a semi-ring product too: with u_i (a = ω^{−ki}, b = 1, c = ω^{ki}) and
v_j (a = 1, b = ω^{−kj}, c = ω^{kj}) over all k, (Σ_i u_i) * (Σ_j v_j) scaled by
(1/d, 1/d, 1/(2d)) is node (i, j) with W_a = e_i, W_b = e_j, W_c = ½ e_{i+j}: d² nodes.
"""

import torch

from .building_blocks import constant_node, nu_block, nu_i_block, syn_block, xi_block
from .fourier import COMPLEX, FourierWeights, fourier_basis

CONSTRUCTION_KINDS = (
    "order6",
    "order4",
    "order4_uncompensated",
    "mixture",
    "mixture_riding",
    "memorization",
)

ORDER4_RESIDUAL = 1 - 1j
"""d times the constant-input potential Σ_p Σ_{k'} r_{p,k',−k',k} left by an order-4 block."""


def frequency_representatives(modulus: int) -> list[int]:
    """k = 1 … (d−1)/2: one representative of each conjugate pair ±k."""
    return list(range(1, (modulus - 1) // 2 + 1))


def order6_block(modulus: int, frequency: int, nu: complex = 1.0) -> FourierWeights:
    """z_ν * z_syn with c scaled by 1/(12d): zero loss at ±frequency with 6 nodes."""
    return (nu_block(modulus, frequency, nu) * syn_block(modulus, frequency)).scaled(c=1 / (12 * modulus))


def order4_block(modulus: int, frequency: int, xi: complex = 1.0) -> FourierWeights:
    """z_{ν=i} * z_ξ with c scaled by 1/(8d): 4 nodes, leaves ORDER4_RESIDUAL / d."""
    return (nu_i_block(modulus, frequency) * xi_block(modulus, frequency, xi)).scaled(c=1 / (8 * modulus))


def compensation_node(modulus: int, order4_frequencies: list[int]) -> FourierWeights:
    """Constant node cancelling the residual of the order-4 blocks at the given frequencies."""
    return constant_node(modulus, {k: -ORDER4_RESIDUAL / modulus for k in order4_frequencies})


def ride_compensation(block: FourierWeights, order4_frequencies: list[int]) -> FourierWeights:
    """Add −(1 − i)/(24d) to z_c of each node of an order-6 block (|ν| = 1) at every order-4
    frequency (and its conjugate at −k)."""
    modulus = block.modulus
    node_power = block.a.abs().square().sum(dim=1) + block.b.abs().square().sum(dim=1)
    if block.num_nodes != 6 or not torch.allclose(node_power, torch.full_like(node_power, 4.0)):
        raise ValueError("the compensation can only ride on an order-6 block with |nu| = 1")
    extra = -ORDER4_RESIDUAL / (24 * modulus)
    c = block.c.clone()
    for k in order4_frequencies:
        c[:, k] += extra
        c[:, modulus - k] += extra.conjugate()
    return FourierWeights(block.a, block.b, c)


def perfect_memorization(modulus: int) -> FourierWeights:
    """d² nodes, node (i, j): W_a = e_i, W_b = e_j, W_c = ½ e_{i+j}."""
    basis = fourier_basis(modulus)
    ones = torch.ones(modulus, modulus, dtype=COMPLEX)
    first_operand = FourierWeights(a=basis.conj(), b=ones, c=basis)
    second_operand = FourierWeights(a=ones, b=basis.conj(), c=basis)
    return (first_operand * second_operand).scaled(a=1 / modulus, b=1 / modulus, c=1 / (2 * modulus))


def mixture(
    modulus: int,
    order6_frequencies: list[int],
    riding: bool = False,
    nu: complex = 1.0,
    xi: complex = 1.0,
) -> FourierWeights:
    """Order-6 blocks at `order6_frequencies`, order-4 blocks elsewhere, and the order-4
    residual cancelled by a constant node or (riding=True) by the first order-6 block."""
    frequencies = frequency_representatives(modulus)
    order6 = [k for k in frequencies if k in set(order6_frequencies)]
    order4 = [k for k in frequencies if k not in set(order6)]
    blocks = [order6_block(modulus, k, nu) for k in order6]
    if riding and order4:
        if not blocks:
            raise ValueError("riding compensation needs at least one order-6 frequency")
        blocks[0] = ride_compensation(blocks[0], order4)
    blocks += [order4_block(modulus, k, xi) for k in order4]
    if order4 and not riding:
        blocks.append(compensation_node(modulus, order4))
    return sum(blocks[1:], blocks[0])


def default_order6_frequencies(modulus: int) -> list[int]:
    """Odd k use order 6 in the default mixture, even k order 4."""
    return [k for k in frequency_representatives(modulus) if k % 2 == 1]


def construct(
    modulus: int,
    kind: str = "order6",
    order6_frequencies: list[int] | None = None,
    nu: complex = 1.0,
    xi: complex = 1.0,
) -> FourierWeights:
    """A global optimizer of the given kind (see CONSTRUCTION_KINDS) for Z_d.

    "order4_uncompensated" is the all-order-4 net without compensation (loss 2(d−1)/d).
    The Fourier constructions need odd d ≥ 3; memorization works for any d ≥ 2.
    """
    if kind not in CONSTRUCTION_KINDS:
        raise ValueError(f"kind must be one of {CONSTRUCTION_KINDS}, got {kind!r}")
    if kind == "memorization":
        if modulus < 2:
            raise ValueError(f"modulus must be >= 2, got {modulus}")
        return perfect_memorization(modulus)
    if modulus < 3 or modulus % 2 == 0:
        raise ValueError(f"modulus must be odd and >= 3 for kind {kind!r}, got {modulus}")
    frequencies = frequency_representatives(modulus)
    if kind == "order6":
        return mixture(modulus, frequencies, nu=nu)
    if kind == "order4":
        return mixture(modulus, [], xi=xi)
    if kind == "order4_uncompensated":
        blocks = [order4_block(modulus, k, xi) for k in frequencies]
        return sum(blocks[1:], blocks[0])
    if order6_frequencies is None:
        order6_frequencies = default_order6_frequencies(modulus)
    return mixture(modulus, order6_frequencies, riding=kind == "mixture_riding", nu=nu, xi=xi)


def expected_num_nodes(modulus: int, kind: str, order6_frequencies: list[int] | None = None) -> int:
    """Node counts of §6: 3(d−1) for order 6, 2(d−1) + 1 for order 4 with its compensation
    node, 6·n6 + 4·n4 (+1 with a compensation node) for mixtures, d² for memorization."""
    if kind == "memorization":
        return modulus**2
    num_pairs = (modulus - 1) // 2
    if kind == "order6":
        return 6 * num_pairs
    if kind in ("order4", "order4_uncompensated"):
        return 4 * num_pairs + (kind == "order4")
    if order6_frequencies is None:
        order6_frequencies = default_order6_frequencies(modulus)
    num_order6 = len(set(order6_frequencies) & set(frequency_representatives(modulus)))
    num_order4 = num_pairs - num_order6
    return 6 * num_order6 + 4 * num_order4 + (kind == "mixture" and num_order4 > 0)
