"""The pivot's n-gram order as one integer (`SaffuConfig.ngram_order`): any order's tables equal an independent
interpolated Kneser-Ney computation, decode with a constant-size state, update from counts, and models saved with
the earlier fields (pivot_bigrams, pivot_trigrams) load with the same logits."""

import json
from collections import Counter

import pytest
import torch
from factories import (
    VOCAB,
    batches_of,
    fill_pivot_bigrams,
    fill_pivot_trigrams,
    packed_dataset,
    saffu_config,
    training_arguments,
)
from safetensors import safe_open

from hf_saffu import ExplicitTrainer, ExplicitTrainingArguments, SaffuConfig, SaffuForCausalLM
from hf_saffu.counts import combine, count_batches, solve_tables
from hf_saffu.explicit import kneser_ney_discounts
from hf_saffu.leave_one_out import TableLeaveOneOut
from hf_saffu.modeling_saffu import previous_tokens
from hf_saffu.warm_start import explicit_warm_start


def real_runs(dataset) -> list[list[int]]:
    """The runs of consecutive real tokens of every block (what the warm start counts n-grams inside)."""
    runs = []
    for ids, mask in zip(dataset["input_ids"], dataset["attention_mask"], strict=True):
        run = []
        for token, real in zip(ids, mask, strict=True):
            if real:
                run.append(token)
            elif run:
                runs.append(run)
                run = []
        runs.append(run)
    return runs


class ReferenceKneserNey:
    """Interpolated modified Kneser-Ney of `order` in plain Python (Chen & Goodman 1998): raw counts at the top,
    continuation counts (distinct left extensions) below, down to the continuation unigram smoothed by alpha."""

    def __init__(self, runs: list[list[int]], order: int, vocab_size: int, alpha: float):
        grams = Counter(tuple(run[i : i + order]) for run in runs for i in range(len(run) - order + 1))
        self.levels = {order: grams}
        for k in range(order - 1, 1, -1):
            self.levels[k] = Counter(gram[1:] for gram in self.levels[k + 1])
        seen_before = Counter(gram[1] for gram in self.levels[2])
        total = sum(seen_before.values()) + alpha * vocab_size
        self.unigram = [(seen_before[y] + alpha) / total for y in range(vocab_size)]
        self.rows = {}  # per level: history -> {next token: count}
        self.discounts = {}
        for k, level in self.levels.items():
            self.discounts[k] = kneser_ney_discounts(torch.tensor(list(level.values()), dtype=torch.float64)).tolist()
            rows = self.rows[k] = {}
            for gram, count in level.items():
                rows.setdefault(gram[:-1], {})[gram[-1]] = count
        self.order = order

    def discount(self, k: int, count: float) -> float:
        return 0.0 if count == 0 else min(self.discounts[k][min(count, 3) - 1], count)

    def probability(self, history: tuple[int, ...], y: int) -> float:
        """P(y | the last order - 1 tokens `history`)."""
        p = self.unigram[y]
        for k in range(2, self.order + 1):
            row = self.rows[k].get(history[len(history) - (k - 1) :])
            if row is None:  # an unseen history falls back to the lower order
                continue
            gamma = sum(self.discount(k, count) for count in row.values())
            count = row.get(y, 0)
            p = (max(count - self.discount(k, count), 0.0) + gamma * p) / sum(row.values())
        return p


def table_probabilities(model: SaffuForCausalLM, histories: torch.Tensor) -> torch.Tensor:
    """softmax of the pivot's channel alone for histories (N, order - 1) given oldest first."""
    pivots = histories[:, -1]
    previous = histories[:, :-1].flip(1)  # previous[:, j] = x_{t-1-j}
    with torch.no_grad():
        return torch.softmax(model.pivot_logits(pivots, previous).double(), dim=-1)


@pytest.fixture(scope="module")
def five_gram_model() -> tuple[SaffuForCausalLM, object]:
    train = packed_dataset(80)
    model = SaffuForCausalLM(saffu_config(ngram_order=5)).eval()  # the one-line change from the trigram default
    explicit_warm_start(model, batches_of(train, 16), show_progress=False)
    return model, train


