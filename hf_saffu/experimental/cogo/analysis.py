"""Reading a trained CoGO network frequency by frequency (docs/DESIGN.md section 7, published protocol).

1. Every node is assigned to its dominant input frequency k ∈ {0, …, (d−1)/2}: the one with the
   largest (|z_{a,k}|² + |z_{b,k}|²)^{1/2}; nodes below `threshold` there are dead.
2. The nodes at frequency k form a block of order n; its coefficients at +k are a 3 x n
   complex matrix F (rows a, b, c).
3. Scale is normalised: each node is rescaled by (λ, λ, λ⁻²), which leaves every potential
   unchanged, with λ⁶ = |c|² / (|a||b|), so that |c| = (|a||b|)^{1/2}.
4. A block of even order n = 2m is factorised as a product z_u * z_v of a 2-node factor and an
   m-node factor: over all ways of laying the nodes on a 2 x m grid, the ratios
   F[p, (1, j)] / F[p, (0, j)] must not depend on j (for rows a and b up to the sign
   (a, b) → (−a, −b), which is the scaling λ = −1). The relative spread of the ratios is the
   factorisation error.
5. Each factor, divided by its first node and with every node divided by the cube root of its
   a·b·c (all building blocks have a·b·c = 1), is compared with the patterns z_ν, z_{ν=i}, z_ξ,
   z_syn and z_{syn,αβ} (c as in z_syn, |a| = |b| = 1).
6. Whatever the factors, the block's residual (`block_residual`) says how close its own nodes
   come to solving frequency k: unwanted potentials relative to r_{kkk}.

A block matches a construction when it is z_{ν=i} * z_ξ (order 4), z_ν * z_syn (order 6) or
z_{ν=i} * z_{syn,αβ} (order 6). The last one is also a global optimizer: z_{ν=i} kills every
unwanted potential except ā b̄ c and Σ_p |p|² c; with |a| = |b| = 1, a·b·c = 1 and c = z_syn's,
Σ_j ā_j b̄_j c_j = Σ_j c_j² = 0 and Σ_j (|a_j|² + |b_j|²) c_j = 2 Σ_j c_j = 0.
"""

import itertools
from collections import Counter
from dataclasses import dataclass

import torch

from .building_blocks import OMEGA_3
from .fourier import FourierWeights

CONSTRUCTION_PATTERNS = {
    (4, ("nu=i", "xi")): "order4: z_nu=i * z_xi",
    (6, ("nu", "syn")): "order6: z_nu * z_syn",
    (6, ("nu=i", "syn")): "order6: z_nu * z_syn",
    (6, ("nu=i", "syn_ab")): "order6: z_nu=i * z_syn_ab",
}
"""(order, sorted factor patterns) → construction; z_{ν=i} is the z_ν with ν = i. When a
block fits several, the earlier (more specific) construction is reported."""
CONSTRUCTION_PRIORITY = list(dict.fromkeys(CONSTRUCTION_PATTERNS.values()))


@dataclass
class BlockReading:
    """What one frequency of a trained network is made of."""

    frequency: int
    nodes: list[int]
    residual: float | None = None
    factorization_error: float | None = None
    factors: tuple[str, str] | None = None
    construction: str | None = None

    @property
    def order(self) -> int:
        return len(self.nodes)

    @property
    def factorable(self) -> bool:
        return self.factors is not None


def dominant_frequencies(z: FourierWeights, threshold: float = 0.05) -> torch.Tensor:
    """Per node, the k ∈ {0, …, (d−1)/2} maximising (|z_{a,k}|² + |z_{b,k}|²)^{1/2}; −1 where
    that maximum is below `threshold` (a dead node)."""
    num_frequencies = z.modulus // 2 + 1
    strength = (z.a[:, :num_frequencies].abs().square() + z.b[:, :num_frequencies].abs().square()).sqrt()
    peak, frequency = strength.max(dim=1)
    return torch.where(peak >= threshold, frequency, -1)


