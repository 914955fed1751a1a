"""Explicit warm start and ExplicitTrainer: quality, exactness across processes, resume, bad data."""

import copy
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from factories import VOCAB, markov_documents, packed_dataset, saffu_config, training_arguments
from transformers import AutoTokenizer, Trainer

from hf_saffu import SaffuConfig, SaffuForCausalLM
from hf_saffu.data import DataArguments, config_for_tokenizer, load_text_datasets, tokenize_and_pack
from hf_saffu.explicit import ExplicitStatisticsError, solve_bigram_channel
from hf_saffu.model_card import TrainingRunInfo, build_model_card, model_run_info
from hf_saffu.train import ModelArguments, dataset_results, parse_arguments, run_training
from hf_saffu.trainer import DatasetBatches, ExplicitTrainer, FrozenEmbeddingPhase, resolve_checkpoint
from hf_saffu.warm_start import explicit_warm_start

HERE = Path(__file__).parent


def batches_of(dataset: Dataset, size: int) -> list[dict]:
    torch_dataset = dataset.with_format("torch", columns=["input_ids", "attention_mask"])
    return [torch_dataset[start : start + size] for start in range(0, len(dataset), size)]


def mean_loss(model: SaffuForCausalLM, dataset: Dataset) -> float:
    batch = dataset.with_format("torch")[:]
    with torch.no_grad():
        return model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.item()


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
    values, _ = solve_bigram_channel(keys, counts, VOCAB, config.explicit_smoothing)
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
    unigram = (counts + config.explicit_smoothing) / (counts.sum() + config.explicit_smoothing * VOCAB)
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


def test_trainer_warm_starts_then_trains_and_reports_exact_perplexity(tmp_path):
    train, validation = packed_dataset(200), packed_dataset(40, seed=1)
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config())
    trainer = ExplicitTrainer(
        model=model, args=training_arguments(tmp_path), train_dataset=train, eval_dataset=validation
    )
    trainer.train()
    assert trainer.warm_start_report is not None and model.config.warm_started
    assert trainer.state.log_history[0]["warm_start_eval_perplexity"] > 1.0
    metrics = trainer.evaluate()
    # exact perplexity: exp(sum of token NLL / number of predicted tokens), computed here by hand
    batch = validation.with_format("torch")[:]
    with torch.no_grad():
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="sum")
    tokens = (labels != -100).sum()
    assert metrics["eval_tokens"] == tokens.item()
    assert math.isclose(metrics["eval_perplexity"], math.exp(nll.item() / tokens.item()), rel_tol=1e-4)
    trainer.create_model_card(dataset_name="markov chain")  # what Trainer.push_to_hub calls
    card = (tmp_path / "run" / "README.md").read_text()
    assert "saffu" in card and "markov chain" in card


def test_resume_does_not_redo_the_warm_start(tmp_path):
    train = packed_dataset(200)
    torch.manual_seed(0)
    trainer = ExplicitTrainer(
        model=SaffuForCausalLM(saffu_config()), args=training_arguments(tmp_path), train_dataset=train
    )
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert json.loads((checkpoint / "config.json").read_text())["warm_started"]

    torch.manual_seed(1)
    fresh = SaffuForCausalLM(saffu_config())
    resumed = ExplicitTrainer(model=fresh, args=training_arguments(tmp_path), train_dataset=train)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.warm_start_report is None
    assert resumed.state.global_step == 6
    history = resumed.state.log_history
    assert {"warm_start_skipped": 1.0, "step": 3} in history  # at the step the resumed run starts from
    assert history[0] == trainer.state.log_history[0] and "warm_start_tokens" in history[0]  # the original run's

    again = ExplicitTrainer(
        model=SaffuForCausalLM.from_pretrained(checkpoint), args=training_arguments(tmp_path / "b"), train_dataset=train
    )
    again.train()
    assert again.warm_start_report is None  # already warm-started (persisted in the config)


