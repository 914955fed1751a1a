"""CoGO (docs/DESIGN.md section 7): network and loss, Fourier view, semi-ring, constructions, HF model."""

import cmath
import json

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_saffu.experimental.cogo import (
    CONSTRUCTION_KINDS,
    CoGOConfig,
    CoGOForModularAddition,
    FourierWeights,
    accuracy,
    all_pairs,
    centred_l2_loss,
    construct,
    expected_num_nodes,
    monomial_potentials,
    network_outputs,
    potential_loss,
    split_pairs,
    to_fourier,
    to_weights,
)
from hf_saffu.experimental.cogo.analysis import read_network, summarize_readings
from hf_saffu.experimental.cogo.building_blocks import nu_block, nu_i_block, syn_block, xi_block
from hf_saffu.experimental.cogo.constructions import mixture, order6_block


def random_weights(modulus: int, num_nodes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(num_nodes, modulus, generator=generator, dtype=torch.float64),
        torch.randn(num_nodes, modulus, generator=generator, dtype=torch.float64),
        torch.randn(modulus, num_nodes, generator=generator, dtype=torch.float64) / num_nodes,
    )


def direct_loss(z: FourierWeights) -> tuple[float, float]:
    pairs, labels = all_pairs(z.modulus)
    outputs = network_outputs(*to_weights(z), pairs)
    return centred_l2_loss(outputs, labels).item(), accuracy(outputs, labels)


