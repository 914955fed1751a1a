"""Smoke tests of the training/ harness and scripts on tiny synthetic data (seconds each)."""

import dataclasses
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from factories import benchmark_recipe

from hf_saffu import SaffuConfig, SaffuForCausalLM

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training import (  # noqa: E402
    ablate,
    benchmark,
    capacity_probe,
    cogo_experiment,
    data_efficiency,
    forward_throughput,
    generation_benchmark,
    harness,
    long_budget,
    step_profile,
    warm_start_ablation,
)
from training.kneser_ney import KneserNeyLM  # noqa: E402

WORDS = "the cat dog sat ran on under a mat log red big small quickly slowly".split()
TINY_RECIPE = {"warm_start_max_tokens": 100000, "learning_rate": 0.03}  # factories.benchmark_recipe


pytestmark = pytest.mark.usefixtures("one_thread", "step_clock")  # tests/conftest.py


def sentences(count: int, seed: int) -> list[str]:
    """Sentences from a word-level Markov chain (each word has two likely successors)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        word, words = rng.choice(WORDS), []
        for _ in range(rng.randint(4, 12)):
            words.append(word)
            i = WORDS.index(word)
            word = WORDS[(i + rng.choice([1, 1, 1, 3])) % len(WORDS)]
        lines.append(" ".join(words))
    return lines


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(data dir with train/validation/test.txt, a tiny training config)."""
    root = tmp_path_factory.mktemp("corpus")
    for split, count, seed in (("train", 300, 0), ("validation", 30, 1), ("test", 30, 2)):
        (root / f"{split}.txt").write_text("\n".join(sentences(count, seed)) + "\n")
    config = benchmark_recipe(root / "tiny.yaml", **TINY_RECIPE)
    return root, config


def packed(ids: torch.Tensor, mask: torch.Tensor) -> Dataset:
    labels = ids.masked_fill(mask == 0, -100)
    return Dataset.from_dict({"input_ids": ids, "attention_mask": mask, "labels": labels}).with_format("torch")


# -- Kneser-Ney -------------------------------------------------------------------------------------


def markov_blocks(vocab: int, blocks: int, length: int, seed: int) -> torch.Tensor:
    """Blocks of a Markov chain whose next token is (previous + 1) mod V with probability 0.8."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(blocks, length, dtype=torch.int64)
    ids[:, 0] = torch.randint(0, vocab, (blocks,), generator=generator)
    for t in range(1, length):
        jump = torch.rand(blocks, generator=generator) < 0.8
        ids[:, t] = torch.where(
            jump, (ids[:, t - 1] + 1) % vocab, torch.randint(0, vocab, (blocks,), generator=generator)
        )
    return ids


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_is_a_distribution(order):
    """sum_w P(w | h) = 1 for seen, unseen and short histories."""
    vocab = 9
    ids = markov_blocks(vocab, 20, 16, seed=order)
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0  # a padded tail
    model = KneserNeyLM(order, vocab).fit(ids, mask)
    contexts = [list(ids[1, 3 : 3 + order - 1]), [0] * (order - 1), [8, 7, 6][: order - 1], [5]]
    for context in contexts:
        context = [int(t) for t in context][-(order - 1) :] if order > 1 else []
        histories = []
        for k in range(1, order):
            if k <= len(context):
                key = 0
                for token in context[-k:]:
                    key = key * vocab + token
                histories.append(torch.full((vocab,), key))
            else:
                histories.append(torch.full((vocab,), -1))
        total = model.log_probs(histories, torch.arange(vocab)).exp().sum().item()
        assert total == pytest.approx(1.0, abs=1e-9), (order, context)


def test_kneser_ney_bigram_beats_unigram_on_a_markov_chain():
    vocab = 12
    train, test = markov_blocks(vocab, 200, 32, seed=0), markov_blocks(vocab, 40, 32, seed=1)
    mask, test_mask = torch.ones_like(train), torch.ones_like(test)
    unigram = KneserNeyLM(1, vocab).fit(train, mask).perplexity(test, test_mask)
    bigram = KneserNeyLM(2, vocab).fit(train, mask).perplexity(test, test_mask)
    true = math.exp(
        -(0.8 + 0.2 / vocab) * math.log(0.8 + 0.2 / vocab) - (vocab - 1) * 0.2 / vocab * math.log(0.2 / vocab)
    )
    assert unigram == pytest.approx(vocab, rel=0.05)  # the chain's stationary distribution is uniform
    assert bigram < 0.5 * unigram
    assert true <= bigram < 1.05 * true


# -- harness --------------------------------------------------------------------------------------


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size_on_the_ngram_tokens():
    """harness.perplexity and the additive bigram score the same predicted tokens (those Kneser-Ney scores)."""
    vocab = 16
    ids = markov_blocks(vocab, 6, 10, seed=3)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    data = packed(ids, mask)

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, **kwargs):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, vocab)})()

    assert harness.perplexity(Uniform(), data, batch_size=4) == pytest.approx(vocab, rel=1e-6)
    counts = harness.bigram_counts(data, vocab)
    assert harness.bigram_perplexity(counts, data, vocab, alpha=1e12) == pytest.approx(vocab, rel=1e-6)
    predicted = len(harness.pair_keys(data, vocab))
    assert predicted == int((mask[:, 1:] & mask[:, :-1]).sum()) == 6 * 9 - 3


def test_warm_start_batches_cap_like_the_trainer():
    ids = torch.arange(10 * 16).reshape(10, 16)
    batches = harness.warm_start_batches(packed(ids, torch.ones_like(ids)), max_tokens=40, batch_size=2)
    assert len(batches) == 2  # ceil(40 / 16) = 3 blocks in batches of 2
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]
    assert set(next(iter(batches))) == {"input_ids", "attention_mask"}


def test_read_config_uses_the_cli_parser(corpus):
    _, config = corpus
    recipe = harness.read_config(config)
    assert recipe.model["windows"] == [1, 4] and recipe.model["embed_bits"] == 16
    assert recipe.vocab_size == 300 and recipe.block_size == 32 and recipe.learning_rate == 0.03
    default = harness.read_config()  # configs/brown.yaml: a valid SaffuConfig
    assert SaffuConfig(vocab_size=300, **default.model).windows == default.model["windows"]
    assert default.frozen_fraction == 0.0  # the embeddings train from step 0 (BEYOND_COUNTING.md, fifth session)


def test_the_recipe_reads_the_frozen_phase_as_a_fraction(tmp_path):
    config = benchmark_recipe(tmp_path / "tiny.yaml", freeze_embeddings_steps=150, max_steps=300)
    assert harness.read_config(config).frozen_fraction == 0.5


def test_the_warm_arm_trains_as_the_config_does(monkeypatch):
    """Backprop after the warm start uses the config's learning rates per part, leave-one-out, which parts train, the
    neural word model's weight decay and its frozen phase."""
    calls = []
    monkeypatch.setattr(harness, "train_with_budget", lambda *args, **kwargs: calls.append((args, kwargs)))
    recipe = harness.read_config()
    harness.train_warm_saffu("model", "data", "budget", recipe, offset=12.5)
    ((args, kwargs),) = calls
    assert args == ("model", "data", "budget", recipe.learning_rate) and kwargs["offset"] == 12.5
    rates = {"head_learning_rate": 1e-5, "table_learning_rate": 1e-4, "neural_mixture_learning_rate": 3e-3}
    parts = {"table_leave_one_out": True, "freeze_counted_parts": recipe.freeze_counted_parts}
    parts["neural_mixture_weight_decay"] = recipe.neural_mixture_weight_decay
    assert kwargs["group_rates"] == {**rates, **parts}
    assert kwargs["frozen_fraction"] == recipe.frozen_fraction == 0.0