def test_embeddings_thaw_after_the_configured_steps(tmp_path):
    train = packed_dataset(200)
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config())
    arguments = training_arguments(tmp_path, freeze_embeddings_steps=3, max_steps=3, save_strategy="no")
    trainer = ExplicitTrainer(model=model, args=arguments, train_dataset=train)
    trainer.train()
    after_frozen_steps = model.model.embeddings.weight.detach().clone()
    model.config.warm_started = True
    arguments = training_arguments(tmp_path, freeze_embeddings_steps=0, max_steps=3, save_strategy="no")
    ExplicitTrainer(model=model, args=arguments, train_dataset=train).train()
    assert not torch.equal(after_frozen_steps, model.model.embeddings.weight.detach())
    # the frozen phase left the warm-started embeddings exactly as the warm start set them
    reference = SaffuForCausalLM(saffu_config())
    explicit_warm_start(reference, batches_of(train, 5), show_progress=False)
    assert torch.equal(after_frozen_steps, reference.model.embeddings.weight.detach())


def test_the_cached_frozen_phase_trains_exactly_as_plain_frozen_training(tmp_path):
    """Three epochs with the embeddings frozen: from the second epoch every block's first-layer similarities come
    from the cache, and the weights match those of a plain Trainer on a model whose embeddings are fixed."""
    train = packed_dataset(40)
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config(windows=[2, 6], pivot_head=True, freeze_embeddings=False))
    explicit_warm_start(model, batches_of(train, 8), show_progress=False)
    initial = state_of(model)
    reference = copy.deepcopy(model)
    reference.model.embeddings.weight.requires_grad_(False)
    steps = 3 * math.ceil(len(train) / 8)
    arguments = training_arguments(tmp_path, max_steps=steps, save_strategy="no", learning_rate=1e-2)
    cached = ExplicitTrainer(model=model, args=replace(arguments, freeze_embeddings_steps=steps), train_dataset=train)
    cached.train()
    phase = next(c for c in cached.callback_handler.callbacks if isinstance(c, FrozenEmbeddingPhase))
    assert len(phase.cache) == len(train) and model.model.frozen_inputs is None
    Trainer(model=reference, args=replace(arguments, output_dir=str(tmp_path / "plain")), train_dataset=train).train()
    trained, expected = state_of(model), state_of(reference)
    assert torch.equal(trained["model.embeddings.weight"], initial["model.embeddings.weight"])
    for name, tensor in expected.items():
        assert (tensor - initial[name]).abs().max() > 1e-3 or "embeddings" in name, f"{name} did not train"
        assert torch.allclose(trained[name], tensor, atol=1e-6), name


def test_tokenizer_and_config_vocabulary_mismatch_is_a_clear_error(tmp_path):
    from hf_saffu.data import train_tokenizer

    tokenizer = train_tokenizer(["to be or not to be"] * 20, 300)
    with pytest.raises(ValueError, match="vocab_size"):
        ExplicitTrainer(
            model=SaffuForCausalLM(saffu_config()),
            args=training_arguments(tmp_path),
            train_dataset=packed_dataset(10),
            processing_class=tokenizer,
        )


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_empty_dataset_is_a_clear_error(tmp_path):
    blank = write_lines(tmp_path / "blank.txt", ["", "   "])
    with pytest.raises(ValueError, match="empty"):
        load_text_datasets(DataArguments(train_files=[blank]))


def test_text_shorter_than_a_window_is_a_clear_error(tmp_path):
    short = write_lines(tmp_path / "short.txt", ["hi"])
    data_args = DataArguments(train_files=[short], validation_files=[short], tokenizer_vocab_size=300, block_size=8)
    with pytest.raises(ValueError, match="largest window"):
        run_training(ModelArguments(windows=[16]), data_args, training_arguments(tmp_path))