def test_a_five_gram_model_is_one_integer_and_its_tables_are_interpolated_kneser_ney(five_gram_model):
    model, train = five_gram_model
    order = 5
    reference = ReferenceKneserNey(real_runs(train), order, VOCAB, model.config.warm_start_recipe.explicit_smoothing)
    assert [table.order for table in model.ngram_tables] == [2, 3, 4, 5]
    assert model.pivot_5grams is model.ngram_tables[-1] and model.pivot_trigrams is model.ngram_tables[1]
    seen = [len(reference.levels[k]) for k in range(2, order + 1)]
    assert model.config.ngram_capacities == seen  # sized to the data, nothing pruned
    # every history of each level, and histories never seen, for every next token
    histories = {gram[:-1] for gram in reference.levels[order]}
    histories |= {(3, 3, 3, *gram[:-1])[-(order - 1) :] for k in range(2, order) for gram in reference.levels[k]}
    generator = torch.Generator().manual_seed(0)
    histories |= {tuple(row) for row in torch.randint(0, VOCAB, (50, order - 1), generator=generator).tolist()}
    histories = sorted(histories)
    got = table_probabilities(model, torch.tensor(histories))
    expected = torch.tensor([[reference.probability(h, y) for y in range(VOCAB)] for h in histories])
    torch.testing.assert_close(got, expected.double(), rtol=2e-5, atol=1e-7)
    # the 5-gram level matters: its distributions differ from the 4-gram's where a 4-token history was seen
    four = ReferenceKneserNey(real_runs(train), 4, VOCAB, model.config.warm_start_recipe.explicit_smoothing)
    lower = torch.tensor([[four.probability(h[1:], y) for y in range(VOCAB)] for h in histories])
    assert (expected - lower).abs().max() > 0.05


def test_five_gram_cached_generation_matches_a_full_recompute(five_gram_model):
    model, _ = five_gram_model
    ids = torch.tensor(packed_dataset(8, seed=3)["input_ids"][:3])[:, :20]
    mask = torch.tensor(packed_dataset(8, seed=3)["attention_mask"][:3])[:, :20]
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        values = model.pivot_5grams.values.clone()
        model.pivot_5grams.values.zero_()
        assert (model(ids, attention_mask=mask).logits - full).abs().max() > 0.1  # the 5-gram table is read here
        model.pivot_5grams.values.copy_(values)
        step = model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        state, steps = step.past_key_values if hasattr(step, "past_key_values") else step.cache, [step.logits]
        assert state.last_tokens.shape == (3, 3)  # the last order - 2 tokens
        for t in range(6, ids.shape[1]):
            step = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=state, use_cache=True)
            state = getattr(step, "cache", None) or step.past_key_values
            steps.append(step.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    prompt = ids[:1, :6]
    generated = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    sequence = prompt
    with torch.no_grad():
        for _ in range(10):  # greedy decoding, every step recomputed from the whole text
            sequence = torch.cat([sequence, model(sequence).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, sequence)


def test_previous_tokens_continue_across_a_decoding_state():
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    previous = previous_tokens(ids, None, None, count=3)
    assert previous[0].tolist() == [[-1, -1, -1], [5, -1, -1], [6, 5, -1], [7, 6, 5], [8, 7, 6]]


def test_counts_update_a_four_gram_model_to_a_warm_start_on_all_the_text():
    first, second = packed_dataset(40), packed_dataset(30, seed=5)
    both = SaffuForCausalLM(saffu_config(ngram_order=4)).eval()
    explicit_warm_start(both, batches_of(first, 16) + batches_of(second, 16), show_progress=False)
    model = SaffuForCausalLM(saffu_config(ngram_order=4)).eval()
    report = explicit_warm_start(model, batches_of(first, 16), show_progress=False)
    assert int(report.statistics["order"]) == 4
    statistics = combine(report.statistics, count_batches(model, batches_of(second, 16), 4), 1)
    solve_tables(model, statistics)
    expected = {name: tensor for name, tensor in both.state_dict().items() if name.startswith("pivot_")}
    got = {name: tensor for name, tensor in model.state_dict().items() if name.startswith("pivot_")}
    assert got.keys() == expected.keys() and "pivot_4grams.values" in got
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-6, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="counts are of order 3, the model's tables of ngram_order=4"):
        solve_tables(model, {**statistics, "order": torch.tensor(3)})


def test_models_saved_with_the_earlier_table_fields_load_with_the_same_logits(tmp_path):
    """A config.json as earlier versions wrote it (pivot_bigrams, pivot_trigrams; no ngram_order) with the weights
    named pivot_bigrams.* and pivot_trigrams.* loads into the same tables and gives identical logits."""
    ids = torch.randint(2, VOCAB, (3, 14), generator=torch.Generator().manual_seed(0))
    for earlier, order in (({"pivot_bigrams": 500, "pivot_trigrams": 800}, 3), ({"pivot_trigrams": 0}, 2)):
        torch.manual_seed(0)
        model = SaffuForCausalLM(saffu_config(**earlier)).eval()
        fill_pivot_bigrams(model, 500, seed=1)
        if order == 3:
            fill_pivot_trigrams(model, 800, seed=2)
        with torch.no_grad():
            logits = model(ids).logits
        model.save_pretrained(tmp_path / str(order))
        config_file = tmp_path / str(order) / "config.json"
        fields = json.loads(config_file.read_text())
        capacities = fields.pop("ngram_capacities")
        del fields["ngram_order"]
        fields |= {"pivot_bigrams": capacities[0], "pivot_trigrams": capacities[1] if order == 3 else 0}
        config_file.write_text(json.dumps(fields))
        with safe_open(str(tmp_path / str(order) / "model.safetensors"), "pt") as weights:
            tables = {name.split(".")[0] for name in weights.keys() if name.startswith("pivot_")}
        assert tables == {"pivot_bigrams", "pivot_trigrams"} if order == 3 else {"pivot_bigrams"}
        loaded = SaffuForCausalLM.from_pretrained(tmp_path / str(order)).eval()
        assert loaded.config.ngram_order == order and loaded.config.ngram_capacities == capacities
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, logits)
    assert SaffuConfig(vocab_size=VOCAB, pivot_head=True, pivot_bigrams=0, pivot_trigrams=0).ngram_order == 1