def test_the_recipe_carries_the_mixture_rate(tmp_path):
    config = benchmark_recipe(tmp_path / "tiny.yaml", neural_mixture_dim=4, neural_mixture_learning_rate=0.003)
    assert harness.read_config(config).trainer_arguments()["neural_mixture_learning_rate"] == 0.003
    frozen = benchmark_recipe(tmp_path / "frozen.yaml", neural_mixture_dim=4, freeze_counted_parts=True)
    assert harness.read_config(frozen).trainer_arguments()["freeze_counted_parts"] is True


def test_missing_data_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="--data-dir"):
        harness.data_dir_or_exit(tmp_path)


def test_results_files_name_command_and_commit(tmp_path):
    run = harness.write_results(tmp_path / "R.md", tmp_path / "r.json", "Title", ["body"], {"x": 1})
    text = (tmp_path / "R.md").read_text()
    assert text.startswith("# Title") and run["commit"] in text and "- command: `python" in text
    assert json.loads((tmp_path / "r.json").read_text()) == {"run": run, "x": 1}
    assert harness.markdown_table(["a", "b"], [[1, 2]]) == ["| a | b |", "|---|---:|", "| 1 | 2 |"]


def test_cpu_budget_stops_training_and_records_the_curve(corpus):
    data_dir, config = corpus
    recipe = harness.read_config(config)
    tokenizer, data = harness.load_data(data_dir, recipe.vocab_size, recipe.block_size)
    model = harness.saffu_model(tokenizer, recipe.model)
    budget = harness.Budget(1.0, (0.5, 100.0), batch_size=4, curve_blocks=2)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    result = harness.train_with_budget(model, data, budget, recipe.learning_rate)
    model.load_state_dict(initial)
    harness.CLOCK.now.time = 0.0
    again = harness.train_with_budget(model, data, budget, recipe.learning_rate)
    assert again["curve"] == result["curve"] and again["steps"] == result["steps"]  # the clock, not the machine
    assert result["curve"][0]["step"] == 0 and result["curve"][-1]["step"] == result["steps"] >= 1
    assert result["cpu_seconds"] < 10
    assert all(p["cpu_seconds"] <= 100 for p in result["curve"])  # the 100 CPU-s point is past the budget
    assert 1 < result["validation_perplexity"] < float("inf")


def test_a_frozen_arm_plans_its_later_epochs_at_the_cached_cost(monkeypatch):
    """With the counted parts frozen the first epoch's steps are planned at a full pass and later ones at the pass
    that reads the cached counted ln p (timed with the model's cache set, and the cache dropped after)."""
    timed = []

    def seconds_per_step(model, train, batch_size):
        timed.append(model.frozen_counted is not None)
        return 1.0 if model.frozen_counted is not None else 2.0

    monkeypatch.setattr(harness, "seconds_per_step", seconds_per_step)
    model, train = SaffuForCausalLM(SaffuConfig(vocab_size=40)), range(40)  # 10 batches of 4
    # the first epoch 10 x 1.1 x 2.0 = 22 CPU-s, then 1.1 CPU-s a step
    assert harness.planned_steps(model, train, 4, 22 + 5.5, counted_frozen=True) == 15
    assert timed == [False, True] and model.frozen_counted is None
    assert harness.planned_steps(model, train, 4, 22 + 5.5) == 12  # every step at the full pass: 27.5 / 2.2
    assert harness.planned_steps(model, train, 4, 11.0, counted_frozen=True) == 5  # within the first epoch


