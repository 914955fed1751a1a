"""Held-out calibration of the neural mixture's gate (`hf_saffu.calibration`, ExplicitTrainer's calibrate_gate)."""

import json
import math
from pathlib import Path

import pytest
import torch
from factories import (
    job_arguments,
    one_and_two_processes,
    packed_dataset,
    randomised_mixture,
    saffu_config,
    training_arguments,
)

from hf_saffu import SaffuForCausalLM
from hf_saffu.calibration import fit_gate, gate_terms, mean_nll
from hf_saffu.model_card import RESULTS_FILE
from hf_saffu.modeling_saffu import SaffuNeuralMixture
from hf_saffu.train import run_training
from hf_saffu.trainer import ExplicitTrainer

HERE = Path(__file__).parent


def labelled_batches(dataset, size: int) -> list[dict]:
    """Batches of `size` blocks with their labels (input_ids, attention_mask, labels)."""
    torch_dataset = dataset.with_format("torch")
    return [torch_dataset[start : start + size] for start in range(0, len(dataset), size)]


def target_log_probs(model: SaffuForCausalLM, batches: list[dict]) -> torch.Tensor:
    """ln p(y_t) at every target, from the model's full ln p over the vocabulary (not the loss path)."""
    values = []
    with torch.no_grad():
        for batch in batches:
            log_probs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
            known = targets != -100
            values.append(log_probs.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)[known])
    return torch.cat(values).double()


@pytest.mark.parametrize("classes", [0, 5])
def test_the_terms_mix_to_the_models_probabilities_and_the_fold_equals_the_calibrated_mixture(classes):
    """gate_terms' (s_t, ln p_C, ln p_N) mix to the model's own ln p(y_t), read from its full logits; folding a
    scale and shift into the gate gives the model whose ln p(y_t) is the mixture with sigmoid(a s_t + d)."""
    model = randomised_mixture(neural_mixture_classes=classes).double()
    batches = labelled_batches(packed_dataset(12, seed=1), 5)
    terms = gate_terms(model, batches)
    before = target_log_probs(model, batches)
    assert len(terms) == len(before) > 100
    gate, counted, neural = terms.unbind(-1)
    assert gate.std() > 0.5  # the gate differs between positions, so the scale matters
    torch.testing.assert_close(SaffuNeuralMixture.mix(gate, counted, neural), before)
    model.neural_mixture.calibrate_gate(0.6, -0.3)
    after = target_log_probs(model, batches)
    torch.testing.assert_close(after, SaffuNeuralMixture.mix(0.6 * gate - 0.3, counted, neural))
    assert float(-after.mean()) == pytest.approx(float(mean_nll(terms, 0.6, -0.3)), rel=1e-10)
    assert not torch.allclose(after, before, atol=1e-3)


