"""Token classes and anchored bit-cipher codes (hf_saffu.token_classes): counting only, checked on planted structure."""

import torch

from hf_saffu.bit_cipher import bit_cipher_codes, frequency_ranks
from hf_saffu.token_classes import accumulate_profiles, anchored_codes, cluster_tokens, profile_columns


def planted_profiles(num_tokens: int = 30, num_classes: int = 3, columns: int = 12, seed: int = 0):
    """Profiles drawn from one of `num_classes` distinct distributions per token; returns (profiles, classes)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.zeros(num_classes, columns)
    for k in range(num_classes):  # disjoint supports: the classes are unambiguous
        centres[k, k * (columns // num_classes) : (k + 1) * (columns // num_classes)] = 1.0
    classes = torch.arange(num_tokens) % num_classes
    profiles = torch.stack(
        [
            torch.multinomial(centres[k] / centres[k].sum(), 200, replacement=True, generator=generator)
            .bincount(minlength=columns)
            .double()
            for k in classes
        ]
    )
    return profiles, classes


def test_cluster_tokens_recovers_planted_classes():
    profiles, classes = planted_profiles()
    found = cluster_tokens(profiles, profiles.sum(1), 3)
    # the same partition, whatever the class labels
    for k in range(3):
        assert len(set(found[classes == k].tolist())) == 1
    assert len(set(found.tolist())) == 3


def test_accumulate_profiles_counts_every_predicted_pair():
    ids = torch.tensor([[0, 1, 2, 1, 0], [2, 2, 1, 0, 0]])
    weight = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # the last pair of row 2 is padding
    columns = profile_columns(torch.tensor([0, 1, 2]), 3)
    successors, predecessors = torch.zeros(3, 3), torch.zeros(3, 3)
    accumulate_profiles(ids, weight, columns, successors, predecessors)
    pairs = [(0, 1), (1, 2), (2, 1), (1, 0), (2, 2), (2, 1), (1, 0)]
    expected = torch.zeros(3, 3)
    for a, b in pairs:
        expected[a, b] += 1
    torch.testing.assert_close(successors, expected)
    torch.testing.assert_close(predecessors, expected.T)


def test_anchored_codes_keep_levels_are_unique_and_follow_the_successors():
    """Tokens 0-3 are anchors (one-bit codes); token 4 behaves exactly like anchors 1 and 2 together, token 5
    like anchors 0 and 3: their two-bit codes switch on those anchors' bits."""
    bits, vocab = 4, 8
    successors = torch.zeros(vocab, 6, dtype=torch.float64)
    for anchor, column in enumerate([0, 1, 2, 3]):
        successors[anchor, column] = 100.0 - anchor
    successors[4, [1, 2]] = 5.0
    successors[5, [0, 3]] = 5.0
    successors[6, [4]] = 2.0
    successors[7, [5]] = 1.0
    ranks = frequency_ranks(successors.sum(1))
    codes = anchored_codes(successors, ranks, bit_cipher_codes(vocab, bits), bits)
    assert len(set(codes)) == vocab
    assert [codes[t].bit_count() for t in range(vocab)] == [1, 1, 1, 1, 2, 2, 2, 2]
    bit = [1 << (bits - 1 - a) for a in range(bits)]
    assert codes[:4] == bit
    assert codes[4] == bit[1] | bit[2] and codes[5] == bit[0] | bit[3]