def test_early_stopping_restores_the_best_weights(corpus):
    data_dir, config = corpus
    recipe = harness.read_config(config)
    tokenizer, data = harness.load_data(data_dir, recipe.vocab_size, recipe.block_size)
    model = harness.saffu_model(tokenizer, recipe.model)
    # a curve point every step on the whole validation split; a learning rate that overshoots after a few steps;
    # stop 0.05 (clock) seconds after the best point
    budget = harness.Budget(30.0, (), batch_size=4, curve_blocks=10_000, eval_every=1e-6, patience=50_000)
    result = harness.train_with_budget(model, data, budget, 0.3, frozen_fraction=0.5)
    curve = [p["validation_perplexity"] for p in result["curve"]]
    best = result["best_point"]
    assert best["validation_perplexity"] == min(curve) and result["steps"] < result["planned_steps"]
    assert curve[-1] > best["validation_perplexity"] and 0 < best["step"] < result["curve"][-1]["step"]
    assert result["curve"][-1]["cpu_seconds"] - best["cpu_seconds"] >= 0.05
    assert result["validation_perplexity"] == pytest.approx(best["validation_perplexity"], rel=1e-9)
    assert result["frozen_steps"] == round(0.5 * result["planned_steps"]) and "frozen" in result["steps_per_cpu_second"]


# -- scripts, end to end on the tiny corpus ------------------------------------------------------------


def test_benchmark_script(corpus, tmp_path):
    data_dir, config = corpus
    argv = ["--data-dir", str(data_dir), "--config", str(config), "--output-dir", str(tmp_path)]
    payload = benchmark.main(
        [*argv, "--quick", "--budget-cpu-seconds", "0.5", "--gpt2-dims", "16", "--eval-checkpoints", "0.2"]
    )
    arms = [r["arm"] for r in payload["results"]]
    assert arms == [
        "additive bigram",
        "Kneser-Ney 2-gram",
        "Kneser-Ney 3-gram",
        "Kneser-Ney 4-gram",
        "SAFFU warm start",
        "SAFFU backprop only",
        "SAFFU warm start + backprop",
        "GPT-2",
    ]
    ppl = {r["arm"]: r["validation_perplexity"] for r in payload["results"]}
    assert ppl["Kneser-Ney 2-gram"] < ppl["additive bigram"] * 1.5 and all(p > 1 for p in ppl.values())
    assert payload["settings"]["eval_checkpoints"] == [0.2] or payload["settings"]["eval_checkpoints"] == (0.2,)
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| Kneser-Ney 3-gram |" in report and "python -m training.benchmark" in report and "(--quick)" in report
    assert json.loads((tmp_path / "brown.json").read_text())["run"]["command"].startswith("python -m training")
    assert (tmp_path / "brown.png").stat().st_size > 0


def test_data_efficiency_script(corpus, tmp_path):
    data_dir, config = corpus
    argv = ["--data-dir", str(data_dir), "--config", str(config), "--output-dir", str(tmp_path)]
    rows = data_efficiency.main([*argv, "--quick", "--fractions", "0.5", "1", "--budget-cpu-seconds", "0.3"])
    assert [r["fraction"] for r in rows] == [0.5] * 3 + [1.0] * 3
    assert rows[0]["train_tokens"] < rows[3]["train_tokens"]
    assert "(--quick)" in (tmp_path / "DATA_EFFICIENCY.md").read_text()
    assert json.loads((tmp_path / "data_efficiency.json").read_text())["rows"] == rows


def test_ablation_centres_on_the_config_and_resumes(corpus, tmp_path):
    data_dir, config = corpus
    base = ablate.default_config(harness.read_config(config))
    assert base["windows"] == [1, 4] and base["embed_bits"] == 16  # from the config, not restated defaults
    assert len(ablate.grid(base)) >= 50 and ablate.grid(base)[0] == base
    argv = ["--data-dir", str(data_dir), "--config", str(config), "--output-dir", str(tmp_path)]
    argv += ["--limit", "1", "--eval-blocks", "4", "--warm-start-max-tokens", "2000"]
    assert len(ablate.main(argv)) == 1
    assert len(ablate.main([*argv, "--diagnose-steps", "1"])) == 2
    lines = (tmp_path / "ablation.jsonl").read_text().splitlines()
    assert [json.loads(line)["config"] for line in lines] == ablate.grid(base)[:2]
    assert "| output O |" in (tmp_path / "ABLATION.md").read_text()


def test_generation_benchmark_rows(corpus):
    recipe = harness.read_config(corpus[1])
    model = generation_benchmark.saffu(recipe)
    gpt2 = generation_benchmark.matching_gpt2(recipe.vocab_size, harness.count_parameters(model), positions=32)
    assert harness.count_parameters(gpt2) == generation_benchmark.gpt2_parameters(gpt2.config)
    rows = generation_benchmark.measure({"SAFFU": model, "GPT-2": gpt2}, [4, 16], new_tokens=3, repeats=1)
    saffu_bytes = {r["state_bytes"] for r in rows if r["model"] == "SAFFU"}
    gpt2_bytes = [r["state_bytes"] for r in rows if r["model"] == "GPT-2"]
    assert len(saffu_bytes) == 1 and gpt2_bytes[1] == 4 * gpt2_bytes[0]
    assert generation_benchmark.targets(rows)[0]["met"]


