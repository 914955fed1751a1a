"""Bit-cipher token vectors: fixed, non-negative, unit-L1 codes assigned by frequency rank.

Zhao & Williams, "Bit Cipher" (arXiv 2311.11012). With b bits, the b most frequent tokens get the
one-bit codes, the next b(b-1)/2 the two-bit codes, and so on. Level k is built from level k-1 by
taking the basis bits in reverse order and, for each, walking the previous level's codes in reverse
order and switching that bit on; a code is kept the first time it appears with exactly k bits set.
The vector of a code is the code divided by its number of set bits.

This file ships to the Hub with saved models, with modeling_saffu.py and configuration_saffu.py: it imports
nothing but torch, so a saved model loads with `trust_remote_code=True` where hf_saffu is not installed.
"""

import torch


def bit_cipher_codes(num_codes: int, bits: int) -> list[int]:
    """The first `num_codes` bit-cipher codes of width `bits`, as integers (most significant bit first).

    For bits = 5 the first codes are 0b10000, 0b01000, 0b00100, 0b00010, 0b00001, 0b00011, 0b00101, ...
    """
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    if num_codes > 2**bits - 1:
        raise ValueError(f"{bits} bits give only {2**bits - 1} non-zero codes, {num_codes} were asked for")
    basis = [1 << (bits - 1 - i) for i in range(bits)]
    level = basis[:]
    codes = level[:num_codes]
    for set_bits in range(2, bits + 1):
        if len(codes) >= num_codes:
            break
        seen: set[int] = set()
        next_level = []
        for bit in reversed(basis):
            for code in reversed(level):
                candidate = code | bit
                if candidate not in seen and candidate.bit_count() == set_bits:
                    seen.add(candidate)
                    next_level.append(candidate)
        level = next_level
        codes.extend(level[: num_codes - len(codes)])
    return codes


def codes_to_vectors(codes: list[int], bits: int) -> torch.Tensor:
    """Rows of unit L1 norm: code / popcount(code), shape (len(codes), bits), float32."""
    digits = "".join(format(code, f"0{bits}b") for code in codes).encode("ascii")
    binary = (torch.frombuffer(bytearray(digits), dtype=torch.uint8).view(len(codes), bits) - ord("0")).float()
    return binary / binary.sum(dim=1, keepdim=True)


def frequency_ranks(counts: torch.Tensor) -> torch.Tensor:
    """rank[token]: 0 for the most frequent token; ties are broken by the smaller token id."""
    order = torch.argsort(-torch.as_tensor(counts, dtype=torch.float64), stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order))
    return ranks


def bit_cipher_vectors(ranks: torch.Tensor, bits: int) -> torch.Tensor:
    """Token vectors (vocab_size, bits): the bit-cipher vector of each token's frequency rank."""
    codes = codes_to_vectors(bit_cipher_codes(len(ranks), bits), bits)
    return codes[ranks]


def contextual_vectors(neighbour_sums: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Contextual bit-cipher vectors from accumulated neighbour sums.

    neighbour_sums[i] = sum over the occurrences of token i of the bit-cipher vectors of the tokens
    within the radius around it. Each row is normalised to unit L1 norm; a token never seen with a
    neighbour keeps its `fallback` (plain bit-cipher) vector.
    """
    totals = neighbour_sums.sum(dim=1, keepdim=True)
    seen = totals > 0
    normalised = neighbour_sums / totals.clamp_min(torch.finfo(neighbour_sums.dtype).tiny)
    return torch.where(seen, normalised, fallback.to(neighbour_sums.dtype))


def accumulate_neighbour_sums(input_ids: torch.Tensor, vectors: torch.Tensor, radius: int, out: torch.Tensor) -> None:
    """Add, for every token of the 1-d `input_ids`, the vectors of its neighbours within `radius` to `out`.

    out[x_t] += sum_{0 < |j| <= radius} vectors[x_{t+j}]  (positions outside the sequence are skipped).
    """
    length = input_ids.numel()
    token_vectors = vectors[input_ids].to(out.dtype)
    for offset in range(1, radius + 1):
        if offset >= length:
            break
        out.index_add_(0, input_ids[offset:], token_vectors[:-offset])
        out.index_add_(0, input_ids[:-offset], token_vectors[offset:])
