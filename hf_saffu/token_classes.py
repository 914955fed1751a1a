"""Token structure counted in the warm start: pair profiles, token classes and anchored bit-cipher codes.

From one pass over the data, the counts n(x, y) of adjacent pairs give every token two profiles (the
`num_columns - 1` most frequent tokens get a column each, every other token shares the last column):

    successors(x)[col(y)] = n(x, y),        predecessors(y)[col(x)] = n(x, y).

Token classes (`hidden_targets="clusters"`): a hard clustering of the predecessor profiles under the
multinomial likelihood (Lloyd iterations of k-means with the log-likelihood as the score),

    class(y) = argmax_k sum_x n(x, y) ln mu_k(x),     mu_k = normalise(sum_{class(y) = k} n(., y) + alpha),

started from the profiles of the most frequent tokens (deterministic, the same on every process). The
tokens of a class follow similar contexts, so one probability per context and class predicts them all.

Anchored codes (`embedding_codes="anchored"`): the bit-cipher keeps its code levels (the b most frequent
tokens get the one-bit codes, then two-bit codes, ...) but chooses *which* code of its level a token gets:
bit i belongs to the token of rank i (its anchor), and a rarer token switches on the bits of the anchors
whose successor distributions explain its successors best,

    score(x, a) = sum_y n(x, y) ln P(y | a),

taking the best-scoring combination of its level's size that no more frequent token holds. A rare token's
vector is then a mixture of frequent tokens that behave like it, instead of an arbitrary one.
Counting and sorting only, no gradient.
"""

import itertools

import torch

CLUSTER_ITERATIONS = 10
PROFILE_SMOOTHING = 1e-2
ANCHOR_CANDIDATES = 6  # extra anchors tried beyond a level's size when the best combination is taken


def profile_columns(ranks: torch.Tensor, num_columns: int) -> torch.Tensor:
    """Column of every token in a profile: its frequency rank if below num_columns - 1, else the last column."""
    return ranks.clamp_max(num_columns - 1)


def accumulate_profiles(
    input_ids: torch.Tensor,
    target_weight: torch.Tensor,
    columns: torch.Tensor,
    successors: torch.Tensor,
    predecessors: torch.Tensor,
) -> None:
    """successors[x, col(y)] += 1 and predecessors[y, col(x)] += 1 for every predicted pair (x, y)."""
    keep = target_weight.bool()
    previous, following = input_ids[:, :-1][keep], input_ids[:, 1:][keep]
    ones = torch.ones_like(previous, dtype=successors.dtype)
    num_columns = successors.shape[1]
    successors.view(-1).index_add_(0, previous * num_columns + columns[following], ones)
    predecessors.view(-1).index_add_(0, following * num_columns + columns[previous], ones)


def log_distributions(profiles: torch.Tensor) -> torch.Tensor:
    """ln of each row normalised with the additive floor PROFILE_SMOOTHING."""
    return torch.log(profiles + PROFILE_SMOOTHING) - torch.log(
        profiles.sum(1, keepdim=True) + PROFILE_SMOOTHING * profiles.shape[1]
    )


def cluster_tokens(profiles: torch.Tensor, token_counts: torch.Tensor, num_classes: int) -> torch.Tensor:
    """class(y) in [0, num_classes) for every token, from its profile (see the module docstring)."""
    profiles = profiles.to(torch.float32)
    num_classes = min(num_classes, profiles.shape[0])
    most_frequent = torch.sort(token_counts, descending=True, stable=True).indices[:num_classes]
    centroids = profiles[most_frequent]
    classes = torch.full((profiles.shape[0],), -1, dtype=torch.long, device=profiles.device)
    for _ in range(CLUSTER_ITERATIONS):
        new_classes = (profiles @ log_distributions(centroids).T).argmax(dim=1)
        if torch.equal(new_classes, classes):
            break
        classes = new_classes
        centroids = torch.zeros_like(centroids).index_add_(0, classes, profiles)
    return classes


def anchored_codes(successors: torch.Tensor, ranks: torch.Tensor, level_codes: list[int], bits: int) -> list[int]:
    """The code (an integer, bit i = 1 << (bits - 1 - i)) of every token, indexed by token id.

    `level_codes` are the bit-cipher codes by rank (`bit_cipher_codes`): a token keeps the number of set bits
    of its rank's code, and the tokens of rank < bits keep their one-bit codes; see the module docstring.
    """
    order = torch.argsort(ranks).tolist()  # token ids, most frequent first
    anchors = order[:bits]
    scores = (successors.to(torch.float32) @ log_distributions(successors[anchors].to(torch.float32)).T).cpu()
    codes = [0] * len(order)
    taken: set[int] = set()
    level_orders = {}  # per code size: every code of that size, in order, for the fallback below
    for rank, token in enumerate(order):
        size = level_codes[rank].bit_count()
        code = level_codes[rank] if size == 1 else best_free_code(scores[token], size, bits, taken)
        if code is None:  # every combination of the best anchors is taken: the next free code of the level
            remaining = level_orders.setdefault(
                size, (code_of(a, bits) for a in itertools.combinations(range(bits), size))
            )
            code = next(c for c in remaining if c not in taken)
        codes[token] = code
        taken.add(code)
    return codes


def best_free_code(scores: torch.Tensor, size: int, bits: int, taken: set[int]) -> int | None:
    """The free code of `size` bits on the anchors with the highest summed score, among the best anchors."""
    values, best = (t.tolist() for t in torch.topk(scores, min(bits, size + ANCHOR_CANDIDATES)))
    score_of = dict(zip(best, values, strict=True))
    combinations = sorted(itertools.combinations(best, size), key=lambda anchors: -sum(map(score_of.get, anchors)))
    for anchors in combinations:
        code = code_of(anchors, bits)
        if code not in taken:
            return code
    return None


def code_of(anchors, bits: int) -> int:
    """The integer code with the bits of `anchors` switched on."""
    return sum(1 << (bits - 1 - a) for a in anchors)
