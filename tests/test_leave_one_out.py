"""Leave-one-out table values for the training positions (hf_saffu.leave_one_out)."""

import copy

import pytest
import torch
from factories import VOCAB, batches_of, packed_dataset, saffu_config, training_arguments

from hf_saffu import SaffuForCausalLM
from hf_saffu.explicit import solve_bigram_channel, solve_ngram_channel
from hf_saffu.leave_one_out import table_leave_one_out
from hf_saffu.trainer import ExplicitTrainer
from hf_saffu.warm_start import explicit_warm_start


def warm_model(train):
    model = SaffuForCausalLM(saffu_config(pivot_bigrams=VOCAB**2, pivot_trigrams=VOCAB**3)).eval()
    explicit_warm_start(model, batches_of(train, 16), show_progress=False)
    return model


def counted_triples(train) -> tuple[torch.Tensor, torch.Tensor]:
    batch = train.with_format("torch")[:]
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    real = mask[:, :-2] & mask[:, 1:-1] & mask[:, 2:]
    keys = (ids[:, :-2][real] * VOCAB + ids[:, 1:-1][real]) * VOCAB + ids[:, 2:][real]
    return torch.unique(keys, return_counts=True)


def tables_without(model, loo, keys, counts, removed: int):
    """A copy of `model` whose tables are solved from scratch from the triple counts minus one occurrence of the
    triple `removed` (the same discounts), the trigram's lower order read from the re-solved bigram table."""
    counts = counts.clone().double()
    counts[keys == removed] -= 1
    keys, counts = keys[counts > 0], counts[counts > 0]
    reference = copy.deepcopy(model)
    pair_keys, pair_counts = torch.unique(keys % VOCAB**2, return_counts=True)
    values, bias = solve_bigram_channel(
        pair_keys,
        pair_counts.double(),
        VOCAB,
        model.config.warm_start_recipe.explicit_smoothing,
        discounts=loo.pair_discounts,
    )
    reference.pivot_bigrams.set_pairs(pair_keys, values, bias)
    pivots, nexts = (keys // VOCAB) % VOCAB, keys % VOCAB
    with torch.no_grad():
        rows = torch.softmax(reference.pivot_bigrams(torch.zeros(VOCAB, VOCAB), torch.arange(VOCAB)).double(), -1)
    values = solve_ngram_channel(keys, counts, rows[pivots, nexts], VOCAB, discounts=loo.triple_discounts)
    reference.pivot_trigrams.set_entries(keys, values)
    return reference


def test_leave_one_out_values_equal_tables_counted_without_the_occurrence():
    """At every kind of training position (its triple seen once, 2-3 or 4+ times; its pair's continuation count 1,
    2-3 or 4+; its history seen once), the leave-one-out channel (tables + corrections) gives the same next-token
    distribution as tables solved from scratch from the counts minus that one occurrence."""
    train = packed_dataset(40)
    model = warm_model(train)
    loo = table_leave_one_out(model, batches_of(train, 16))
    keys, counts = counted_triples(train)
    batch = train.with_format("torch")[:]
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    real = mask[:, :-2] & mask[:, 1:-1] & mask[:, 2:]
    previous, pivots, targets = ids[:, :-2][real], ids[:, 1:-1][real], ids[:, 2:][real]
    triples = (previous * VOCAB + pivots) * VOCAB + targets
    count = counts[torch.searchsorted(keys, triples)]
    continuation = torch.unique(keys % VOCAB**2, return_counts=True)
    pair_count = continuation[1][torch.searchsorted(continuation[0], triples % VOCAB**2)]
    history_total = torch.zeros(VOCAB**2, dtype=torch.long).index_add_(0, keys // VOCAB, counts)
    kinds = {
        "triple seen 2 or 3 times (its discount changes)": (count > 1) & (count <= 3),
        "triple seen 4 times or more (D3+ either way)": count >= 4,
        "triple once, pair's continuation count 2 or 3": (count == 1) & (pair_count > 1) & (pair_count <= 3),
        "triple once, pair's continuation count 4 or more": (count == 1) & (pair_count >= 4),
        "triple once, pair's continuation count 1": (count == 1) & (pair_count == 1),
        "history seen once": history_total[triples // VOCAB] == 1,
    }
    chosen = []
    for name, where in kinds.items():
        assert where.any(), name
        chosen += torch.nonzero(where).squeeze(1)[:4].tolist()
    with torch.no_grad():
        plain = model.pivot_logits(pivots[chosen], previous[chosen]).double()
    positions, columns, deltas = loo.corrections(pivots[chosen], previous[chosen], targets[chosen])
    left_out = plain.index_put((positions, columns), deltas, accumulate=True)
    for row, index in enumerate(chosen):
        reference = tables_without(model, loo, keys, counts, int(triples[index]))
        with torch.no_grad():
            expected = reference.pivot_logits(pivots[index : index + 1], previous[index : index + 1]).double()[0]
        torch.testing.assert_close(
            torch.log_softmax(left_out[row], -1), torch.log_softmax(expected, -1), rtol=0, atol=2e-5
        )
        assert (torch.log_softmax(plain[row], -1) - torch.log_softmax(expected, -1)).abs().max() > 1e-3


def test_leave_one_out_changes_only_training_logits():
    """Evaluation (model.eval()) reads the plain tables, bit for bit; in training mode the loss of the training
    positions is higher (their occurrences are no longer counted)."""
    train = packed_dataset(40)
    model = warm_model(train)
    batch = train.with_format("torch")[:8]
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    with torch.no_grad():
        plain = model(**inputs)
        model.table_leave_one_out = table_leave_one_out(model, batches_of(train, 16))
        evaluated = model(**inputs)
        trained = model.train()(**inputs)
    assert torch.equal(evaluated.logits, plain.logits)
    assert evaluated.loss.item() == plain.loss.item()
    assert trained.loss.item() > plain.loss.item() + 0.05


def test_trainer_trains_with_leave_one_out_values(tmp_path):
    """With table_leave_one_out the trainer's first logged loss is the leave-one-out loss of its first batch, and
    the model it leaves reads the plain tables."""
    train = packed_dataset(40)
    args = training_arguments(
        tmp_path, table_leave_one_out=True, max_steps=1, learning_rate=0.0, save_strategy="no", warmup_steps=0
    )
    model = SaffuForCausalLM(saffu_config(pivot_bigrams=VOCAB**2, pivot_trigrams=VOCAB**3))
    trainer = ExplicitTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    assert model.table_leave_one_out is None
    first = next(iter(trainer.get_train_dataloader()))
    model.train()
    with torch.no_grad():
        plain = model(**first).loss.item()
        model.table_leave_one_out = table_leave_one_out(model, batches_of(train, 16))
        left_out = model(**first).loss.item()
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert logged == pytest.approx(left_out, rel=1e-5)
    assert left_out > plain + 0.05


def test_leave_one_out_needs_the_tables_of_this_data(tmp_path):
    train = packed_dataset(40)
    model = warm_model(train)
    with pytest.raises(ValueError, match="not counted from this training data"):
        table_leave_one_out(model, batches_of(packed_dataset(40, seed=5), 16))
    with pytest.raises(ValueError, match="warm_start_max_tokens"):
        model = SaffuForCausalLM(saffu_config(warm_start_max_tokens=100))
        ExplicitTrainer(model=model, args=training_arguments(tmp_path, table_leave_one_out=True), train_dataset=train)


def test_residual_head_starts_at_the_warm_start_and_learns():
    """residual_rank: B = 0, so the warm-started logits equal those of the model without the residual path, bit for
    bit; the loss's gradient reaches B."""
    train = packed_dataset(40)
    models = {}
    for rank in (0, 4):
        torch.manual_seed(0)
        models[rank] = SaffuForCausalLM(saffu_config(residual_rank=rank)).eval()
        explicit_warm_start(models[rank], batches_of(train, 16), show_progress=False)
    batch = train.with_format("torch")[:8]
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    residual = models[4]
    output = residual(**inputs)
    with torch.no_grad():
        assert torch.equal(output.logits, models[0](**inputs).logits)
    output.loss.backward()
    assert residual.residual_head.up.grad.abs().max() > 0
    assert residual.residual_head.down.abs().max() > 0
