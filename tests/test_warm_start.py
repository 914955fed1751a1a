"""The explicit warm start (hf_saffu.warm_start): quality, exactness, the tables, bad data."""

import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from factories import (
    VOCAB,
    assert_same_state,
    batches_of,
    mean_loss,
    packed_dataset,
    saffu_config,
    state_of,
    training_arguments,
)

from hf_saffu import SaffuConfig, SaffuForCausalLM
from hf_saffu.explicit import ExplicitStatisticsError, solve_bigram_channel
from hf_saffu.modeling_saffu import SaffuLayer
from hf_saffu.trainer import ExplicitTrainer
from hf_saffu.warm_start import explicit_warm_start

HERE = Path(__file__).parent


# -- the warm start -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "max_ratio"),
    # dense soft inputs (a second layer, contextual embeddings) get a much weaker explicit solution
    [({}, 0.5), ({"num_layers": 2}, 0.9), ({"contextual_embeddings": True}, 0.95)],
)
def test_warm_start_is_far_better_than_untrained(overrides, max_ratio):
    train, validation = packed_dataset(300), packed_dataset(60, seed=1)
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config(**overrides)).eval()
    untrained = mean_loss(model, validation)
    report = explicit_warm_start(model, batches_of(train, 16), attention_iters=1, show_progress=False)
    warm = mean_loss(model, validation)
    assert model.config.warm_started
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
    assert report.tokens == sum(sum(mask) for mask in train["attention_mask"])
    # the chain has 3 successors per token: an ideal model reaches ln 3 ~ 1.1 nats, uniform ln 40 ~ 3.7
    assert untrained > 3.3
    assert warm < max_ratio * untrained, (untrained, warm)


def test_pivot_warm_start_reaches_the_true_perplexity_of_a_markov_chain():
    """Pivot-only models (no context evidence) whose pivot channel is the bigram table, or the pivot head on
    one-bit codes: their warm start is the (discounted) bigram, so on a first-order chain it must come within
    3% of the chain's true perplexity on held-out text; the paper's form (probability head on bit-cipher label
    codes) stays far from it."""
    vocab, length = 24, 200
    generator = torch.Generator().manual_seed(7)
    transitions = torch.distributions.Dirichlet(torch.full((vocab,), 0.2)).sample((vocab,))
    transitions = transitions / transitions.sum(1, keepdim=True)

    def sample(rows: int) -> torch.Tensor:
        ids = torch.zeros(rows, length, dtype=torch.long)
        ids[:, 0] = torch.randint(0, vocab, (rows,), generator=generator)
        for t in range(1, length):
            ids[:, t] = torch.multinomial(transitions[ids[:, t - 1]], 1, generator=generator)[:, 0]
        return ids

    train, held_out = sample(150), sample(40)
    true_nll = -torch.log(transitions[held_out[:, :-1], held_out[:, 1:]]).mean().item()
    common = dict(vocab_size=vocab, embed_bits=vocab, hidden_bits=8, windows=[1], use_document_context=False)
    redesign = dict(
        embedding_codes="anchored",
        hidden_targets="clusters",
        log_hidden_head=True,
        pivot_head=True,
        explicit_discount=0.75,
        explicit_context_weight=0.0,
    )
    bigram_table = {**redesign, "pivot_head": False, "pivot_bigrams": vocab**2, "pivot_trigrams": 0}
    losses = {}
    for name, overrides in (("redesign", redesign), ("bigrams", bigram_table), ("paper", SaffuConfig.PAPER_FORM)):
        torch.manual_seed(0)
        model = SaffuForCausalLM(SaffuConfig(**common, **overrides)).eval()
        batches = [
            {"input_ids": train[i : i + 50], "attention_mask": torch.ones_like(train[i : i + 50])}
            for i in range(0, len(train), 50)
        ]
        explicit_warm_start(model, batches, attention_iters=1, show_progress=False)
        with torch.no_grad():
            losses[name] = model(held_out, labels=held_out).loss.item()
    assert math.exp(losses["redesign"]) < 1.03 * math.exp(true_nll), (losses, true_nll)
    assert math.exp(losses["bigrams"]) < 1.03 * math.exp(true_nll), (losses, true_nll)
    assert math.exp(losses["paper"]) > 1.2 * math.exp(true_nll), (losses, true_nll)


