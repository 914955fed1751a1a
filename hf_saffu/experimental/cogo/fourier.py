"""Fourier view of the CoGO network: per-node coefficients, the semi-ring, the monomial
potentials and the loss written through them (docs/DESIGN.md section 7).

With ω = e^{2πi/d}, node j carries complex coefficients z_{p,k,j} (p ∈ {a, b, c}) at every
frequency k ∈ Z_d such that

    W_a[j, g] = Σ_k z_{a,k,j} ω^{kg},   W_b[j, g] = Σ_k z_{b,k,j} ω^{kg},   W_c[g, j] = Σ_k z_{c,k,j} ω^{−kg}.

Real weights have z_{p,−k} = conj(z_{p,k}); a node living at one frequency k therefore has
W_a[j, g] = 2 Re(z_a ω^{kg}) and W_c[g, j] = 2 Re(z_c ω^{−kg}). The monomial potentials are

    r_{k1 k2 k}   = Σ_j z_{a,k1,j} z_{b,k2,j} z_{c,k,j}
    r_{p,k1,k2,k} = Σ_j z_{p,k1,j} z_{p,k2,j} z_{c,k,j}        (p ∈ {a, b})

and the loss is a quadratic polynomial in them (`potential_loss`).
"""

from dataclasses import dataclass

import torch

COMPLEX = torch.complex128


def fourier_basis(modulus: int) -> torch.Tensor:
    """Symmetric matrix ω^{kg} [d, d] (exponent reduced mod d, so large d stays exact)."""
    indices = torch.arange(modulus, dtype=torch.int64)
    angles = (torch.outer(indices, indices) % modulus).double() * (2 * torch.pi / modulus)
    return torch.polar(torch.ones_like(angles), angles)


@dataclass(frozen=True)
class FourierWeights:
    """Fourier coefficients z_a, z_b, z_c of a network, each complex [q, d] (node, frequency).

    They form a semi-ring over networks of any width: `z1 + z2` concatenates the hidden nodes,
    `z1 * z2` pairs every node of z1 with every node of z2 and multiplies their coefficients
    frequency by frequency (q1·q2 nodes). The monomial potentials are ring homomorphisms:
    r(z1 + z2) = r(z1) + r(z2) and r(z1 * z2) = r(z1) ∘ r(z2) entry by entry.
    """

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return self.a.shape[0]

    @property
    def modulus(self) -> int:
        return self.a.shape[1]

    def __add__(self, other: "FourierWeights") -> "FourierWeights":
        return FourierWeights(*(torch.cat([mine, theirs]) for mine, theirs in self._paired(other)))

    def __mul__(self, other: "FourierWeights") -> "FourierWeights":
        return FourierWeights(
            *((mine[:, None, :] * theirs[None, :, :]).flatten(0, 1) for mine, theirs in self._paired(other))
        )

    def scaled(self, a: complex = 1.0, b: complex = 1.0, c: complex = 1.0) -> "FourierWeights":
        """Multiply every z_a by a, z_b by b and z_c by c."""
        return FourierWeights(self.a * a, self.b * b, self.c * c)

    def _paired(self, other: "FourierWeights"):
        if self.modulus != other.modulus:
            raise ValueError(f"cannot combine networks over Z_{self.modulus} and Z_{other.modulus}")
        return zip((self.a, self.b, self.c), (other.a, other.b, other.c), strict=True)


def to_fourier(w_a: torch.Tensor, w_b: torch.Tensor, w_c: torch.Tensor) -> FourierWeights:
    """z_{p,k,j} = (1/d) Σ_g W_p[j, g] ω^{−kg} for p ∈ {a, b};  z_{c,k,j} = (1/d) Σ_g W_c[g, j] ω^{kg}."""
    modulus = w_a.shape[1]
    basis = fourier_basis(modulus)
    return FourierWeights(
        a=w_a.to(COMPLEX) @ basis.conj() / modulus,
        b=w_b.to(COMPLEX) @ basis.conj() / modulus,
        c=w_c.T.to(COMPLEX) @ basis / modulus,
    )


def to_weights(z: FourierWeights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `to_fourier`: real float64 W_a, W_b (q x d) and W_c (d x q). Coefficients
    that are not conjugate-symmetric lose their imaginary part."""
    basis = fourier_basis(z.modulus)
    return (z.a @ basis).real, (z.b @ basis).real, (z.c @ basis.conj()).real.T


@dataclass(frozen=True)
class MonomialPotentials:
    """r_{k1 k2 k} (`abc`) and r_{p,k1,k2,k} (`aac`, `bbc`), each complex [d, d, d]."""

    abc: torch.Tensor
    aac: torch.Tensor
    bbc: torch.Tensor


def monomial_potentials(z: FourierWeights) -> MonomialPotentials:
    """Sums over hidden nodes of products of one coefficient from each of (a|a|b, b|a|b, c)."""
    return MonomialPotentials(
        abc=torch.einsum("jx,jy,jk->xyk", z.a, z.b, z.c),
        aac=torch.einsum("jx,jy,jk->xyk", z.a, z.a, z.c),
        bbc=torch.einsum("jx,jy,jk->xyk", z.b, z.b, z.c),
    )


def potential_loss(r: MonomialPotentials) -> torch.Tensor:
    """The centred L2 loss of §6 written through the monomial potentials.

    Expanding o in the basis ω^{m1 g1 + m2 g2 − k g}, its coefficient is

        O[m1, m2, k] = 2 r_{m1 m2 k} + δ_{m2,0} Σ_{k1+k2=m1} r_{a,k1,k2,k} + δ_{m1,0} Σ_{k1+k2=m2} r_{b,k1,k2,k}

    and the target e_y − 1/d has coefficient T[m1, m2, k] = δ_{m1,k} δ_{m2,k} / d for k ≠ 0;
    P⊥ drops k = 0. Parseval over the d³ points (g1, g2, g) then gives

        loss = d Σ_{m1, m2} Σ_{k ≠ 0} |O[m1, m2, k] − T[m1, m2, k]|².

    With r̃ = 2d·r and inputs free of the constant frequency the loss is zero exactly when, for
    every k ≠ 0, r̃_{kkk} = 1, every other r̃_{k1 k2 k} = 0, Σ_p Σ_{k'} r̃_{p,k',−k',k} = 0 and
    Σ_{k'} r̃_{p,k',m−k',k} = 0 for every m ≠ 0.
    """
    modulus = r.abc.shape[0]
    frequencies = torch.arange(modulus)
    # second index of the pair (k1, m − k1) summing to m, laid out as [m, k1]
    partner = (frequencies[:, None] - frequencies[None, :]) % modulus
    self_sum_a = r.aac[frequencies[None, :], partner].sum(dim=1)  # [m, k]
    self_sum_b = r.bbc[frequencies[None, :], partner].sum(dim=1)

    coefficients = 2 * r.abc
    coefficients[:, 0, :] += self_sum_a
    coefficients[0, :, :] += self_sum_b
    coefficients[frequencies, frequencies, frequencies] -= 1.0 / modulus
    return modulus * coefficients[:, :, 1:].abs().square().sum()