def test_generation_benchmark_script_quick(corpus, tmp_path):
    rows = generation_benchmark.main(["--quick", "--config", str(corpus[1]), "--output-dir", str(tmp_path)])
    assert sorted({r["prompt_length"] for r in rows}) == [16, 64, 256]
    assert "(--quick)" in (tmp_path / "GENERATION.md").read_text()
    assert json.loads((tmp_path / "generation.json").read_text())["rows"] == rows


def test_forward_throughput_script(corpus, tmp_path):
    argv = ["--config", str(corpus[1]), "--output-dir", str(tmp_path), "--batch-size", "2", "--length", "16"]
    result = forward_throughput.main([*argv, "--repeats", "1"])
    assert result["parameters"] > 0 and result["forward_tokens_per_second"] > 0
    assert "| parameters | forward tokens/s |" in (tmp_path / "FORWARD_THROUGHPUT.md").read_text()
    assert json.loads((tmp_path / "forward_throughput.json").read_text())["parameters"] == result["parameters"]


def test_warm_start_ablation_script(corpus, tmp_path):
    data_dir, config = corpus
    argv = ["--data-dir", str(data_dir), "--config", str(config), "--output-dir", str(tmp_path)]
    rows = warm_start_ablation.main([*argv, "--max-tokens", "2000", "--rows", warm_start_ablation.ROWS[0][0]])
    assert len(rows) == 1 and 1 < rows[0]["validation_perplexity"] < float("inf")
    assert json.loads((tmp_path / "warm_start.json").read_text())["rows"][0]["row"] == rows[0]["row"]
    assert (tmp_path / "WARM_START.md").is_file()


def test_cogo_experiment_script_quick_writes_its_report(tmp_path):
    """--quick with the runs cut down (one weight decay, 200 steps, d = 7); the JSON holds the summaries (whose
    factor patterns were tuple keys, which json refused)."""
    output = tmp_path / "COGO.md"
    argv = ["--quick", "--modulus", "7", "--hidden-size", "32", "--steps", "200", "--construction-moduli", "7"]
    cogo_experiment.main([*argv, "--weight-decays", "1e-4", "--workers", "1", "--output", str(output)])
    payload = json.loads((tmp_path / "cogo.json").read_text())
    assert payload["arguments"]["quick"] and len(payload["runs"]) == 1 and len(payload["constructions"]) >= 1
    assert all(isinstance(key, str) for key in payload["runs"][0]["summary"]["factor_counts"])
    assert "## 3. Seconds: constructing vs training" in output.read_text()


def test_datasets_dict_is_what_the_harness_packs(corpus):
    data_dir, config = corpus
    tokenizer, data = harness.load_data(data_dir, 300, 32, train_documents=50, eval_documents=5)
    assert isinstance(data, DatasetDict) and set(data) == {"train", "validation", "test"}
    assert data["train"][0]["input_ids"].shape == (32,) and len(tokenizer) <= 300


def test_explicit_digits_report_and_targets():
    from training import explicit_digits as digits

    settings = digits.Settings(finetune_steps=2, random_steps=2, lbfgs_iterations=1, seeds=1, eval_every=1)
    settings = dataclasses.replace(settings, learning_rates=(0.1,), train_size=200)
    split = digits.make_split("digits", "normalised", digits.load_pixels("digits", settings))
    results = [digits.run_split(split, settings)]
    targets = digits.claim_targets(results)
    assert len(targets) == 3 and all(isinstance(t["met"], bool | np.bool_) for t in targets)
    lines = digits.report_lines(results, {"digits": settings}, [])
    assert "| digits / normalised: gradient descent improves the explicit solution only marginally (claim 1) |" in (
        "\n".join(lines)
    )
    assert json.dumps(digits.summary(results, {"digits": settings}), default=str)


def test_explicit_digits_script_quick(tmp_path):
    from training import explicit_digits as digits

    digits.main(["--quick", "--datasets", "digits", "--output-dir", str(tmp_path)])
    payload = json.loads((tmp_path / "digits.json").read_text())
    assert payload["settings"]["digits"]["seeds"] == digits.SETTINGS["digits", True].seeds
    assert "(--quick)" in (tmp_path / "DIGITS.md").read_text() and (tmp_path / "digits.png").stat().st_size > 0


def test_long_budget_settings_reach_the_warm_start(corpus):
    """`--set` of a warm-start field (explicit_attention_iters) changes the warm start the harness runs (the model's
    own recipe, not a copy), beside a recipe field; an unknown key is an error naming it."""
    data_dir, config = corpus
    recipe = harness.read_config(config)
    tokenizer, data = harness.load_data(data_dir, recipe.vocab_size, recipe.block_size)
    assert recipe.warm_start_recipe.explicit_attention_iters == 1  # the config's
    solved = {}
    for rounds in (0, 1):
        varied = long_budget.with_settings(recipe, {"explicit_attention_iters": rounds, "learning_rate": 0.002})
        assert varied.learning_rate == 0.002 and varied.warm_start_recipe.explicit_attention_iters == rounds
        torch.manual_seed(recipe.seed)
        model = harness.saffu_model(tokenizer, varied.model)
        _, report = harness.warm_start(model, data["train"])
        attention = [window.attention.weight for window in model.model.layers[0].windows]
        solved[rounds] = ("layer 0 attention" in report.seconds, any(bool(w.abs().sum() > 0) for w in attention))
    assert solved == {0: (False, False), 1: (True, True)}
    with pytest.raises(SystemExit, match="--set explicit_attention_iter: neither a SaffuConfig field"):
        long_budget.with_settings(recipe, {"explicit_attention_iter": 1})