def test_trigram_table_reaches_the_true_perplexity_of_a_second_order_chain():
    """On a chain whose next token depends on the last two, the warm start of the pivot's tables (no context
    evidence) must come within 5% of the chain's true perplexity with the trigram table, and stay far from it
    with the bigram table alone."""
    vocab, length = 12, 300
    generator = torch.Generator().manual_seed(3)
    transitions = torch.distributions.Dirichlet(torch.full((vocab,), 0.15)).sample((vocab, vocab))

    def sample(rows: int) -> torch.Tensor:
        ids = torch.zeros(rows, length, dtype=torch.long)
        ids[:, :2] = torch.randint(0, vocab, (rows, 2), generator=generator)
        for t in range(2, length):
            ids[:, t] = torch.multinomial(transitions[ids[:, t - 2], ids[:, t - 1]], 1, generator=generator)[:, 0]
        return ids

    train, held_out = sample(200), sample(40)
    true_nll = -torch.log(transitions[held_out[:, :-2], held_out[:, 1:-1], held_out[:, 2:]]).mean().item()
    common = dict(vocab_size=vocab, embed_bits=vocab, hidden_bits=4, windows=[4], use_document_context=False)
    batches = [{"input_ids": train[i : i + 50]} for i in range(0, len(train), 50)]
    perplexities = {}
    for name, trigrams in (("trigrams", vocab**3), ("bigrams", 0)):
        model = SaffuForCausalLM(SaffuConfig(**common, pivot_trigrams=trigrams, explicit_context_weight=0.0)).eval()
        explicit_warm_start(model, batches, show_progress=False)
        with torch.no_grad():
            log_probs = torch.log_softmax(model(held_out).logits[:, 1:-1], -1)
        perplexities[name] = math.exp(-log_probs.gather(2, held_out[:, 2:, None]).mean().item())
    truth = math.exp(true_nll)
    assert perplexities["trigrams"] < 1.05 * truth < perplexities["bigrams"] / 1.3, (perplexities, truth)


