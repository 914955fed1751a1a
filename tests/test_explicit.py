"""Tests of the explicit softmax solution (hf_saffu.explicit) and of the classifiers built on it.

Notation as in hf_saffu/explicit.py: inputs x >= 0 (D), classes N, F = sum_m x_m^T y_m, priming number
K = mean ||x_m||_1, explicit solution U = ln(F + alpha), b_j = -(K - 1) ln phi_j, phi_j = sum_i (F_ij + alpha).
"""

import numpy as np
import pytest
import torch

from hf_saffu import explicit
from hf_saffu.experimental.explicit_classifier import ExplicitSoftmaxClassifier, ExplicitTwoLayerClassifier
from hf_saffu.explicit import (
    Cooccurrence,
    ExplicitStatisticsError,
    discounted_counts,
    kneser_ney_discounts,
    softmax_cross_entropy,
    solve_bigram_channel,
    solve_ngram_channel,
    solve_softmax,
)

# --- synthetic problems -------------------------------------------------------------------------------------------


def one_hot_problem(num_inputs=6, num_classes=4, num_rows=3000, seed=0):
    """One-hot inputs (category i) with labels drawn from a random P(y | i); pair (0, 0) never occurs (a zero count)."""
    generator = torch.Generator().manual_seed(seed)
    conditionals = torch.rand(num_inputs, num_classes, generator=generator, dtype=torch.float64) + 0.05
    conditionals[0, 0] = 0.0
    categories = torch.randint(num_inputs, (num_rows,), generator=generator)
    labels = torch.multinomial(conditionals[categories], 1, generator=generator).squeeze(1)
    inputs = torch.nn.functional.one_hot(categories, num_inputs).to(torch.float64)
    return inputs, labels


def bag_problem(bag_size=3, vocab_size=20, num_classes=5, num_rows=4000, seed=0):
    """Bags of `bag_size` tokens drawn from class-conditional token distributions (a naive-Bayes world)."""
    generator = torch.Generator().manual_seed(seed)
    token_probs = torch.rand(num_classes, vocab_size, generator=generator, dtype=torch.float64) ** 4
    class_prior = torch.arange(num_classes, 0, -1, dtype=torch.float64) ** 2  # skewed, so that the bias matters
    labels = torch.multinomial(class_prior, num_rows, replacement=True, generator=generator)
    tokens = torch.multinomial(token_probs[labels], bag_size, replacement=True, generator=generator)
    inputs = torch.zeros(num_rows, vocab_size, dtype=torch.float64).scatter_add_(
        1, tokens, torch.ones_like(tokens, dtype=torch.float64)
    )
    return inputs, labels


def explicit_solution(inputs, labels, num_classes, smoothing):
    statistics = Cooccurrence.zeros(inputs.shape[1], num_classes)
    statistics.add(inputs, labels)
    return statistics.solve(smoothing)


def summed_loss_gradients(inputs, labels, weight, bias):
    """Autograd gradients of L = sum_m -ln softmax(x_m U + b)_{y_m} with respect to U and b."""
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    loss = softmax_cross_entropy(inputs, labels, weight, bias) * len(labels)
    return torch.autograd.grad(loss, (weight, bias))