def rescaled_and_shuffled(z: FourierWeights, seed: int) -> FourierWeights:
    """The same network with nodes permuted and rescaled by (λ, λ, λ⁻²), λ of either sign."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(z.num_nodes, generator=generator, dtype=torch.float64) + 0.5
    scale = scale * torch.where(torch.rand(z.num_nodes, generator=generator) < 0.5, -1.0, 1.0).double()
    order = torch.randperm(z.num_nodes, generator=generator)
    scale = scale[:, None]
    return FourierWeights(z.a[order] * scale, z.b[order] * scale, z.c[order] / scale**2)


# --- network, Fourier view, loss decomposition -------------------------------------------------


@pytest.mark.parametrize("modulus, num_nodes", [(5, 7), (7, 16), (8, 5), (11, 3)])
def test_loss_through_potentials_equals_direct_loss(modulus, num_nodes):
    weights = random_weights(modulus, num_nodes, seed=modulus)
    pairs, labels = all_pairs(modulus)
    direct = centred_l2_loss(network_outputs(*weights, pairs), labels)
    through_potentials = potential_loss(monomial_potentials(to_fourier(*weights)))
    assert direct.dtype == torch.float64
    assert direct.item() > 1.0
    assert abs(direct.item() - through_potentials.item()) <= 1e-10 * direct.item()


def test_fourier_transform_round_trip_and_conjugate_symmetry():
    weights = random_weights(9, 6, seed=0)
    z = to_fourier(*weights)
    for original, restored in zip(weights, to_weights(z), strict=True):
        torch.testing.assert_close(restored, original, rtol=0, atol=1e-12)
    torch.testing.assert_close(z.a[:, 1:], z.a[:, 1:].flip(1).conj(), rtol=0, atol=1e-12)


def test_network_accepts_any_leading_shape():
    model = CoGOForModularAddition(CoGOConfig(modulus=5, hidden_size=8))
    pairs = torch.randint(0, 5, (3, 4, 2))
    output = model(pairs, labels=pairs.sum(-1) % 5)
    assert output.logits.shape == (3, 4, 5)
    assert output.loss.shape == ()


# --- semi-ring and ring homomorphism ---------------------------------------------------------------


def test_potentials_are_additive_under_ring_sum():
    z1, z2 = to_fourier(*random_weights(7, 4, seed=1)), to_fourier(*random_weights(7, 5, seed=2))
    total = z1 + z2
    assert total.num_nodes == 9
    r1, r2, r_sum = monomial_potentials(z1), monomial_potentials(z2), monomial_potentials(total)
    for name in ("abc", "aac", "bbc"):
        torch.testing.assert_close(getattr(r_sum, name), getattr(r1, name) + getattr(r2, name))
    # in weight space the sum is the concatenation of hidden nodes
    torch.testing.assert_close(to_weights(total)[0], torch.cat([to_weights(z1)[0], to_weights(z2)[0]]))


def test_potentials_are_multiplicative_under_ring_product():
    z1, z2 = to_fourier(*random_weights(7, 3, seed=3)), to_fourier(*random_weights(7, 4, seed=4))
    product = z1 * z2
    assert product.num_nodes == 12
    r1, r2, r_product = monomial_potentials(z1), monomial_potentials(z2), monomial_potentials(product)
    for name in ("abc", "aac", "bbc"):
        torch.testing.assert_close(getattr(r_product, name), getattr(r1, name) * getattr(r2, name))


def test_partial_solutions_compose_into_a_global_optimizer():
    """z_ν and z_syn each leave unwanted potentials; their product kills the union."""
    d = 7
    for frequency in (1, 2, 3):
        nu, syn = nu_block(d, frequency, 0.7 + 0.4j), syn_block(d, frequency)
        others = [order6_block(d, k) for k in (1, 2, 3) if k != frequency]
        background = others[0] + others[1]  # zero-loss blocks at the other frequencies
        # each scaled so that r_kkk = 1/(2d): r_abc is 2 for z_ν, 3 for z_syn, 6 for the product
        assert potential_loss(monomial_potentials(background + nu.scaled(c=1 / (4 * d)))) > 1e-3
        assert potential_loss(monomial_potentials(background + syn.scaled(c=1 / (6 * d)))) > 1e-3
        product = (nu * syn).scaled(c=1 / (12 * d))
        assert potential_loss(monomial_potentials(background + product)) < 1e-28


# --- constructions -----------------------------------------------------------------------------------

SOLVING_KINDS = [kind for kind in CONSTRUCTION_KINDS if kind != "order4_uncompensated"]


# memorization at d = 127 needs 16,129 x 16,129 hidden activations: training/cogo_experiment.py covers it
CONSTRUCTION_CASES = [
    (kind, modulus)
    for kind in SOLVING_KINDS
    for modulus in (7, 23, 71, 127)
    if not (kind == "memorization" and modulus == 127)
]


@pytest.mark.parametrize(("kind", "modulus"), CONSTRUCTION_CASES)
def test_construction_is_a_global_optimizer(kind, modulus):
    z = construct(modulus, kind)
    assert z.num_nodes == expected_num_nodes(modulus, kind)
    loss, acc = direct_loss(z)
    assert loss <= 1e-20
    assert acc == 1.0


def test_node_counts_follow_section_6():
    d = 23
    assert expected_num_nodes(d, "order6") == 3 * (d - 1)
    assert expected_num_nodes(d, "order4") == 2 * (d - 1) + 1
    assert expected_num_nodes(d, "memorization") == d * d
    assert construct(d, "mixture", order6_frequencies=[2, 5]).num_nodes == 6 * 2 + 4 * 9 + 1
    assert construct(d, "mixture_riding", order6_frequencies=[2, 5]).num_nodes == 6 * 2 + 4 * 9


@pytest.mark.parametrize("modulus", [7, 23, 71])
def test_uncompensated_order4_leaves_its_known_residual(modulus):
    z = construct(modulus, "order4_uncompensated")
    loss, _ = direct_loss(z)
    assert loss == pytest.approx(2 * (modulus - 1) / modulus, abs=1e-12)
    if modulus <= 23:
        assert potential_loss(monomial_potentials(z)).item() == pytest.approx(loss, abs=1e-12)


def test_constructions_with_other_parameters():
    d = 23
    z = mixture(d, [1, 4, 9], riding=True, nu=cmath.exp(0.3j), xi=cmath.exp(2.1j))
    assert direct_loss(z)[0] <= 1e-20
    z = mixture(d, [3], nu=0.5 - 1.5j, xi=cmath.exp(-1j))  # any ν ≠ 0 with the constant node
    assert direct_loss(z)[0] <= 1e-20
    with pytest.raises(ValueError, match="nu"):
        mixture(d, [3], riding=True, nu=2.0)  # riding needs |ν| = 1
    with pytest.raises(ValueError, match="xi"):
        xi_block(d, 1, 2.0)


def test_order6_block_hits_the_normalised_potential():
    d, k = 11, 3
    r = monomial_potentials(construct(d, "order6"))
    torch.testing.assert_close(2 * d * r.abc[k, k, k], torch.tensor(1.0 + 0j, dtype=torch.complex128))
    assert (2 * d * r.abc[d - k, k, k]).abs() < 1e-14


def test_constructions_reject_unsupported_moduli():
    with pytest.raises(ValueError, match="modulus"):
        construct(8, "order6")
    with pytest.raises(ValueError, match="kind"):
        construct(7, "order5")
    assert direct_loss(construct(8, "memorization"))[0] <= 1e-20


# --- reading a network ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["order6", "order4", "mixture", "mixture_riding"])
def test_reading_recovers_constructions_up_to_scale_sign_and_order(kind):
    z = rescaled_and_shuffled(construct(23, kind, nu=cmath.exp(0.8j)), seed=5)
    assert direct_loss(z)[0] <= 1e-20
    readings = read_network(z, threshold=0.0)
    assert max(reading.residual for reading in readings) < 1e-12
    summary = summarize_readings(readings)
    assert summary["match_share"] == 1.0
    expected = {"order6": 6, "order4": 4}.get(kind)
    if expected is not None:
        assert summary["order_counts"] == {expected: 11}


def test_reading_rejects_blocks_that_are_not_constructions():
    d = 23
    good = [order6_block(d, k) for k in range(1, 12) if k not in (2, 5)]
    order8 = nu_i_block(d, 2) * xi_block(d, 2, 1.0) * nu_block(d, 2, 0.3)
    fake6 = (nu_block(d, 5, 1.0) * to_fourier(*random_weights(d, 3, seed=7))).scaled(c=1 / (12 * d))
    readings = read_network(sum(good, order8 + fake6), threshold=0.0)
    by_frequency = {reading.frequency: reading for reading in readings}
    assert by_frequency[2].order == 8 and by_frequency[2].construction is None
    assert by_frequency[5].order == 6 and by_frequency[5].construction is None
    assert by_frequency[5].factorization_error < 1e-12  # a product, but not of building blocks
    assert by_frequency[5].residual > 1e-2
    assert by_frequency[1].construction == "order6: z_nu * z_syn"
    summary = summarize_readings(readings)
    assert summary["factor_counts"] == {" * ".join(by_frequency[5].factors): 1}
    assert json.loads(json.dumps(summary))["factor_counts"] == summary["factor_counts"]  # cogo.json takes it


# --- Hugging Face integration --------------------------------------------------------------------


def test_constructed_model_saves_and_loads_with_identical_outputs(tmp_path):
    model = CoGOForModularAddition.from_construction(23, kind="mixture_riding")
    pairs, labels = all_pairs(23)
    before = model(pairs, labels=labels)
    assert before.loss.item() <= 1e-20

    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).construction == "mixture_riding"
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, CoGOForModularAddition)
    assert loaded.dtype == torch.float64
    after = loaded(pairs, labels=labels)
    assert torch.equal(after.logits, before.logits)
    assert torch.equal(after.loss, before.loss)


@pytest.mark.parametrize("field, value", [("modulus", 1), ("hidden_size", 0), ("construction", "order5")])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CoGOConfig(**{field: value})


@pytest.fixture
def single_thread():
    """Tiny matrices: one thread avoids oversubscription when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_descent_on_d7_reaches_zero_test_error(seed, single_thread):
    """Adam on 90% of the 49 pairs generalises to the held-out 10% (5 pairs)."""
    torch.manual_seed(seed)
    data = split_pairs(7, test_fraction=0.1, seed=seed)
    model = CoGOForModularAddition(CoGOConfig(modulus=7, hidden_size=128))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=2e-3)
    for _ in range(1000):
        loss = model(data["train_pairs"], labels=data["train_labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        test = model(data["test_pairs"], labels=data["test_labels"])
    assert loss.item() < 1e-2
    assert accuracy(test.logits, data["test_labels"]) == 1.0