def block_residual(block: torch.Tensor) -> float:
    """How far a block (3 x n coefficients at +k) is from solving frequency k by itself:

        ‖(Σ ā b c, Σ a b̄ c, Σ ā b̄ c, Σ a² c, Σ ā² c, Σ b² c, Σ b̄² c)‖ / |Σ a b c|,

    the unwanted potentials relative to the wanted r_{kkk} (sums over the block's nodes). It is
    0 for every construction and invariant under node scaling. The constant-input potential
    Σ (|a|² + |b|²) c is left out: a compensation elsewhere in the network may cancel it."""
    a, b, c = block
    unwanted = torch.stack(
        [
            (a.conj() * b * c).sum(),
            (a * b.conj() * c).sum(),
            (a.conj() * b.conj() * c).sum(),
            (a * a * c).sum(),
            (a.conj() * a.conj() * c).sum(),
            (b * b * c).sum(),
            (b.conj() * b.conj() * c).sum(),
        ]
    )
    return float(unwanted.abs().norm() / (a * b * c).sum().abs())


def balance_nodes(block: torch.Tensor) -> torch.Tensor:
    """Rescale each node (column) by (λ, λ, λ⁻²), λ⁶ = |c|² / (|a||b|), so |c| = (|a||b|)^{1/2}."""
    magnitude = block.abs()
    ratio = magnitude[2].square() / (magnitude[0] * magnitude[1])
    ratio = torch.where(torch.isfinite(ratio) & (ratio > 0), ratio, torch.ones_like(ratio))
    scale = ratio ** (1 / 6)
    return block * torch.stack([scale, scale, scale**-2])