def test_a_four_gram_table_saves_resizes_and_refuses_corrupt_histories(tmp_path):
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config(ngram_order=4, ngram_capacities=[500, 800, 900])).eval()
    fill_pivot_bigrams(model, 500)
    fill_pivot_trigrams(model, 800, order=3)
    fill_pivot_trigrams(model, 900, order=4)
    ids = torch.randint(2, VOCAB, (3, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
    model.save_pretrained(tmp_path / "model")
    assert torch.equal(SaffuForCausalLM.from_pretrained(tmp_path / "model").eval()(ids).logits, before)
    model.resize_token_embeddings(VOCAB + 3)
    assert model.pivot_4grams.vocab_size == VOCAB + 3 and int(model.pivot_4grams.rows[-1]) == 900
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits[..., :VOCAB], before, rtol=1e-5, atol=1e-5)
    from safetensors.torch import load_file, save_file

    path = tmp_path / "model" / "model.safetensors"
    tensors = load_file(str(path))
    tensors["pivot_4grams.histories"][-1] = VOCAB**3 + 1
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"pivot_4grams\.histories must be sorted keys in \[0, 64000\]"):
        SaffuForCausalLM.from_pretrained(tmp_path / "model")


def test_orders_whose_keys_overflow_int64_and_other_bad_orders_are_refused_in_one_line():
    with pytest.raises(
        ValueError, match=r"ngram_order=5 keys n-grams .* past int64: with vocab_size=8192 it must be <= 4"
    ):
        SaffuConfig(vocab_size=8192, embed_bits=16, hidden_bits=16, ngram_order=5)
    with pytest.raises(ValueError, match="ngram_order must be an integer >= 0"):
        SaffuConfig(vocab_size=VOCAB, ngram_order=-1)
    with pytest.raises(ValueError, match=r"ngram_capacities must list 2 table sizes"):
        SaffuConfig(vocab_size=VOCAB, ngram_order=3, ngram_capacities=[10])
    assert SaffuForCausalLM(saffu_config(ngram_order=0)).ngram_tables == []
    model = SaffuForCausalLM(saffu_config(ngram_order=4)).eval()
    with pytest.raises(ValueError, match=r"table_leave_one_out needs .*\(ngram_order=3 .* got ngram_order=4"):
        TableLeaveOneOut(model, torch.zeros(0, dtype=torch.long), torch.zeros(0))


def test_one_learning_rate_drives_every_table_and_the_earlier_name_maps_to_it(tmp_path):
    assert (
        ExplicitTrainingArguments(output_dir=str(tmp_path), pivot_head_learning_rate=1e-4).table_learning_rate == 1e-4
    )
    with pytest.raises(ValueError, match="pivot_head_learning_rate=0.1 is the earlier name of table_learning_rate"):
        ExplicitTrainingArguments(output_dir=str(tmp_path), pivot_head_learning_rate=0.1, table_learning_rate=0.2)
    model = SaffuForCausalLM(saffu_config(ngram_order=4))
    trainer = ExplicitTrainer(
        model=model, args=training_arguments(tmp_path, table_learning_rate=0.5), train_dataset=packed_dataset(4)
    )
    rates = {id(p): group["lr"] for group in trainer.create_optimizer().param_groups for p in group["params"]}
    assert all(rates[id(table.values)] == 0.5 for table in model.ngram_tables)
    assert rates[id(model.pivot_bigrams.bias)] == 0.5 and rates[id(model.lm_head.weight)] != 0.5