def counted(train: Dataset, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted keys and float64 counts of the n-grams (n = `order`) of real tokens inside the blocks."""
    batch = train.with_format("torch")[:]
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    length = ids.shape[1] - order + 1
    keys, real = torch.zeros(ids.shape[0], length, dtype=torch.long), torch.ones(ids.shape[0], length, dtype=torch.bool)
    for i in range(order):
        keys, real = keys * VOCAB + ids[:, i : i + length], real & mask[:, i : i + length]
    keys, counts = torch.unique(keys[real], return_counts=True)
    return keys, counts.double()


def stored_pairs(model: SaffuForCausalLM) -> tuple[torch.Tensor, torch.Tensor]:
    channel = model.pivot_bigrams
    used = int(channel.rows[-1])
    pivots = torch.repeat_interleave(torch.arange(VOCAB), channel.rows.diff())
    return pivots * VOCAB + channel.columns[:used], channel.values[:used]


def test_a_full_bigram_table_keeps_the_pairs_that_contribute_most():
    """With fewer entries than distinct pairs (a fixed size), the warm start solves every pair and keeps those of
    largest n_xy S_xy (weighted-difference pruning; ties: the smaller key) with the values solved over all pairs,
    not the most frequent pairs; a budget in megabytes that holds as many entries keeps the same pairs."""
    train = packed_dataset(60)
    keys, counts = counted(train, 2)
    config = saffu_config(pivot_trigrams=0)
    values, _ = solve_bigram_channel(keys, counts, VOCAB, config.warm_start_recipe.explicit_smoothing)
    capacity = len(keys) // 3
    order = sorted(range(len(keys)), key=lambda i: (-float(counts[i] * values[i]), int(keys[i])))
    by_count = sorted(range(len(keys)), key=lambda i: (-float(counts[i]), int(keys[i])))
    assert set(order[:capacity]) != set(by_count[:capacity])  # contribution is not frequency here
    per_entry = 12  # an int64 column and a float32 value
    for sizing in (
        {"pivot_bigrams": capacity, "pivot_table_mb": None},
        {"pivot_table_mb": capacity * per_entry / 2**20},
    ):
        model = SaffuForCausalLM(saffu_config(pivot_trigrams=0, **sizing)).eval()
        report = explicit_warm_start(model, batches_of(train, 16), show_progress=False)
        assert report.pivot_bigrams == {"pairs_seen": len(keys), "pairs_kept": capacity}
        assert model.config.ngram_capacities == [capacity]
        kept = sorted(order[:capacity])
        stored, stored_values = stored_pairs(model)
        assert torch.equal(stored, keys[kept])
        torch.testing.assert_close(stored_values, values[kept].float())


def test_tables_follow_the_data_and_reload_with_their_size(tmp_path):
    """By default (`pivot_table_mb`) the warm start sizes both tables to the distinct pairs and triples it saw,
    records the sizes in the config, and from_pretrained rebuilds the same shapes and logits. Nothing is pruned,
    so the logits equal those of tables built with room to spare."""
    train, held_out = packed_dataset(60), packed_dataset(10, seed=1).with_format("torch")[:]
    triple_keys = counted(train, 3)[0]  # under a trigram table, the pairs are the triples' last two tokens
    pairs, triples = len(torch.unique(triple_keys % VOCAB**2)), len(triple_keys)
    models = {}
    for name, sizing in (("sized", {}), ("spare room", {"pivot_table_mb": None, "pivot_trigrams": 4 * triples})):
        torch.manual_seed(0)
        models[name] = SaffuForCausalLM(saffu_config(**sizing)).eval()
        report = explicit_warm_start(models[name], batches_of(train, 16), show_progress=False)
        assert report.pivot_trigrams == {"triples_seen": triples, "triples_kept": triples}
    sized = models["sized"]
    assert sized.config.ngram_capacities == [pairs, triples]
    assert (len(sized.pivot_bigrams.values), len(sized.pivot_trigrams.values)) == (pairs, triples)
    sized.save_pretrained(tmp_path / "model")
    reloaded = SaffuForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert len(reloaded.pivot_trigrams.values) == triples
    with torch.no_grad():
        logits = [m(held_out["input_ids"], attention_mask=held_out["attention_mask"]).logits for m in models.values()]
        again = reloaded(held_out["input_ids"], attention_mask=held_out["attention_mask"]).logits
    assert torch.equal(logits[0], logits[1]) and torch.equal(again, logits[0])


def test_a_table_budget_prunes_the_trigrams_by_contribution():
    """A budget that holds every pair and a third of the triples keeps all pairs and the triples of largest
    n_wxy T_wxy, with the values solved over all triples (those of the unpruned table)."""
    train = packed_dataset(60)
    triple_keys = counted(train, 3)[0]  # under a trigram table, the pairs are the triples' last two tokens
    pairs, triples = len(torch.unique(triple_keys % VOCAB**2)), len(triple_keys)
    full = SaffuForCausalLM(saffu_config()).eval()
    explicit_warm_start(full, batches_of(train, 16), show_progress=False)
    pair_bytes, triple_bytes = 12, 28  # + int64 history and row offset per trigram entry
    budget = pairs * pair_bytes + (triples // 3) * triple_bytes
    model = SaffuForCausalLM(saffu_config(pivot_table_mb=budget / 2**20)).eval()
    report = explicit_warm_start(model, batches_of(train, 16), show_progress=False)
    assert report.pivot_trigrams == {"triples_seen": triples, "triples_kept": triples // 3}
    assert model.config.ngram_capacities == [pairs, triples // 3]

    def entries(table):
        used = int(table.rows[-1])
        owners = torch.repeat_interleave(table.histories[: len(table.rows) - 1], table.rows.diff())
        return owners * VOCAB + table.columns[:used], table.values[:used]

    keys, values = entries(full.pivot_trigrams)
    keys_counts, counts = counted(train, 3)
    assert torch.equal(keys, keys_counts)
    scores = counts * values.double()
    expected = torch.sort(torch.argsort(scores, descending=True, stable=True)[: triples // 3]).values
    kept, kept_values = entries(model.pivot_trigrams)
    assert torch.equal(kept, keys[expected]) and torch.equal(kept_values, values[expected])


def test_class_head_is_the_class_based_factorisation():
    """One context, beta = 1, no pivot head: the warm-started head gives P(y | ctx) = P(y | k(y)) h(k(y)), with
    h the context's class distribution and P(y | k) the smoothed unigram within the class."""
    train = packed_dataset(80)
    config = saffu_config(
        windows=[4], use_document_context=False, pivot_bigrams=0, explicit_context_weight=1.0, hidden_bits=6
    )
    model = SaffuForCausalLM(config).eval()
    explicit_warm_start(model, batches_of(train, 16), attention_iters=1, show_progress=False)
    classes = model.lm_head.weight.argmax(dim=1)
    assert torch.equal(model.lm_head.weight, torch.nn.functional.one_hot(classes, 6).float())
    batch = train.with_format("torch")[:]
    counts = torch.bincount(batch["input_ids"][batch["attention_mask"].bool()], minlength=VOCAB).double()
    unigram = (counts + config.warm_start_recipe.explicit_smoothing) / (
        counts.sum() + config.warm_start_recipe.explicit_smoothing * VOCAB
    )
    within_class = unigram / torch.zeros(6, dtype=torch.float64).index_add_(0, classes, unigram)[classes]
    ids = batch["input_ids"][:4]
    with torch.no_grad():
        output = model(ids, output_hidden_states=True)
    class_probs = output.hidden_states[-1].double().exp()  # (4, T, 6): h(k)
    expected = within_class * class_probs[..., classes]
    torch.testing.assert_close(torch.softmax(output.logits.double(), -1), expected, rtol=1e-4, atol=1e-6)


def test_hidden_priming_scales_every_hidden_solution():
    """explicit_hidden_priming K: U = K ln(F + alpha) and b = -(K - 1) ln phi for every context (uniform
    attention, so both models see the same statistics); the paper's output layer is then solved on sharper H."""
    train = packed_dataset(80)
    models = {}
    for priming in (None, 4.0):
        torch.manual_seed(0)
        models[priming] = SaffuForCausalLM(saffu_config(explicit_hidden_priming=priming, **SaffuConfig.PAPER_FORM))
        report = explicit_warm_start(models[priming], batches_of(train, 16), attention_iters=0, show_progress=False)
        assert report.priming_numbers["layer 0 context 0 U"] == (priming or 1.0)
    for paper, sharp in zip(models[None].model.layers[0].contexts, models[4.0].model.layers[0].contexts, strict=True):
        torch.testing.assert_close(sharp.hidden.weight, 4.0 * paper.hidden.weight)
        log_phi = torch.logsumexp(paper.hidden.weight.double(), dim=1).float()  # phi_j = sum_i exp(U_ij)
        torch.testing.assert_close(sharp.hidden.bias, -3.0 * log_phi)
    assert not torch.allclose(models[None].lm_head.weight, models[4.0].lm_head.weight)


def test_warm_start_does_not_depend_on_batching():
    train = packed_dataset(80)
    models = []
    for batch_size in (3, 80):
        torch.manual_seed(0)
        model = SaffuForCausalLM(saffu_config())
        explicit_warm_start(model, batches_of(train, batch_size), show_progress=False)
        models.append(model.state_dict())
    for name, tensor in models[0].items():
        assert torch.allclose(tensor, models[1][name], rtol=1e-5, atol=1e-6), name


class CountingBatches:
    """Batches that count the passes read over them."""

    def __init__(self, batches: list[dict]):
        self.batches, self.passes = batches, 0

    def __iter__(self):  # counted once its first batch is read
        self.passes += 1
        yield from self.batches


@pytest.mark.parametrize(
    ("overrides", "saved"),
    [
        (dict(neural_mixture_dim=8, ngram_order=3), 1),  # the neural word model's pass
        (dict(log_hidden_head=False), 1),  # the output layer's
        (dict(log_hidden_head=False, neural_mixture_dim=8), 2),  # both
        (dict(log_hidden_head=False, explicit_attention_iters=1), 0),  # the windows' z_t change after the pass
    ],
)
def test_what_the_warm_start_keeps_gives_the_same_weights_in_fewer_passes(overrides, saved, monkeypatch):
    """warm_start_cache_mb: with room for everything, the data is read once and the last layer's z_t are computed
    `saved` times fewer (once per pass that reads H_t); with room for the tokens alone, the data is read once; with
    none, every pass reads it. The weights are the same, bit for bit."""
    train = packed_dataset(80)
    batches = batches_of(train, 16)
    token_mb = sum(batch["input_ids"].numel() * 9 for batch in batches) / 2**20
    computed = []
    layer_inputs = SaffuLayer.context_inputs
    monkeypatch.setattr(SaffuLayer, "context_inputs", lambda *a, **k: computed.append(1) or layer_inputs(*a, **k))
    states, passes, computations = {}, {}, {}
    for cache_mb in (2048.0, token_mb * 1.001, 0.0):
        settings = dict(explicit_attention_iters=0, warm_start_cache_mb=cache_mb)
        torch.manual_seed(0)
        model = SaffuForCausalLM(saffu_config(**{**settings, **overrides}))
        counting = CountingBatches(batches)
        computed.clear()
        explicit_warm_start(model, counting, show_progress=False)
        states[cache_mb], passes[cache_mb], computations[cache_mb] = state_of(model), counting.passes, len(computed)
    everything, tokens, nothing = states
    assert passes[everything] == passes[tokens] == 1 < passes[nothing]
    assert computations[nothing] - computations[everything] == saved * len(batches)
    assert computations[tokens] == computations[nothing]
    assert_same_state(states[everything], states[nothing])
    assert_same_state(states[tokens], states[nothing])


def test_empty_warm_start_data_is_a_clear_error():
    model = SaffuForCausalLM(saffu_config())
    empty = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.zeros(2, 5, dtype=torch.long)}
    with pytest.raises(ExplicitStatisticsError, match="no tokens"):
        explicit_warm_start(model, [empty], show_progress=False)