@pytest.mark.parametrize("kind", ["dataset", "dataset_dict"])
def test_dataset_name_reads_a_saved_dataset_folder(tmp_path, kind):
    lines = [f"document number {i}" for i in range(40)]
    folder = tmp_path / "saved"
    if kind == "dataset":
        Dataset.from_dict({"text": lines}).save_to_disk(folder)
    else:
        DatasetDict(
            {"train": Dataset.from_dict({"text": lines[:30]}), "validation": Dataset.from_dict({"text": lines[30:]})}
        ).save_to_disk(folder)
    raw = load_text_datasets(DataArguments(dataset_name=str(folder)))
    assert sorted([*raw["train"]["text"], *raw["validation"]["text"]]) == sorted(lines)
    if kind == "dataset_dict":
        assert list(raw["validation"]["text"]) == lines[30:]


@pytest.mark.parametrize("source", ["saved_folder", "train_files"])
def test_the_model_card_publishes_no_local_path(tmp_path, source):
    """Only a Hub dataset id belongs in the card's metadata; local data is named by its file or folder name."""
    data = tmp_path / "private" / "corpus"
    data.mkdir(parents=True)
    if source == "saved_folder":
        data_args, title = DataArguments(dataset_name=str(data)), "local dataset folder corpus"
    else:
        train = write_lines(data / "train.txt", ["to be or not to be"])
        data_args, title = DataArguments(train_files=[train]), "local text files train.txt"
    results = {"train_tokens": 100, "validation_perplexity": 12.5, **dataset_results(data_args)}
    info = model_run_info(saffu_config(), 10, results, None, "run")
    card = build_model_card(TrainingRunInfo.from_dict(info))
    assert card.data.datasets is None
    assert str(tmp_path) not in card.content
    assert card.data.eval_results[0].dataset_name == title


# -- data parallelism ------------------------------------------------------------------------------