def test_long_budget_script_writes_each_arm_then_the_report(corpus, tmp_path, monkeypatch):
    data_dir, config = corpus
    partial = []  # the SAFFU's files as written during training
    write = long_budget.ArmWriter.write

    def keep(writer, result, complete):
        write(writer, result, complete)
        if not complete and writer.head["base"] == "saffu-warm":
            partial.append(json.loads(writer.path.read_text()))

    monkeypatch.setattr(long_budget.ArmWriter, "write", keep)
    ood = tmp_path / "ood.txt"
    ood.write_text("\n".join(sentences(20, 9)[::-1]) + "\n\n")
    argv = ["--data-dir", str(data_dir), "--config", str(config), "--output-dir", str(tmp_path), "--ood-file", str(ood)]
    small = ["--budget-cpu-seconds", "1", "--eval-every", "0.2", "--curve-blocks", "4", "--gpt2-equal-dims", "16"]
    long_budget.main([*argv, *small, "--gpt2-equal-heads", "2", "--arms", "counts", "saffu-warm", "gpt2-equal"])
    arms = {path.stem: json.loads(path.read_text()) for path in (tmp_path / "long_budget").glob("*.json")}
    assert arms.keys() == {"counts", "saffu-warm", "gpt2-equal"} and all(a["complete"] for a in arms.values())
    warm = arms["saffu-warm"]
    assert warm["warm_start"]["validation_perplexity"] > 1 and warm["curve"][0]["step"] == 0
    assert partial and all(p["parameters"] == warm["warm_start"]["parameters"] for p in partial)  # tables as sized
    assert warm["frozen_steps"] == 0 == warm["recipe"]["frozen_fraction"]  # the config's schedule: no frozen phase
    assert 1 < warm["ood_perplexity"] < float("inf") and warm["run"]["command"].startswith("python -m training")
    payload = long_budget.main(["--output-dir", str(tmp_path), "--report"]) or json.loads(
        (tmp_path / "long_budget.json").read_text()
    )
    targets = {t["target"] for t in payload["targets"]}
    assert any("Kneser-Ney trigram" in t for t in targets) and any("3x sooner" in t for t in targets)
    assert "| GPT-2 of equal size |" in (tmp_path / "LONG_BUDGET.md").read_text()
    # --set repeated: every setting applies (argparse's default kept only the last --set's)
    variant = ["--set", "hidden_bits=10", "learning_rate=0.002", "--set", "frozen_fraction=0.5", "--tag", "narrow"]
    long_budget.main([*argv, *small, "--arms", "saffu-warm", *variant, "--save-models", str(tmp_path / "models")])
    narrow = json.loads((tmp_path / "long_budget" / "saffu-warm-narrow.json").read_text())
    saved = SaffuForCausalLM.from_pretrained(tmp_path / "models" / "saffu-warm-narrow")  # the weights it scored
    recipe = harness.read_config(config)
    _, data = harness.load_data(data_dir, recipe.vocab_size, recipe.block_size)
    assert harness.perplexity(saved, data["validation"]) == pytest.approx(narrow["validation_perplexity"], rel=1e-6)
    assert narrow["recipe"]["model"]["hidden_bits"] == 10 and narrow["parameters"] < warm["parameters"]
    assert narrow["recipe"]["learning_rate"] == 0.002 and "learning_rate" not in narrow["recipe"]["model"]
    assert narrow["frozen_steps"] == round(0.5 * narrow["planned_steps"]) and narrow["steps_per_cpu_second"]["frozen"]
    long_budget.main(["--output-dir", str(tmp_path), "--report"])
    assert "| SAFFU warm start + backprop (staged) [narrow] |" in (tmp_path / "LONG_BUDGET.md").read_text()
    # the targets of a tagged run (e.g. the shipped config's), named by --targets-arm
    assert f"{warm['validation_perplexity']:.1f}" != f"{narrow['validation_perplexity']:.1f}"
    for key, run in (("saffu-warm", warm), ("saffu-warm-narrow", narrow)):
        long_budget.main(["--output-dir", str(tmp_path), "--report", "--targets-arm", key])
        payload = json.loads((tmp_path / "long_budget.json").read_text())
        trigram = next(t for t in payload["targets"] if "Kneser-Ney trigram" in t["target"])
        assert trigram["numbers"].startswith(f"{run['validation_perplexity']:.1f} vs ")
        assert f"--targets-arm {key} " in (tmp_path / "LONG_BUDGET.md").read_text()
    # the shipped config's calibrate_gate: the best weights' gate fitted on the validation split before the scores
    gated = ["--set", "neural_mixture_dim=8", "calibrate_gate=true", "--tag", "gated"]
    long_budget.main([*argv, *small, "--arms", "saffu-warm", *gated, "--save-models", str(tmp_path / "models")])
    gated = json.loads((tmp_path / "long_budget" / "saffu-warm-gated.json").read_text())
    saved = SaffuForCausalLM.from_pretrained(tmp_path / "models" / "saffu-warm-gated")
    assert harness.perplexity(saved, data["validation"]) == pytest.approx(gated["validation_perplexity"], rel=1e-6)
    fit = gated["gate_calibration"]
    assert fit["gate_calibration_perplexity_after"] == pytest.approx(gated["validation_perplexity"], rel=1e-6)
    assert fit["gate_calibration_perplexity_before"] == pytest.approx(
        gated["uncalibrated"]["validation_perplexity"], rel=1e-6
    )
    assert gated["validation_perplexity"] <= gated["uncalibrated"]["validation_perplexity"]
    assert "gate_calibration" not in narrow
    long_budget.main(["--output-dir", str(tmp_path), "--report"])
    calibrated = (tmp_path / "LONG_BUDGET.md").read_text().split("## Gate calibration")[1]
    assert "| SAFFU warm start + backprop (staged) [gated] |" in calibrated and "[narrow]" not in calibrated
    with pytest.raises(SystemExit, match="--targets-arm saffu-warm-wide: no results file .*saffu-warm-wide.json"):
        long_budget.main(["--output-dir", str(tmp_path), "--report", "--targets-arm", "saffu-warm-wide"])
    with pytest.raises(SystemExit, match="--targets-arm gpt2-equal: a gpt2-equal run, not a saffu-warm run"):
        long_budget.main(["--output-dir", str(tmp_path), "--report", "--targets-arm", "gpt2-equal"])
    assert (tmp_path / "long_budget.png").stat().st_size > 0