def mean_kl(log_p, log_q):
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    """The benchmark's split of scikit-learn's 8x8 digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        data.data / 16.0, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return train_x, train_y, test_x, test_y


# --- the explicit solution ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [1e-8, 1e-2])
def test_one_hot_explicit_solution_is_stationary(smoothing):
    # For one-hot inputs dL/dU_ij = n_i P_ij - F_ij = alpha (n_i - N F_ij) / (n_i + N alpha), so |dL/dU_ij| <= N alpha
    # and |dL/db_j| <= D N alpha: exact stationarity as alpha -> 0, approximate (bounded by N alpha) for alpha > 0.
    inputs, labels = one_hot_problem()
    num_inputs, num_classes = inputs.shape[1], 4
    weight, bias = explicit_solution(inputs, labels, num_classes, smoothing)
    assert torch.equal(bias, torch.zeros(num_classes, dtype=torch.float64))  # K = 1: no bias
    grad_weight, grad_bias = summed_loss_gradients(inputs, labels, weight, bias)
    assert grad_weight.abs().max() <= num_classes * smoothing + 1e-9
    assert grad_bias.abs().max() <= num_inputs * num_classes * smoothing + 1e-9
    # The check has power: a slightly perturbed solution has gradients of order M / D.
    noise = 0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert summed_loss_gradients(inputs, labels, weight + noise, bias)[0].abs().max() > 1.0


def test_priming_number_is_computed_from_the_data():
    inputs, labels = bag_problem(bag_size=3)
    statistics = Cooccurrence.zeros(inputs.shape[1], 5)
    statistics.add(inputs, labels)
    assert statistics.priming_number == 3.0
    # Rows with weight 0 are left out of K and of F.
    mixed = torch.cat([inputs, 7 * inputs[:10]])
    weights = torch.cat([torch.ones(len(inputs)), torch.zeros(10)])
    masked = Cooccurrence.zeros(inputs.shape[1], 5)
    masked.add(mixed, torch.cat([labels, labels[:10]]), weights)
    assert masked.priming_number == 3.0
    torch.testing.assert_close(masked.counts, statistics.counts, rtol=0, atol=0)


def test_priming_number_of_pixel_features_is_their_mean_mass(digits):
    train_x, train_y, _, _ = digits
    classifier = ExplicitSoftmaxClassifier(10).fit([(train_x, train_y)])
    assert classifier.priming_number == pytest.approx(train_x.sum(axis=1).mean(), rel=1e-12)
    assert 15 < classifier.priming_number < 25  # about 19.5 for these images, far from 1


def lbfgs_minimum(inputs, labels, weight, bias, **lbfgs_options) -> float:
    """Cross-entropy reached by LBFGS (strong Wolfe line search) started from copies of (weight, bias)."""
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    optimizer = torch.optim.LBFGS([weight, bias], line_search_fn="strong_wolfe", **lbfgs_options)

    def closure():
        optimizer.zero_grad()
        loss = softmax_cross_entropy(inputs, labels, weight, bias)
        loss.backward()
        return loss

    optimizer.step(closure)
    return softmax_cross_entropy(inputs, labels, weight, bias).item()


def test_bag_of_words_explicit_loss_is_near_the_lbfgs_optimum():
    # Margin: the explicit (naive Bayes) loss is within 0.01 nats of the optimum that LBFGS reaches from it
    # (measured 0.174 vs 0.169); the uniform predictor scores ln 5 = 1.61, and dropping the priming-number bias
    # b_j = -(K - 1) ln phi_j would leave the explicit loss 0.15 nats above the optimum.
    inputs, labels = bag_problem(bag_size=3)
    weight, bias = explicit_solution(inputs, labels, 5, smoothing=1e-2)
    explicit_loss = softmax_cross_entropy(inputs, labels, weight, bias).item()
    optimum = lbfgs_minimum(inputs, labels, weight, bias, max_iter=300, tolerance_change=1e-12)
    assert optimum <= explicit_loss < optimum + 0.01


def test_gradient_descent_from_a_random_start_moves_toward_the_explicit_solution():
    # Mean KL(p_explicit || p_GD) over the data: measured 3.6 at the start, 0.016 after 200 Adam steps, still falling
    # (toward a solution without the bias it would stall near 0.12).
    inputs, labels = bag_problem(bag_size=3)
    weight, bias = explicit_solution(inputs, labels, 5, smoothing=1e-2)
    explicit_log_proba = torch.log_softmax(inputs @ weight + bias, dim=-1)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(weight.shape, generator=generator, dtype=torch.float64).requires_grad_()
    bias = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    kl = []
    for _ in range(200):
        with torch.no_grad():
            kl.append(mean_kl(explicit_log_proba, torch.log_softmax(inputs @ weight + bias, dim=-1)))
        optimizer.zero_grad()
        softmax_cross_entropy(inputs, labels, weight, bias).backward()
        optimizer.step()
    assert kl[0] > kl[100] > kl[-1]
    assert kl[-1] < 0.05


@pytest.mark.parametrize("smoothing", [1e-300, 1e-2, 1.0])
def test_zero_counts_give_finite_parameters(smoothing):
    # Class 2 never occurs (a zero column), input 3 is never active (a zero row), and K is large.
    inputs = torch.tensor([[40.0, 0.0, 2.0, 0.0], [0.0, 50.0, 1.0, 0.0], [5.0, 5.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 3])
    classifier = ExplicitSoftmaxClassifier(4, smoothing).fit([(inputs, labels)])
    assert torch.isfinite(classifier.weight).all() and torch.isfinite(classifier.bias).all()
    probabilities = classifier.predict_proba(torch.tensor([[0.0, 0.0, 0.0, 9.0], [1e3, 0.0, 0.0, 0.0]]))
    assert torch.isfinite(probabilities).all()
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2, dtype=torch.float64))


def test_class_ids_and_one_hot_targets_give_the_same_statistics():
    inputs, labels = bag_problem(num_rows=200)
    by_id, by_distribution = Cooccurrence.zeros(20, 5), Cooccurrence.zeros(20, 5)
    by_id.add(inputs, labels)
    by_distribution.add(inputs, torch.nn.functional.one_hot(labels, 5).to(torch.float64))
    torch.testing.assert_close(by_id.counts, by_distribution.counts, rtol=0, atol=1e-12)
    expected = torch.zeros(20, 5, dtype=torch.float64)
    for x, y in zip(inputs, labels, strict=True):
        expected[:, y] += x
    torch.testing.assert_close(by_id.counts, expected, rtol=0, atol=1e-12)


def test_softmax_cross_entropy_matches_its_definition():
    inputs, labels = bag_problem(num_rows=50)
    weight, bias = explicit_solution(inputs, labels, 5, smoothing=0.5)
    log_proba = torch.log_softmax(inputs @ weight + bias, dim=-1)
    expected = -log_proba[torch.arange(50), labels].mean()
    torch.testing.assert_close(softmax_cross_entropy(inputs, labels, weight, bias), expected)
    targets = torch.softmax(torch.randn(50, 5, dtype=torch.float64), dim=-1)
    expected = -(targets * log_proba).sum(dim=1).mean()
    torch.testing.assert_close(softmax_cross_entropy(inputs, targets, weight, bias), expected)


@pytest.mark.parametrize(
    ("counts", "priming", "smoothing", "message"),
    [
        (torch.tensor([[1.0, -1.0]]), 1.0, 0.1, "negative"),
        (torch.tensor([[1.0, float("nan")]]), 1.0, 0.1, "non-finite"),
        (torch.tensor([[1.0, 2.0]]), 1.0, 0.0, "smoothing"),
        (torch.tensor([[1.0, 2.0]]), 1.0, -1.0, "smoothing"),
        (torch.tensor([[1.0, 2.0]]), float("inf"), 0.1, "priming"),
        (torch.tensor([[1.0, 2.0]]), float("nan"), 0.1, "priming"),
        (torch.tensor([[1.0, 2.0]]), 0.0, 0.1, "priming"),
        (torch.zeros(2, 2), 1.0, 0.1, "all zeros"),
    ],
)
def test_solve_softmax_rejects_bad_statistics(counts, priming, smoothing, message):
    with pytest.raises(ExplicitStatisticsError, match=message):
        solve_softmax(counts, priming, smoothing)


def test_priming_override_solves_as_if_inputs_had_that_mass():
    """Solving with priming K' equals the paper's solution for the inputs rescaled to L1 norm K'."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.softmax(torch.randn(200, 6, generator=generator), dim=-1)  # unit L1: measured K = 1
    labels = torch.randint(0, 4, (200,), generator=generator)
    unit, rescaled = Cooccurrence.zeros(6, 4), Cooccurrence.zeros(6, 4)
    unit.add(inputs, labels)
    rescaled.add(3.0 * inputs, labels)
    weight, bias = unit.solve(smoothing=1e-3, priming=3.0)
    reference_weight, reference_bias = rescaled.solve(smoothing=3e-3)  # the smoothing scales with F
    assert unit.priming_number == pytest.approx(1.0)
    assert rescaled.priming_number == pytest.approx(3.0)
    # same logits up to a constant per input row, hence the same softmax
    torch.testing.assert_close(
        torch.log_softmax(inputs.double() @ weight + bias, dim=-1),
        torch.log_softmax(3.0 * inputs.double() @ reference_weight + reference_bias, dim=-1),
    )
    paper_weight, paper_bias = unit.solve(smoothing=1e-3)
    torch.testing.assert_close(weight, 3.0 * paper_weight)
    assert torch.all(bias < paper_bias)  # -(K - 1) ln phi with phi > 1