def factorizations(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every split of a 3 x 2m block into z_u (2 nodes) * z_v (m nodes), best first.

    Returns the relative factorisation errors [P] and the factors u [P, 3, 2] and v [P, 3, m],
    each with first node (1, 1, 1), for all P node layouts on the 2 x m grid. Several layouts can
    fit exactly (z_ν with ν = ±1 is closed under multiplication, so it can swap nodes with the
    other factor), which is why the patterns are tried on every layout that fits."""
    order = block.shape[1]
    half = order // 2
    orders = torch.tensor(list(itertools.permutations(range(order))))
    grids = block[:, orders].reshape(3, len(orders), 2, half).permute(1, 0, 2, 3)  # [layout, row, i, j]
    ratios = grids[:, :, 1, :] / grids[:, :, 0, :]  # [layout, row, j]
    alignment = (ratios[:, :2, :] * ratios[:, :2, :1].conj()).real.sum(dim=1)  # [layout, j]
    signs = torch.where(alignment < 0, -1.0, 1.0).to(ratios.dtype)
    ratios = torch.cat([ratios[:, :2, :] * signs[:, None, :], ratios[:, 2:, :]], dim=1)
    mean_ratio = ratios.mean(dim=2, keepdim=True)
    spread = (ratios - mean_ratio).abs().square().mean(dim=(1, 2))
    errors = torch.nan_to_num((spread / ratios.abs().square().mean(dim=(1, 2))).sqrt(), nan=float("inf"))
    pair_factors = torch.cat([torch.ones_like(mean_ratio), mean_ratio], dim=2)
    other_factors = grids[:, :, 0, :] / grids[:, :, 0, :1]
    best_first = errors.argsort()
    return errors[best_first], pair_factors[best_first], other_factors[best_first]


def normalize_factor(factor: torch.Tensor) -> torch.Tensor:
    """Divide each node (column) by the principal cube root of its a·b·c."""
    return factor / factor.prod(dim=0, keepdim=True) ** (1 / 3)


def classify_pair(factor: torch.Tensor, tolerance: float) -> str:
    """Name of the 2-node pattern (after `normalize_factor`) the factor matches, or "unknown".

    With (α_a, α_b, α_c) the second node: z_{ν=i} has α_c = 1, α_a = ±i, α_b = −α_a; z_ξ has
    α_c = ±i (the sign is the choice of +k or −k), |α_a| = 1, α_b = −α_c ᾱ_a; z_ν has
    α_b = −α_a and α_c = −α_a⁻²."""
    alpha_a, alpha_b, alpha_c = (complex(value) for value in normalize_factor(factor)[:, 1])
    if (
        abs(alpha_c - 1) < tolerance
        and min(abs(alpha_a - 1j), abs(alpha_a + 1j)) < tolerance
        and abs(alpha_a + alpha_b) < tolerance
    ):
        return "nu=i"
    if (
        min(abs(alpha_c - 1j), abs(alpha_c + 1j)) < tolerance
        and abs(abs(alpha_a) - 1) < tolerance
        and abs(alpha_b + alpha_c * alpha_a.conjugate()) < tolerance
    ):
        return "xi"
    if alpha_a != 0 and abs(alpha_a + alpha_b) < tolerance and abs(alpha_c + alpha_a**-2) < tolerance:
        return "nu"
    return "unknown"


def classify_triple(factor: torch.Tensor, tolerance: float) -> str:
    """Name of the 3-node pattern (after `normalize_factor`): "syn" when the other two nodes are
    ±(ω₃, ω₃, ω₃) and ±(ω₃², ω₃², ω₃²) (the sign on a and b only), "syn_ab" when only c
    follows z_syn and |a| = |b| = 1, else "unknown"."""
    nodes = normalize_factor(factor)[:, 1:].T.tolist()
    roots = (OMEGA_3, OMEGA_3.conjugate())
    if not any(
        max(abs(node[2] - root) for node, root in zip(ordering, roots, strict=True)) < tolerance
        for ordering in (nodes, nodes[::-1])
    ):
        return "unknown"
    if all(min(max(abs(a - sign * c), abs(b - sign * c)) for sign in (1, -1)) < tolerance for a, b, c in nodes):
        return "syn"
    if all(abs(abs(a) - 1) < tolerance and abs(abs(b) - 1) < tolerance for a, b, _ in nodes):
        return "syn_ab"
    return "unknown"


def read_block(
    z: FourierWeights, frequency: int, nodes: list[int], factor_tolerance: float, pattern_tolerance: float
) -> BlockReading:
    """Factorise and classify the block of `nodes` at `frequency` (orders 4 and 6 only). Among
    the layouts within `factor_tolerance` the most specific construction wins; without one,
    the factors of the best-fitting layout are reported."""
    reading = BlockReading(frequency=frequency, nodes=nodes)
    if reading.order == 0:
        return reading
    block = torch.stack([z.a[nodes, frequency], z.b[nodes, frequency], z.c[nodes, frequency]])
    reading.residual = block_residual(block)
    if reading.order not in (4, 6):
        return reading
    block = balance_nodes(block)
    errors, pair_factors, other_factors = factorizations(block)
    reading.factorization_error = float(errors[0])
    classify_other = classify_pair if reading.order == 4 else classify_triple
    for error, pair_factor, other_factor in zip(errors, pair_factors, other_factors, strict=True):
        if not error <= factor_tolerance:
            break
        factors = tuple(
            sorted((classify_pair(pair_factor, pattern_tolerance), classify_other(other_factor, pattern_tolerance)))
        )
        construction = CONSTRUCTION_PATTERNS.get((reading.order, factors))
        if reading.factors is None or _more_specific(construction, reading.construction):
            reading.factors, reading.construction = factors, construction
    return reading


def _more_specific(candidate: str | None, current: str | None) -> bool:
    if candidate is None:
        return False
    return current is None or CONSTRUCTION_PRIORITY.index(candidate) < CONSTRUCTION_PRIORITY.index(current)


def read_network(
    z: FourierWeights, threshold: float = 0.05, factor_tolerance: float = 0.1, pattern_tolerance: float = 0.1
) -> list[BlockReading]:
    """One `BlockReading` per frequency k = 1 … (d−1)/2 (order 0 where no node lives)."""
    assignment = dominant_frequencies(z, threshold)
    return [
        read_block(z, k, (assignment == k).nonzero().flatten().tolist(), factor_tolerance, pattern_tolerance)
        for k in range(1, z.modulus // 2 + 1)
    ]


def summarize_readings(readings: list[BlockReading]) -> dict[str, float | int | dict]:
    """Counts and shares over blocks: `match_share` is matched blocks over all used frequencies
    (order ≥ 1); `match_share_of_factorable` divides by the factorable order-4/6 blocks instead
    (the denominator of the published analysis code). Keys are strings (the summary is written as JSON):
    `factor_counts` names a pair of factors "A * B"."""
    used = [r for r in readings if r.order > 0]
    order46 = [r for r in used if r.order in (4, 6)]
    factorable = [r for r in order46 if r.factorable]
    matched = [r for r in factorable if r.construction is not None]
    return {
        "frequencies": len(readings),
        "used_frequencies": len(used),
        "order_counts": dict(sorted(Counter(r.order for r in readings).items())),
        "order46_blocks": len(order46),
        "factorable_blocks": len(factorable),
        "matched_blocks": len(matched),
        "construction_counts": dict(Counter(r.construction for r in matched)),
        "factor_counts": dict(Counter(" * ".join(r.factors) for r in factorable if r.construction is None)),
        "match_share": len(matched) / max(len(used), 1),
        "match_share_of_factorable": len(matched) / max(len(factorable), 1),
    }
