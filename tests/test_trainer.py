"""ExplicitTrainer (hf_saffu.trainer): the warm start around Trainer.train, checkpoints, resume, evaluation."""

import copy
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from factories import (
    assert_same_state,
    batches_of,
    markov_documents,
    one_and_two_processes,
    packed_dataset,
    saffu_config,
    state_of,
    training_arguments,
    write_lines,
)
from transformers import AutoTokenizer, Trainer

from hf_saffu import SaffuForCausalLM
from hf_saffu.data import config_for_tokenizer, load_text_datasets, tokenize_and_pack
from hf_saffu.train import parse_arguments, run_training
from hf_saffu.trainer import DatasetBatches, ExplicitTrainer, FrozenEmbeddingPhase
from hf_saffu.warm_start import explicit_warm_start

HERE = Path(__file__).parent


def test_the_best_checkpoint_is_recorded_under_its_final_name(tmp_path):
    """A checkpoint is written in a staging folder and renamed: the best step's path in the state (and in the
    saved trainer_state.json, which a resume reads) is the final checkpoint-N, and load_best_model_at_end
    reloads it."""
    torch.manual_seed(0)
    arguments = training_arguments(
        tmp_path,
        max_steps=4,
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        warm_start=False,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        learning_rate=5e-2,
    )
    data = packed_dataset(40)
    trainer = ExplicitTrainer(
        model=SaffuForCausalLM(saffu_config()), args=arguments, train_dataset=data, eval_dataset=data.select(range(8))
    )
    trainer.train()
    run = tmp_path / "run"
    best = run / f"checkpoint-{trainer.state.best_global_step}"
    assert trainer.state.best_model_checkpoint == str(best) and best.is_dir()
    saved = json.loads((best / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == str(best)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("tmp-")) == []


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


def test_two_process_warm_start_equals_one_process(tmp_path):
    script = HERE / "distributed_warm_start.py"
    one, two = one_and_two_processes(script, tmp_path)
    assert two["world_size"] == 2 and one["world_size"] == 1
    rows = one["rows"]
    # contiguous disjoint shards covering every block once: no padding by repeated samples
    assert one["shard_rows"] == [rows] and two["shard_rows"] == [(rows + 1) // 2, rows // 2]
    for name, tensor in one["state"].items():
        other = two["state"][name]
        relative = (tensor - other).abs().max() / tensor.abs().max().clamp_min(1e-12)
        assert relative < 1e-6, (name, relative.item())


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
    result = subprocess.run([*command, str(script), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [(tmp_path / f"rank{rank}").read_text() for rank in range(2)]
    assert reports == ["distributed 2 0", "distributed 2 1"]
