"""Held-out calibration of the neural mixture's gate (docs/DESIGN.md, section 8; BEYOND_COUNTING.md).

The gate lambda_t = sigmoid(s_t), s_t = g_t w + c, of `SaffuNeuralMixture` learns where p_N beats the counted parts
p_C on the training split. Measured on Brown, it comes out too sharp for unseen text, and most so out of domain
(BEYOND_COUNTING.md, thirteenth session). Count models fit their mixing weights on held-out data (deleted
interpolation). This fits the gate's scale a and shift d the same way, on the targets y_t of held-out text
(ExplicitTrainer: the validation split):

    (a, d) = argmin_{a, d} -sum_t ln((1 - sigmoid(a s_t + d)) p_C(y_t) + sigmoid(a s_t + d) p_N(y_t)),

then folds them into the gate (w <- a w, c <- a c + d, `SaffuNeuralMixture.calibrate_gate`). The saved model has no
new parameter, and generation reads it like any other. a = 1, d = 0 is the trained gate, and the fit keeps it when
nothing better is found, so calibration never makes the held-out text worse. A gate not trained yet (w = 0, after the
warm start alone) is a constant, and only a c + d matters: the fit is then deleted interpolation's single weight.
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .modeling_saffu import SaffuForCausalLM, SaffuNeuralMixture


@dataclass
class GateCalibration:
    """A fitted gate: lambda_t = sigmoid(`scale` s_t + `shift`), and the held-out perplexity before and after."""

    scale: float
    shift: float
    perplexity_before: float
    perplexity_after: float
    targets: int

    def metrics(self) -> dict[str, float]:
        return {
            "gate_scale": self.scale,
            "gate_shift": self.shift,
            "gate_calibration_perplexity_before": self.perplexity_before,
            "gate_calibration_perplexity_after": self.perplexity_after,
            "gate_calibration_targets": float(self.targets),
        }


def gate_terms(
    model: SaffuForCausalLM, batches: Iterable[dict], gather: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """(N, 3) float64: (s_t, ln p_C(y_t), ln p_N(y_t)) at every target of `batches` (dicts of input_ids, labels and
    optionally attention_mask). They are read from the model's own loss path in evaluation mode (`skip_logits`,
    `SaffuNeuralMixture.target_log_probs`). `gather` collects each batch's terms (batch, T, 3), NaN where there is no
    target, across processes (ExplicitTrainer: `Accelerator.gather_for_metrics`)."""
    mixture = model.neural_mixture
    if mixture is None:
        raise ValueError("gate calibration needs a neural mixture (SaffuConfig.neural_mixture_dim > 0): it has none")
    was_training, kept = model.training, []
    mixture.recorded_terms = recorded = []
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch, skip_logits=True)
                terms = torch.cat(recorded, dim=0)
                recorded.clear()
                kept.append((gather(terms) if gather is not None else terms).reshape(-1, 3).cpu())
    finally:
        mixture.recorded_terms = None
        model.train(was_training)
    terms = torch.cat(kept) if kept else torch.empty(0, 3, dtype=torch.float64)
    terms = terms[~terms.isnan().any(dim=-1)]
    if len(terms) == 0:
        raise ValueError("gate calibration: the held-out data holds no predicted tokens")
    return terms


def mean_nll(terms: torch.Tensor, scale, shift) -> torch.Tensor:
    """-mean_t ln p(y_t) of the mixture with the gate sigmoid(scale s_t + shift), from `gate_terms`."""
    gate, counted, neural = terms.unbind(dim=-1)
    return -SaffuNeuralMixture.mix(scale * gate + shift, counted, neural).mean()


def fit_gate(terms: torch.Tensor) -> tuple[float, float]:
    """The scale a and shift d of the best gate on `terms` (`gate_terms`), by L-BFGS from a = 1, d = 0. A fit that
    is not finite, or not better than the trained gate, returns (1.0, 0.0)."""
    parameters = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [parameters], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = mean_nll(terms, parameters[0], parameters[1])
        loss.backward()
        return loss

    optimizer.step(closure)
    scale, shift = parameters.detach().tolist()
    with torch.no_grad():
        fitted = float(mean_nll(terms, scale, shift))
        trained = float(mean_nll(terms, 1.0, 0.0))
    if not (math.isfinite(scale) and math.isfinite(shift) and fitted < trained):
        return 1.0, 0.0
    return scale, shift


def calibrate_gate(
    model: SaffuForCausalLM, batches: Iterable[dict], gather: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> GateCalibration:
    """Fit the gate of `model`'s neural mixture on the held-out `batches` and fold the fit into its weights."""
    terms = gate_terms(model, batches, gather)
    scale, shift = fit_gate(terms)
    with torch.no_grad():
        before, after = (math.exp(float(mean_nll(terms, *fit))) for fit in ((1.0, 0.0), (scale, shift)))
    model.neural_mixture.calibrate_gate(scale, shift)
    return GateCalibration(scale, shift, before, after, len(terms))