def test_warm_start_rejects_ids_outside_the_vocabulary():
    model = SaffuForCausalLM(saffu_config())
    with pytest.raises(ValueError, match="vocab_size"):
        explicit_warm_start(model, [{"input_ids": torch.tensor([[2, 3, VOCAB + 1]])}], show_progress=False)


# -- ExplicitTrainer ------------------------------------------------------------------------------


def test_head_learning_rates_are_parameter_groups_of_their_own(tmp_path):
    train = packed_dataset(40)
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config(windows=[2, 4], pivot_head=True, freeze_embeddings=False))
    explicit_warm_start(model, batches_of(train, 8), show_progress=False)
    initial = state_of(model)
    arguments = training_arguments(
        tmp_path, max_steps=4, save_strategy="no", head_learning_rate=0.0, table_learning_rate=0.0
    )
    trainer = ExplicitTrainer(model=model, args=arguments, train_dataset=train)
    trainer.train()
    trained = state_of(model)
    for name, tensor in initial.items():
        frozen_head = name.startswith(("lm_head.", "pivot_head."))
        assert torch.equal(trained[name], tensor) == frozen_head, name
    rates = sorted({group["initial_lr"] for group in trainer.optimizer.param_groups})
    assert rates == [0.0, arguments.learning_rate]
    with pytest.raises(ValueError, match="head_learning_rate"):
        training_arguments(tmp_path, head_learning_rate=float("nan"))