@pytest.mark.parametrize("pivot_head", [False, True])
def test_step_profile_script(corpus, tmp_path, pivot_head):
    data_dir, config = corpus
    config = benchmark_recipe(tmp_path / "tiny.yaml", **TINY_RECIPE, pivot_head=pivot_head)
    argv = ["--data-dir", str(data_dir), "--config", str(config), "--output-dir", str(tmp_path), "--steps", "2"]
    payload = step_profile.main([*argv, "--batch-size", "4"])
    rows = payload["seconds_per_step"]
    assert {"unfrozen", "frozen", "frozen + cached", "output layer alone (frozen)"} <= rows.keys()
    assert ("unfrozen, dense pivot head" in rows) == pivot_head and all(s > 0 for s in rows.values())
    assert 0 < sum(o["share"] for o in payload["operators"]) <= 1
    assert "| frozen + cached |" in (tmp_path / "STEP_PROFILE.md").read_text()


def test_capacity_probe_script(corpus, tmp_path):
    data_dir, config = corpus
    argv = ["--data-dir", str(data_dir), "--config", str(config), "--output-dir", str(tmp_path), "--blocks", "4"]
    small = ["--held-out-blocks", "2", "--budget-cpu-seconds", "0.5", "--gpt2-dims", "16", "2"]
    payload = capacity_probe.main([*argv, *small, "--variants", "hidden_bits=20"])
    arms = {r["arm"]: r for r in payload["results"]}
    assert list(arms) == ["SAFFU (config)", "SAFFU, hidden_bits=20", "GPT-2 2x128", "GPT-2 4x16"]
    assert arms["SAFFU, hidden_bits=20"]["parameters"] > arms["SAFFU (config)"]["parameters"]
    assert all(1 < r["validation_perplexity"] < float("inf") for r in arms.values())
    assert "| GPT-2 4x16 |" in (tmp_path / "CAPACITY_PROBE.md").read_text()


def test_scale_script_quick(corpus, tmp_path):
    """`python -m training.scale --quick`: a real size (documents in a seeded order, packed as hf_saffu.data packs
    them) and a resampled one, each warm-started in its own process; the real size scored against the KN trigram
    and pruned to a budget by both rules."""
    from training import scale

    data_dir, config = corpus
    argv = ["--quick", "--data-dir", str(data_dir), "--config", str(config), "--output-dir", str(tmp_path)]
    real, resampled = scale.main([*argv, "--cache-dir", str(tmp_path / "cache")])
    assert not real["resampled"] and resampled["resampled"] and resampled["tokens"] == 12_000
    folder = next((tmp_path / "cache").iterdir())
    documents = np.load(folder / "documents.npz")
    flat, offsets = documents["flat"], documents["offsets"]
    order = np.random.default_rng(0).permutation(len(offsets) - 1)
    expected = scale.pack_token_ids(
        [flat[offsets[i] : offsets[i + 1]].tolist() for i in order], 32, 0, 1
    )  # EOS id 0, pad id 1: the trained tokenizer's special tokens
    ids, mask = scale.BlockFile(folder / "blocks-2000", 32, 7).whole()
    assert torch.equal(ids, torch.tensor(expected["input_ids"][: len(ids)]))
    assert torch.equal(mask, torch.tensor(expected["attention_mask"][: len(ids)], dtype=torch.uint8))
    assert real["tokens"] == int(mask.sum()) and real["blocks"] == math.ceil(2000 / 32)
    validation = scale.validation_dataset(folder)[:]
    kneser_ney = KneserNeyLM(3, 300).fit(ids, mask).perplexity(validation["input_ids"], validation["attention_mask"])
    assert real["kneser_ney_trigram_perplexity"] == kneser_ney
    assert real["pivot_trigrams"]["triples_kept"] == real["pivot_trigrams"]["triples_seen"]  # within 512 MB
    by_rule = {point["rule"]: point for point in real["pruning"]}
    for point in by_rule.values():  # the budget holds the entries: 12 bytes a pair, 28 a triple
        assert point["pairs_kept"] * 12 + point["triples_kept"] * 28 <= 0.005 * 2**20 < point["table_mb"] * 2**20
    assert by_rule["contribution"]["triples_kept"] < real["pivot_trigrams"]["triples_seen"]
    report = (tmp_path / "SCALE.md").read_text()
    assert (
        "| 12k (resampled) |" in report and "## Pruning at 2k tokens" in report and (tmp_path / "scale.png").is_file()
    )
    scale.main([*argv, "--rewrite", "--note", "A note."])  # the report again from scale.json, same command line
    rewritten = (tmp_path / "SCALE.md").read_text()
    assert rewritten.startswith(report.rstrip("\n")) and rewritten.rstrip().endswith("A note.")