def test_two_process_warm_start_equals_one_process(tmp_path):
    script = HERE / "distributed_warm_start.py"
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "single.pt")], capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-3000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = subprocess.run(
        [*command, str(script), str(tmp_path / "double.pt")], capture_output=True, text=True, timeout=240
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "double.pt")
    assert two["world_size"] == 2 and one["world_size"] == 1
    rows = one["rows"]
    # contiguous disjoint shards covering every block once: no padding by repeated samples
    assert one["shard_rows"] == [rows] and two["shard_rows"] == [(rows + 1) // 2, rows // 2]
    for name, tensor in one["state"].items():
        other = two["state"][name]
        relative = (tensor - other).abs().max() / tensor.abs().max().clamp_min(1e-12)
        assert relative < 1e-6, (name, relative.item())


# -- the warm_started flag follows the weights -----------------------------------------------------


def state_of(model: SaffuForCausalLM) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_state(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def warm_start_only(model: SaffuForCausalLM, tmp_path: Path, train: Dataset) -> ExplicitTrainer:
    trainer = ExplicitTrainer(model=model, args=training_arguments(tmp_path, warm_start_only=True), train_dataset=train)
    trainer.train()
    return trainer


@pytest.mark.parametrize("resume", ["path", "true"])
def test_a_resumed_run_saves_warm_started_and_continuing_keeps_its_weights(tmp_path, resume):
    """The resumed run loads the checkpoint's warm-started weights, so it saves warm_started=True; continuing
    from the saved model does not warm-start again (its weights stay the trained ones)."""
    train = packed_dataset(200)
    torch.manual_seed(0)
    first = ExplicitTrainer(
        model=SaffuForCausalLM(saffu_config()), args=training_arguments(tmp_path, max_steps=3), train_dataset=train
    )
    first.train()
    torch.manual_seed(1)
    resumed = ExplicitTrainer(
        model=SaffuForCausalLM(saffu_config()), args=training_arguments(tmp_path), train_dataset=train
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3") if resume == "path" else "true")
    assert resumed.warm_start_report is None and resumed.state.global_step == 6
    resumed.save_model(str(tmp_path / "final"))
    trained = state_of(resumed.saffu_model)

    continued = warm_start_only(SaffuForCausalLM.from_pretrained(tmp_path / "final"), tmp_path / "continue", train)
    assert continued.warm_start_report is None
    assert_same_state(state_of(continued.saffu_model), trained)


def test_a_model_built_from_a_trained_config_is_warm_started(tmp_path):
    """from_config(AutoConfig.from_pretrained(trained)) has random weights: it must not claim warm_started,
    and the trainer warm-starts it to exactly the weights of the explicit warm start."""
    from transformers import AutoConfig, AutoModelForCausalLM

    train = packed_dataset(200)
    torch.manual_seed(0)
    reference = SaffuForCausalLM(saffu_config())
    explicit_warm_start(reference, batches_of(train, 5), show_progress=False)
    reference.save_pretrained(tmp_path / "trained")

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "trained"))
    assert not model.config.warm_started
    trainer = warm_start_only(model, tmp_path, train)
    assert trainer.warm_start_report is not None
    assert_same_state(state_of(model), state_of(reference))


def test_warm_start_only_saves_the_warm_started_weights_without_a_step(tmp_path):
    """warm_start_only (a field of ExplicitTrainingArguments and a command-line flag): the run saves exactly the
    explicitly warm-started weights, reports the warm-start validation perplexity and takes no optimizer step."""
    lines = [" ".join(f"w{t}" for t in document) for document in markov_documents(120)]
    train_file = write_lines(tmp_path / "train.txt", lines[:100])
    validation_file = write_lines(tmp_path / "validation.txt", lines[100:])
    model_args, data_args, training_args = parse_arguments(
        [
            *("--train_files", train_file, "--validation_files", validation_file, "--tokenizer_vocab_size", "300"),
            *("--block_size", "24", "--windows", "1", "4", "--embed_bits", "12", "--hidden_bits", "12"),
            *("--output_dir", str(tmp_path / "run"), "--report_to", "none", "--use_cpu", "true"),
            *("--warm_start_only", "true", "--learning_rate", "0.5"),
        ]
    )
    results = run_training(model_args, data_args, training_args)
    saved = SaffuForCausalLM.from_pretrained(tmp_path / "run")
    assert saved.config.warm_started

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run")
    packed = tokenize_and_pack(load_text_datasets(data_args), tokenizer, data_args)
    reference = SaffuForCausalLM(config_for_tokenizer(tokenizer, **model_args.config_kwargs()))
    explicit_warm_start(reference, DatasetBatches(packed["train"].with_format("torch"), 64), show_progress=False)
    assert_same_state(state_of(saved), state_of(reference))

    written = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert written["backprop_steps"] == 0
    assert written["warm_start_validation_perplexity"] == results["validation_perplexity"]
    assert not (tmp_path / "run" / "optimizer.pt").exists()


def test_torchrun_without_an_accelerator_runs_data_parallel(tmp_path):
    """Under torchrun on a CPU-only machine the arguments select gloo data parallelism (2 processes), not two
    independent single-process runs, without --use_cpu."""
    if torch.accelerator.is_available():
        pytest.skip("checks the CPU-only default")
    script = tmp_path / "arguments.py"
    script.write_text(
        "import os, sys\n"
        "import torch.distributed as dist\n"
        "from hf_saffu.trainer import ExplicitTrainingArguments\n"
        "args = ExplicitTrainingArguments(output_dir='unused', report_to='none')\n"
        "report = f'{args.parallel_mode.value} {args.world_size} {args.process_index}'\n"
        "open(os.path.join(sys.argv[1], 'rank' + os.environ['RANK']), 'w').write(report)\n"
        "if dist.is_initialized():\n"
        "    dist.destroy_process_group()\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run([*command, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [(tmp_path / f"rank{rank}").read_text() for rank in range(2)]
    assert reports == ["distributed 2 0", "distributed 2 1"]


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("false", None), (False, None), ("run/x", "run/x")])
def test_resume_from_checkpoint_values(value, expected):
    assert resolve_checkpoint(value, "no-such-dir") == expected


def test_resume_true_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="holds no checkpoint"):
        resolve_checkpoint("True", str(tmp_path))


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