def test_fit_gate_recovers_the_gate_the_data_were_drawn_from():
    """Targets drawn from a mixture whose weight is sigmoid(0.5 s_t - 0.4): the fit recovers a = 0.5, d = -0.4
    (maximum likelihood on 40,000 targets), where the gradient vanishes."""
    generator = torch.Generator().manual_seed(0)
    size = 40_000
    gate = 3 * torch.randn(size, generator=generator, dtype=torch.float64)
    counted = torch.rand(size, generator=generator, dtype=torch.float64) * 0.9 + 0.05  # p_C(first outcome)
    neural = torch.rand(size, generator=generator, dtype=torch.float64) * 0.9 + 0.05
    weight = torch.sigmoid(0.5 * gate - 0.4)
    first = torch.rand(size, generator=generator, dtype=torch.float64) < (1 - weight) * counted + weight * neural
    terms = torch.stack(
        [gate, torch.where(first, counted, 1 - counted).log(), torch.where(first, neural, 1 - neural).log()], -1
    )
    scale, shift = fit_gate(terms)
    assert scale == pytest.approx(0.5, abs=0.08) and shift == pytest.approx(-0.4, abs=0.1)
    parameters = torch.tensor([scale, shift], dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(mean_nll(terms, parameters[0], parameters[1]), parameters)
    assert gradient.abs().max() < 1e-6
    assert float(mean_nll(terms, scale, shift)) < float(mean_nll(terms, 1.0, 0.0)) - 0.005


def test_fit_gate_keeps_the_trained_gate_when_nothing_is_better():
    """Where p_C = p_N at every target the gate changes nothing: the fit keeps a = 1, d = 0."""
    counted = -torch.rand(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 5
    terms = torch.stack([torch.randn(100, dtype=torch.float64), counted, counted], -1)
    assert fit_gate(terms) == (1.0, 0.0)


def test_the_trainer_calibrates_the_gate_on_the_validation_split(tmp_path):
    """calibrate_gate=True: after training, the gate is the trained one fitted on the validation split (the same a
    and d as fit_gate on the uncalibrated model's terms), folded into w and c; evaluate then gives the calibrated
    perplexity, no worse than the trained gate's; the fit is logged."""
    train, validation = packed_dataset(40), packed_dataset(8, seed=1)
    models, trainers = {}, {}
    for calibrate in (False, True):
        torch.manual_seed(0)
        models[calibrate] = SaffuForCausalLM(saffu_config(neural_mixture_dim=8, ngram_order=3))
        args = training_arguments(
            tmp_path / str(calibrate), max_steps=8, save_strategy="no", learning_rate=0.05, calibrate_gate=calibrate
        )
        trainers[calibrate] = ExplicitTrainer(
            model=models[calibrate], args=args, train_dataset=train, eval_dataset=validation
        )
        trainers[calibrate].train()
    plain, calibrated = models[False].neural_mixture, models[True].neural_mixture
    assert trainers[False].gate_calibration is None
    terms = gate_terms(models[False], labelled_batches(validation, 16))
    scale, shift = fit_gate(terms)
    fit = trainers[True].gate_calibration
    assert (fit.scale, fit.shift) == pytest.approx((scale, shift), rel=1e-6, abs=1e-9)
    assert abs(scale - 1) > 0.01 or abs(shift) > 0.01  # the fit moved the gate
    torch.testing.assert_close(calibrated.gate_weight, scale * plain.gate_weight)
    torch.testing.assert_close(calibrated.gate_bias, scale * plain.gate_bias + shift)
    assert fit.perplexity_before == pytest.approx(math.exp(float(mean_nll(terms, 1.0, 0.0))), rel=1e-9)
    assert fit.perplexity_after < fit.perplexity_before
    evaluated = trainers[True].evaluate()["eval_perplexity"]
    assert evaluated == pytest.approx(fit.perplexity_after, rel=1e-5)
    assert any(entry.get("gate_scale") == fit.scale for entry in trainers[True].state.log_history)


@pytest.mark.parametrize("checkpoint", [3, 6])
def test_a_resumed_run_ends_with_the_uninterrupted_runs_calibrated_gate(tmp_path, checkpoint):
    """The checkpoints hold the trained gate and the fit comes after training: a run resumed from checkpoint-3, or
    from checkpoint-6 (a run killed after its last checkpoint: no step to train), ends with the weights of the run
    that was not interrupted, calibrated gate included."""
    train, validation = packed_dataset(40), packed_dataset(8, seed=1)
    settings = dict(calibrate_gate=True, learning_rate=0.05, table_leave_one_out=True)
    config = saffu_config(neural_mixture_dim=8, ngram_order=3)
    models = []
    for name in ("whole", "resumed"):
        torch.manual_seed(0)
        models.append(SaffuForCausalLM(config))
        args = training_arguments(tmp_path / name, **settings)
        ExplicitTrainer(model=models[-1], args=args, train_dataset=train, eval_dataset=validation).train()
    torch.manual_seed(0)
    resumed = SaffuForCausalLM(config)
    args = training_arguments(tmp_path / "resumed", **settings)
    trainer = ExplicitTrainer(model=resumed, args=args, train_dataset=train, eval_dataset=validation)
    trainer.train(resume_from_checkpoint=str(tmp_path / "resumed" / "run" / f"checkpoint-{checkpoint}"))
    assert trainer.state.global_step == 6 and trainer.gate_calibration is not None
    whole = models[0]
    assert abs(trainer.gate_calibration.scale - 1) > 0.01 or abs(trainer.gate_calibration.shift) > 0.01
    for name, parameter in whole.named_parameters():
        torch.testing.assert_close(resumed.get_parameter(name), parameter, rtol=1e-5, atol=1e-7, msg=name)


def test_the_job_reports_the_calibration_and_its_validation_perplexity(tmp_path):
    """hf-saffu train with calibrate_gate: results.json holds the fit, and the validation perplexity it reports
    is the calibrated one (evaluated after the fold)."""
    model_args, data_args, training_args = job_arguments(
        tmp_path, {"neural_mixture_dim": 8}, max_steps=4, save_strategy="no", calibrate_gate=True
    )
    results = run_training(model_args, data_args, training_args)
    saved = json.loads((Path(training_args.output_dir) / RESULTS_FILE).read_text())
    assert saved["gate_calibration"] == results["gate_calibration"]
    fit = results["gate_calibration"]
    assert results["validation_perplexity"] == pytest.approx(fit["gate_calibration_perplexity_after"], rel=1e-5)
    assert fit["gate_calibration_perplexity_after"] <= fit["gate_calibration_perplexity_before"]
    card = (Path(training_args.output_dir) / "README.md").read_text()
    before = f"{fit['gate_calibration_perplexity_before']:,.2f}"
    shift = fit["gate_shift"]
    assert f"lambda = sigmoid({fit['gate_scale']:.3f} s {'-' if shift < 0 else '+'} {abs(shift):.3f})" in card
    assert f"before the fit it was {before}." in card
    assert "| Final (after backpropagation) |" in card.split("before the fit it was")[0]


def test_calibrate_gate_needs_a_gate_and_one_validation_split(tmp_path):
    train = packed_dataset(10)
    args = training_arguments(tmp_path, calibrate_gate=True)
    with pytest.raises(
        ValueError, match=r"calibrate_gate=True fits the neural word model's gate, .*neural_mixture_dim"
    ):
        ExplicitTrainer(model=SaffuForCausalLM(saffu_config()), args=args, train_dataset=train, eval_dataset=train)
    mixture = SaffuForCausalLM(saffu_config(neural_mixture_dim=8))
    with pytest.raises(ValueError, match=r"one validation split \(eval_dataset, --validation_files\), got none"):
        ExplicitTrainer(model=mixture, args=args, train_dataset=train)
    with pytest.raises(ValueError, match="got a dict of 2 datasets"):
        ExplicitTrainer(model=mixture, args=args, train_dataset=train, eval_dataset={"a": train, "b": train})


def test_two_process_calibration_equals_one_process(tmp_path):
    """Under data parallelism (2 processes, gloo) each process scores its shard of the validation split (an odd
    number of blocks) and fits on the terms gathered from both: the same fit and gate as one process."""
    script = HERE / "distributed_calibration.py"
    one, two = one_and_two_processes(script, tmp_path)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["targets"] == two["targets"] > 100  # every target once: no shard's padding counted
    assert two["scale"] == pytest.approx(one["scale"], rel=1e-6) and two["shift"] == pytest.approx(
        one["shift"], abs=1e-6
    )
    assert abs(one["scale"] - 1) > 0.01
    torch.testing.assert_close(two["gate"], one["gate"])