def test_update_counts_script(corpus, tmp_path):
    """`python -m training.update_counts`: the tables updated with B's counts equal those of the warm start on A + B."""
    from training import update_counts

    data_dir, config = corpus
    argv = ["--data-dir", str(data_dir), "--config", str(config), "--output-dir", str(tmp_path)]
    payload = update_counts.main(argv)
    arms = {r["arm"]: r for r in payload["results"]}
    assert list(arms) == ["A", "A, updated with B's counts", "A + B"]
    assert payload["table_difference"] < 1e-5
    assert arms["A + B"]["warm_start_tokens"] > arms["A"]["warm_start_tokens"]
    assert "| A, updated with B's counts |" in (tmp_path / "UPDATE.md").read_text()


# -- the long budget's GPT-2 + Kneser-Ney trigram mixture ----------------------------------------------


def test_mixture_is_the_two_models_token_by_token(corpus):
    data_dir, config = corpus
    recipe = harness.read_config(config)
    tokenizer, data = harness.load_data(data_dir, recipe.vocab_size, recipe.block_size)
    torch.manual_seed(0)
    gpt2 = harness.gpt2_model(tokenizer, recipe.block_size, 1, 16, 2)
    train, split = data["train"][:], data["validation"]
    trigram = KneserNeyLM(3, len(tokenizer)).fit(train["input_ids"], train["attention_mask"])
    neural = long_budget.token_log_probs(gpt2, split, batch_size=3)
    counts = trigram.token_log_probs(split[:]["input_ids"], split[:]["attention_mask"])
    assert long_budget.mixture_perplexity(neural, counts, 1.0) == pytest.approx(harness.perplexity(gpt2, split), 1e-6)
    kn_alone = trigram.perplexity(split[:]["input_ids"], split[:]["attention_mask"])
    assert long_budget.mixture_perplexity(neural, counts, 0.0) == pytest.approx(kn_alone, rel=1e-12)
    nll, tokens = 0.0, 0  # block by block: each model on the block alone, mixed token by token
    for i in range(len(split)):
        block = split.select([i])
        p_neural = long_budget.token_log_probs(gpt2, block).exp()
        p_counts = trigram.token_log_probs(block[:]["input_ids"], block[:]["attention_mask"]).exp()
        nll, tokens = nll - torch.log(0.3 * p_neural + 0.7 * p_counts).sum().item(), tokens + len(p_neural)
    assert long_budget.mixture_perplexity(neural, counts, 0.3) == pytest.approx(math.exp(nll / tokens), rel=1e-9)
    # the caches' p_K1 and p_K2, counted by hand: each target's frequency among the block's last 12 tokens before it,
    # and among the tokens that followed the earlier occurrences of its pivot there (NaN: the pivot not seen before)
    unigram, bigram = (long_budget.cache_log_probs(split, 12, order).exp() for order in (1, 2))
    by_hand = ([], [])
    for row in split:
        ids, known = row["input_ids"].tolist(), row["attention_mask"].bool().tolist()
        for t in range(1, len(ids)):
            if row["labels"][t] != -100:
                window = [j for j in range(max(t - 12, 0), t) if known[j]]
                by_hand[0].append([ids[j] for j in window].count(ids[t]) / len(window))
                after = [ids[j + 1] for j in window[:-1] if ids[j] == ids[t - 1] and known[j + 1]]
                by_hand[1].append(after.count(ids[t]) / len(after) if after else math.nan)
    assert max(by_hand[0]) > 0 and min(by_hand[0]) == 0 and 0 < sum(map(math.isnan, by_hand[1])) < len(by_hand[1])
    assert max(value for value in by_hand[1] if value == value) > 0
    torch.testing.assert_close(unigram, torch.tensor(by_hand[0], dtype=torch.float64))
    torch.testing.assert_close(bigram, torch.tensor(by_hand[1], dtype=torch.float64), equal_nan=True)
    # with constant weights, the nested mixture (the SAFFU's rule) is the mixture of the three, position by position
    nested = long_budget.cached_mixture_nll(neural, counts, [unigram.log(), bigram.log()], 0.3, (0.1, 0.2))
    first = 0.9 * (0.3 * neural.exp() + 0.7 * counts.exp()) + 0.1 * unigram
    second = torch.where(bigram.isnan(), first, 0.8 * first + 0.2 * bigram)
    assert float(nested) == pytest.approx(-float(second.log().mean()), rel=1e-12)
    with pytest.raises(ValueError, match="same tokens"):
        long_budget.mixture_perplexity(neural, counts[1:], 0.5)


