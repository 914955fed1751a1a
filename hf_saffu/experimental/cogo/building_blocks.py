"""Partial solutions for one frequency k (docs/DESIGN.md section 7), as `FourierWeights` over Z_d.

Each block lists, per node, the coefficients (z_a, z_b, z_c) at frequency k; the node is
real, so the coefficients at −k are their conjugates. ω₃ = e^{2πi/3}.

    z_syn      (3 nodes)            a = b = c = (1, ω₃, ω₃²)
    z_ν        (2 nodes, ν ≠ 0)     a = (1, ν),  b = (1, −ν),  c = (1, −ν⁻²)
    z_{ν=i}    (2 nodes)            a = (1, i),  b = (1, −i),  c = (1, 1)
    z_ξ        (2 nodes, |ξ| = 1)   a = (1, ξ),  b = (1, i ξ̄),  c = (1, −i)

Each kills part of the unwanted potentials at frequency k; products of blocks kill the union.
"""

import cmath

import torch

from .fourier import COMPLEX, FourierWeights

OMEGA_3 = cmath.exp(2j * cmath.pi / 3)


def single_frequency_nodes(modulus: int, frequency: int, a, b, c) -> FourierWeights:
    """Nodes living at ±frequency with coefficients a, b, c (one entry per node) at +frequency."""
    if not 0 < frequency < modulus or 2 * frequency == modulus:
        raise ValueError(f"frequency must lie in 1..{modulus - 1} and differ from d/2, got {frequency}")
    coefficients = []
    for values in (a, b, c):
        values = torch.as_tensor(values, dtype=COMPLEX)
        z = torch.zeros(len(values), modulus, dtype=COMPLEX)
        z[:, frequency] = values
        z[:, modulus - frequency] = values.conj()
        coefficients.append(z)
    return FourierWeights(*coefficients)


def syn_block(modulus: int, frequency: int) -> FourierWeights:
    """z_syn: a = b = c = (1, ω₃, ω₃²)."""
    cube_roots = [1.0, OMEGA_3, OMEGA_3**2]
    return single_frequency_nodes(modulus, frequency, cube_roots, cube_roots, cube_roots)


def nu_block(modulus: int, frequency: int, nu: complex = 1.0) -> FourierWeights:
    """z_ν: a = (1, ν), b = (1, −ν), c = (1, −ν⁻²)."""
    if nu == 0:
        raise ValueError("nu must be non-zero")
    return single_frequency_nodes(modulus, frequency, [1.0, nu], [1.0, -nu], [1.0, -(nu**-2)])


def nu_i_block(modulus: int, frequency: int) -> FourierWeights:
    """z_{ν=i}: a = (1, i), b = (1, −i), c = (1, 1), i.e. z_ν at ν = i."""
    return nu_block(modulus, frequency, 1j)


def xi_block(modulus: int, frequency: int, xi: complex = 1.0) -> FourierWeights:
    """z_ξ: a = (1, ξ), b = (1, i ξ̄), c = (1, −i), with |ξ| = 1."""
    if abs(abs(xi) - 1.0) > 1e-12:
        raise ValueError(f"xi must have modulus 1, got |xi| = {abs(xi)}")
    xi = complex(xi)
    return single_frequency_nodes(modulus, frequency, [1.0, xi], [1.0, 1j * xi.conjugate()], [1.0, -1j])


def constant_node(modulus: int, output: dict[int, complex]) -> FourierWeights:
    """One node with W_a = W_b = ½·1 (activation 1 on every pair) and z_c given per frequency
    (conjugate at −k): W_c[g] = Σ_k 2 Re(output[k] ω^{−kg})."""
    a = torch.zeros(1, modulus, dtype=COMPLEX)
    a[0, 0] = 0.5
    c = torch.zeros(1, modulus, dtype=COMPLEX)
    for frequency, value in output.items():
        c[0, frequency] = value
        c[0, modulus - frequency] = complex(value).conjugate()
    return FourierWeights(a, a.clone(), c)