# --- the classifiers ----------------------------------------------------------------------------------------------


def test_classifier_is_the_explicit_solution():
    inputs, labels = bag_problem()
    classifier = ExplicitSoftmaxClassifier(5, smoothing=0.3).fit([(inputs, labels)])
    weight, bias = explicit_solution(inputs, labels, 5, smoothing=0.3)
    assert torch.equal(classifier.weight, weight) and torch.equal(classifier.bias, bias)
    assert classifier.cross_entropy(inputs, labels) == pytest.approx(
        softmax_cross_entropy(inputs, labels, weight, bias).item()
    )


def test_classifier_weights_are_dense_for_optimisers():
    # LBFGS flattens gradients with .view(-1), which fails on the transposed view that Cooccurrence.counts returns.
    inputs, labels = bag_problem(num_rows=200)
    classifier = ExplicitSoftmaxClassifier(5).fit([(inputs, labels)])
    assert classifier.weight.is_contiguous()
    improved = lbfgs_minimum(inputs, labels, classifier.weight, classifier.bias, max_iter=5)
    assert improved < classifier.cross_entropy(inputs, labels)


def test_cooccurrence_solution_is_contiguous():
    inputs, labels = bag_problem(num_rows=200)
    weight, _ = explicit_solution(inputs, labels, 5, smoothing=1e-2)
    assert weight.is_contiguous()


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (np.array([[1.0, -0.5], [0.0, 1.0]]), "features holds negative values"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "features holds non-finite values"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "features holds non-finite values"),
    ],
)
def test_classifier_rejects_negative_or_non_finite_features(features, message):
    classifier = ExplicitSoftmaxClassifier(2)
    good = (np.ones((2, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match=message) as error:
        classifier.fit([good, (features, np.array([0, 1]))])
    assert isinstance(error.value, ExplicitStatisticsError)
    assert classifier.weight is None


def test_classifier_rejects_empty_data_and_bad_labels():
    with pytest.raises(ExplicitStatisticsError, match="no batches"):
        ExplicitSoftmaxClassifier(3).fit([])
    with pytest.raises(ExplicitStatisticsError, match="no data"):
        ExplicitSoftmaxClassifier(3).fit([(np.zeros((0, 4)), np.zeros(0, dtype=np.int64))])
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 3\)"):
        ExplicitSoftmaxClassifier(3).fit([(np.ones((2, 4)), np.array([0, 3]))])
    with pytest.raises(ValueError, match="features"):
        ExplicitSoftmaxClassifier(3).fit([(np.ones((2, 4)), np.array([0, 1])), (np.ones((2, 5)), np.array([0, 1]))])
    with pytest.raises(RuntimeError, match="not fitted"):
        ExplicitSoftmaxClassifier(3).predict(np.ones((2, 4)))


def test_streaming_in_batches_equals_one_batch():
    inputs, labels = bag_problem(bag_size=4, num_rows=1000)
    whole = ExplicitSoftmaxClassifier(5).fit([(inputs, labels)])
    edges = [0, 1, 17, 300, 301, 650, 1000]
    pieces = ((inputs[a:b].numpy(), labels[a:b].numpy()) for a, b in zip(edges[:-1], edges[1:], strict=True))
    streamed = ExplicitSoftmaxClassifier(5).fit(pieces)  # a one-pass generator, numpy batches
    torch.testing.assert_close(streamed.weight, whole.weight, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(streamed.bias, whole.bias, rtol=1e-13, atol=1e-13)
    assert streamed.priming_number == pytest.approx(whole.priming_number, rel=1e-14) == 4.0


def test_numpy_and_torch_inputs_agree_and_outputs_are_tensors():
    inputs, labels = bag_problem(num_rows=300)
    classifier = ExplicitSoftmaxClassifier(5).fit([(inputs.numpy(), labels.numpy())])
    probabilities = classifier.predict_proba(inputs.numpy())
    assert isinstance(probabilities, torch.Tensor) and probabilities.shape == (300, 5)
    torch.testing.assert_close(probabilities, classifier.predict_proba(inputs))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(300, dtype=torch.float64))
    assert torch.equal(classifier.predict(inputs), probabilities.argmax(dim=1))
    assert classifier.score(inputs.numpy(), labels.numpy()) == classifier.score(inputs, labels)


def test_explicit_fit_on_digits_beats_chance_by_a_wide_margin(digits):
    # Measured 0.902 test accuracy (train 0.906) on this split with alpha = 1e-2; the floor is 0.88, chance is 0.10.
    train_x, train_y, test_x, test_y = digits
    classifier = ExplicitSoftmaxClassifier(10).fit([(train_x, train_y)])
    assert classifier.score(test_x, test_y) >= 0.88
    assert classifier.score(train_x, train_y) >= 0.88
    assert classifier.cross_entropy(test_x, test_y) < 0.5  # chance: ln 10 = 2.30


def test_two_layer_warm_start_on_digits(digits):
    # With 10 hidden bits every class gets a one-bit label code; measured 0.902 test accuracy, floor 0.88.
    train_x, train_y, test_x, test_y = digits
    classifier = ExplicitTwoLayerClassifier(10, hidden_size=10).fit([(train_x, train_y)])
    assert classifier.score(test_x, test_y) >= 0.88
    hidden = classifier.hidden.predict_proba(test_x)
    assert hidden.shape == (len(test_x), 10)
    torch.testing.assert_close(hidden.sum(dim=1), torch.ones(len(test_x), dtype=torch.float64))


def test_two_layer_hidden_statistics_equal_accumulating_label_embeddings():
    # F_hidden = sum_m x_m^T l(y_m) = F L: the shortcut must equal accumulating the embedded targets directly.
    inputs, labels = bag_problem(num_classes=5, num_rows=500)
    classifier = ExplicitTwoLayerClassifier(5, hidden_size=3, smoothing=0.1).fit([(inputs, labels)])
    direct = Cooccurrence.zeros(20, 3)
    direct.add(inputs, classifier.label_embeddings[labels])
    weight, bias = direct.solve(0.1)
    torch.testing.assert_close(classifier.hidden.weight, weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(classifier.hidden.bias, bias, rtol=1e-12, atol=1e-12)
    # Codes by frequency rank: the three most frequent labels get one-bit codes, the other two two-bit codes.
    ranks = torch.argsort(torch.argsort(-torch.bincount(labels, minlength=5).double(), stable=True))
    assert (classifier.label_embeddings[ranks < 3] == 1.0).sum() == 3
    assert (classifier.label_embeddings[ranks >= 3] == 0.5).sum() == 4
    with pytest.raises(TypeError, match="re-iterable"):
        ExplicitTwoLayerClassifier(5, 3).fit(batch for batch in [(inputs, labels)])


def test_save_load_round_trip(tmp_path):
    inputs, labels = bag_problem(num_rows=300)
    classifier = ExplicitSoftmaxClassifier(5, smoothing=0.25).fit([(inputs, labels)])
    classifier.save(tmp_path / "one")
    loaded = ExplicitSoftmaxClassifier.load(tmp_path / "one")
    assert (loaded.num_classes, loaded.smoothing, loaded.priming_number) == (5, 0.25, classifier.priming_number)
    assert torch.equal(loaded.weight, classifier.weight) and torch.equal(loaded.bias, classifier.bias)
    torch.testing.assert_close(loaded.predict_proba(inputs), classifier.predict_proba(inputs), rtol=1e-12, atol=1e-15)

    two_layer = ExplicitTwoLayerClassifier(5, hidden_size=4).fit([(inputs, labels)])
    two_layer.save(tmp_path / "two")
    loaded = ExplicitTwoLayerClassifier.load(tmp_path / "two")
    torch.testing.assert_close(loaded.predict_proba(inputs), two_layer.predict_proba(inputs), rtol=1e-12, atol=1e-15)
    assert torch.equal(loaded.label_embeddings, two_layer.label_embeddings)
    with pytest.raises(ValueError, match="ExplicitTwoLayerClassifier, not a ExplicitSoftmaxClassifier"):
        ExplicitSoftmaxClassifier.load(tmp_path / "two")
    with pytest.raises(RuntimeError, match="not fitted"):
        ExplicitSoftmaxClassifier(5).save(tmp_path / "unfitted")


def test_discounted_counts_are_interpolated_absolute_discounting():
    """One-hot rows: P(j | i) = max(F_ij - D, 0) / n_i + (R_i + alpha) / n_i * pi_j with R_i = sum_j min(F_ij, D),
    rows keep their mass n_i + alpha, and the explicit solution's softmax is exactly that distribution."""
    counts = torch.tensor([[5.0, 1.0, 0.0, 0.5], [0.0, 0.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    discount, alpha = 0.75, 0.01
    marginal = (counts.sum(0) + alpha) / (counts.sum() + alpha * 4)
    expected = torch.zeros_like(counts)
    for i in range(3):
        removed = sum(min(value, discount) for value in counts[i].tolist())
        for j in range(4):
            expected[i, j] = max(counts[i, j].item() - discount, 0) + (removed + alpha) * marginal[j]
    smoothed = discounted_counts(counts, discount, alpha)
    torch.testing.assert_close(smoothed, expected)
    torch.testing.assert_close(smoothed.sum(1), counts.sum(1) + alpha)
    weight, bias = solve_softmax(counts, priming=1.0, smoothing=alpha, discount=discount)
    torch.testing.assert_close(torch.softmax(weight + bias, dim=1), expected / expected.sum(1, keepdim=True))
    assert (smoothed > 0).all()


@pytest.mark.parametrize("discount", [True, False])
def test_bigram_channel_is_the_interpolated_kneser_ney_bigram(discount):
    """softmax(b + S[x]) of the sparse solution equals the dense estimate row for row: interpolated modified
    Kneser-Ney, P(y | x) ~ max(n_xy - D(n_xy), 0) + gamma_x P_c(y) with P_c from distinct predecessors, or the
    additive floor n_xy + alpha; a pivot never seen gets P_c (or uniform)."""
    vocab, alpha = 7, 0.01
    generator = torch.Generator().manual_seed(0)
    dense = torch.poisson(torch.rand(vocab, vocab, generator=generator) * 3, generator=generator).double()
    dense[vocab - 1] = 0  # a pivot never seen
    keys = torch.nonzero(dense.flatten()).flatten()
    values, bias = solve_bigram_channel(keys, dense.flatten()[keys], vocab, alpha, discount=discount)
    logits = torch.zeros(vocab * vocab, dtype=torch.float64).index_put((keys,), values).view(vocab, vocab) + bias
    if discount:
        d = kneser_ney_discounts(dense[dense > 0])
        per_entry = torch.where(dense == 0, 0.0, d[(dense.clamp(1, 3) - 1).long()])
        predecessors = (dense > 0).sum(0).double()
        continuation = (predecessors + alpha) / (predecessors.sum() + alpha * vocab)
        expected = (dense - per_entry) + per_entry.sum(1, keepdim=True) * continuation
        expected[vocab - 1] = continuation
    else:
        expected = dense + alpha
    torch.testing.assert_close(torch.softmax(logits, 1), expected / expected.sum(1, keepdim=True))
    assert (values > 0).all()


def test_trigram_channel_is_kneser_ney_over_the_lower_order():
    """softmax(ln P2(. | x) + T[w x]) equals max(n_wxy - D, 0) + gamma_wx P2(y | x), normalised, for every seen
    history (w, x), with any lower-order distribution P2."""
    vocab, generator = 5, torch.Generator().manual_seed(1)
    dense = torch.poisson(torch.rand(vocab, vocab, vocab, generator=generator) * 2, generator=generator).double()
    lower = torch.softmax(torch.randn(vocab, vocab, generator=generator, dtype=torch.float64), 1)  # P2(y | x)
    keys = torch.nonzero(dense.flatten()).flatten()
    x, y = (keys // vocab) % vocab, keys % vocab
    values = solve_ngram_channel(keys, dense.flatten()[keys], lower[x, y], vocab)
    corrections = torch.zeros(vocab**3, dtype=torch.float64).index_put((keys,), values).view(vocab, vocab, vocab)
    d = kneser_ney_discounts(dense[dense > 0])
    per_entry = torch.where(dense == 0, 0.0, d[(dense.clamp(1, 3) - 1).long()])
    expected = (dense - per_entry) + per_entry.sum(2, keepdim=True) * lower[None]
    seen = dense.sum(2) > 0
    got = torch.softmax(torch.log(lower)[None] + corrections, 2)
    torch.testing.assert_close(got[seen], (expected / expected.sum(2, keepdim=True))[seen])
    assert seen.sum() > 10 and (values > 0).all()


def test_kneser_ney_discounts_follow_the_count_of_counts():
    counts = torch.tensor([1.0] * 10 + [2.0] * 4 + [3.0] * 2 + [4.0] * 1)
    y = 10 / (10 + 2 * 4)
    expected = [1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2]
    torch.testing.assert_close(kneser_ney_discounts(counts), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("one_hot", [False, True])
def test_statistics_added_in_blocks_of_rows_equal_the_sums(monkeypatch, one_hot):
    """`Cooccurrence.add` converts its rows in blocks of at most CHUNK_BYTES (here 3 rows of 20 float64 entries,
    so 200 rows take 67 blocks): F, K and M equal the sums over every row, weights included."""
    monkeypatch.setattr(explicit, "CHUNK_BYTES", 3 * 8 * 20)
    inputs, labels = bag_problem(num_rows=200)
    weights = torch.rand(200, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    statistics = Cooccurrence.zeros(20, 5)
    targets = torch.nn.functional.one_hot(labels, 5).to(torch.float64) if one_hot else labels
    statistics.add(inputs.to(torch.float32), targets, weights)
    expected = torch.zeros(20, 5, dtype=torch.float64)
    for x, y, w in zip(inputs.to(torch.float32).to(torch.float64), labels, weights, strict=True):
        expected[:, y] += w * x
    torch.testing.assert_close(statistics.counts, expected, rtol=0, atol=1e-12)
    masses = inputs.to(torch.float32).to(torch.float64).sum(1)
    assert statistics.priming_number == pytest.approx((weights @ masses / weights.sum()).item(), rel=1e-12)


def test_statistics_of_float64_inputs_leave_the_inputs_unchanged():
    """`Cooccurrence.add` scales a float64 copy of its rows by the weights: float64 inputs (already the accumulator's
    dtype) are read, never scaled in place, and F is the weighted sum."""
    inputs, labels = bag_problem(num_rows=50)
    inputs = inputs.to(torch.float64)
    before = inputs.clone()
    weights = torch.rand(50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    statistics = Cooccurrence.zeros(20, 5)
    statistics.add(inputs, labels, weights)
    assert torch.equal(inputs, before)
    expected = torch.zeros(5, 20, dtype=torch.float64).index_add_(0, labels, before * weights[:, None])
    torch.testing.assert_close(statistics.transposed_counts, expected, rtol=0, atol=1e-12)