def test_long_budget_mixture_arm_and_its_targets(corpus, tmp_path, monkeypatch):
    # three budget points every arm passes at its first curve points (no CPU-time dependence), one past the budget
    monkeypatch.setattr(long_budget, "BUDGET_POINTS", (1e-9, 2e-9, 3e-9, 1e6))
    data_dir, config = corpus
    ood = tmp_path / "ood.txt"
    ood.write_text("\n".join(sentences(20, 9)[::-1]) + "\n")
    argv = ["--data-dir", str(data_dir), "--config", str(config), "--output-dir", str(tmp_path), "--ood-file", str(ood)]
    small = ["--budget-cpu-seconds", "1", "--eval-every", "0.2", "--curve-blocks", "4"]
    long_budget.main([*argv, *small, "--arms", "counts", "saffu-warm", "gpt2-kn3"])
    arm = json.loads((tmp_path / "long_budget" / "gpt2-kn3.json").read_text())
    counts = json.loads((tmp_path / "long_budget" / "counts.json").read_text())["results"]
    trigram = next(r for r in counts if r["arm"] == "Kneser-Ney 3-gram")
    assert arm["complete"] and arm["arm"] == "GPT-2 2x128 + Kneser-Ney 3-gram" and arm["curve"][0]["step"] == 0
    assert arm["kneser_ney"]["validation_perplexity"] == pytest.approx(trigram["validation_perplexity"], rel=1e-12)
    assert arm["kneser_ney"]["test_perplexity"] == pytest.approx(trigram["test_perplexity"], rel=1e-12)
    assert [p["budget_cpu_seconds"] for p in arm["mixture"]] == [1e-9, 2e-9, 3e-9]
    curve = {p["cpu_seconds"]: p["validation_perplexity"] for p in arm["curve"]}
    for point in [*arm["mixture"], arm["mixture_final"]]:
        assert point["lambda"] in long_budget.LAMBDAS
        assert point["curve_perplexity"] == min(point["curve_by_lambda"].values())
        unigram, both = point["with_cache"]  # kappa = 0 is the mixture: chosen on the curve subset, never worse there
        assert (unigram["orders"], both["orders"]) == (1, 2) and both["lambda"] in long_budget.LAMBDAS
        assert [
            kappa in grid for kappa, grid in zip(both["cache_weights"], long_budget.CACHE_WEIGHTS, strict=True)
        ] == [True] * 2
        assert both["curve_perplexity"] <= unigram["curve_perplexity"] <= point["curve_perplexity"] * (1 + 1e-12)
        assert point["curve_perplexity"] <= min(
            point["neural"]["curve_perplexity"], arm["kneser_ney"]["curve_perplexity"]
        )
    for point in arm["mixture"]:  # the GPT-2 of the mixture is the GPT-2 of the curve point
        assert point["cpu_seconds"] >= point["budget_cpu_seconds"]
        assert point["neural"]["curve_perplexity"] == pytest.approx(curve[point["cpu_seconds"]], rel=1e-6)
    final = arm["mixture_final"]
    for split in ("validation", "test", "ood"):
        assert final["neural"][f"{split}_perplexity"] == pytest.approx(arm[f"{split}_perplexity"], rel=1e-6)
    long_budget.main(["--output-dir", str(tmp_path), "--report"])
    payload = json.loads((tmp_path / "long_budget.json").read_text())
    mixed = [t for t in payload["targets"] if "Kneser-Ney 3-gram mixture" in t["target"]]
    assert len(mixed) == 4 and all(isinstance(t["met"], bool) for t in mixed)
    text = (tmp_path / "LONG_BUDGET.md").read_text()
    assert f"| GPT-2 2x128 + Kneser-Ney 3-gram (lam {final['lambda']:.2f} on GPT-2) |" in text
    assert (
        f"{final['validation_perplexity']:.1f} | {final['test_perplexity']:.1f} | {final['ood_perplexity']:.1f} |"
        in text
    )
    assert "## GPT-2 2x128 + Kneser-Ney 3-gram, interpolated" in text
    both = final["with_cache"][1]
    kappas = " / ".join(f"{kappa:.2f}" for kappa in both["cache_weights"])
    assert f"| best checkpoint | 1-2 | {both['lambda']:.2f} / {kappas} | {both['curve_perplexity']:.1f} |" in text
    # a partial file (the run still going): the points it has not reached are not measured
    partial = {**arm, "complete": False, "mixture": arm["mixture"][:1]}
    del partial["mixture_final"]
    (tmp_path / "long_budget" / "gpt2-kn3.json").write_text(json.dumps(partial))
    long_budget.main(["--output-dir", str(tmp_path), "--report"])
    payload = json.loads((tmp_path / "long_budget.json").read_text())
    mixed = [t["met"] for t in payload["targets"] if "Kneser-Ney 3-gram mixture" in t["target"]]
    assert isinstance(mixed[0], bool) and mixed[1:] == [None, None, None]
    assert "(not reached)" in (tmp_path / "LONG_BUDGET.md").read_text()
    assert (tmp_path / "long_budget.png").stat().st_size > 0
    # a tagged run of the mixture arm (another session's) gets its own table, its lam and numbers as recorded
    (tmp_path / "long_budget" / "gpt2-kn3-again.json").write_text(json.dumps(arm))
    long_budget.main(["--output-dir", str(tmp_path), "--report"])
    text = (tmp_path / "LONG_BUDGET.md").read_text()
    tagged = text.split("## GPT-2 2x128 + Kneser-Ney 3-gram, interpolated [again]")[1]
    assert f"| {final['lambda']:.2f} |" in tagged and f"| {final['ood_perplexity']:.1f} |" in tagged
