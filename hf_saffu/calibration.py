"""Held-out calibration of the neural mixture's gate (docs/DESIGN.md, section 8; BEYOND_COUNTING.md).

The gate lambda_t = sigmoid(s_t), s_t = g_t w + c, of `SaffuNeuralMixture` learns where p_N beats the counted parts
p_C on the training split. Measured on Brown, it comes out too sharp for unseen text, and most so out of domain
(BEYOND_COUNTING.md, thirteenth session). Count models fit their mixing weights on held-out data (deleted
interpolation). This fits the gate's scale a and shift d the same way, on the targets y_t of held-out text
(ExplicitTrainer: the validation split):

    (a, d) = argmin_{a, d} -sum_t ln((1 - sigmoid(a s_t + d)) p_C(y_t) + sigmoid(a s_t + d) p_N(y_t)),

then folds them into the gate (w <- a w, c <- a c + d, `SaffuNeuralMixture.calibrate_gate`). With a cache
(`SaffuTokenCache`), its gate kappa_t = sigmoid(r_t) is fitted with it, kappa_t = sigmoid(a_K r_t + d_K), four numbers
on the likelihood of (1 - kappa_t) p_M(y_t) + kappa_t p_K(y_t). The saved model has no new parameter, and generation
reads it like any other. a = 1, d = 0 is the trained gate, and the fit keeps it when
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
    cache_scale: float | None = None  # kappa_t = sigmoid(`cache_scale` r_t + `cache_shift`), with a cache
    cache_shift: float | None = None

    def metrics(self) -> dict[str, float]:
        cache = {} if self.cache_scale is None else {"cache_gate_scale": self.cache_scale}
        cache.update({} if self.cache_shift is None else {"cache_gate_shift": self.cache_shift})
        return {
            "gate_scale": self.scale,
            "gate_shift": self.shift,
            **cache,
            "gate_calibration_perplexity_before": self.perplexity_before,
            "gate_calibration_perplexity_after": self.perplexity_after,
            "gate_calibration_targets": float(self.targets),
        }


def gate_terms(
    model: SaffuForCausalLM, batches: Iterable[dict], gather: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """(N, 3) float64: (s_t, ln p_C(y_t), ln p_N(y_t)) at every target of `batches` (dicts of input_ids, labels and
    optionally attention_mask); (N, 5) with a cache, (r_t, ln p_K(y_t)) after them. They are read from the model's
    own loss path in evaluation mode (`skip_logits`, `SaffuNeuralMixture.target_log_probs`). `gather` collects each
    batch's terms (batch, T, 3 or 5), NaN where there is no target, across processes (ExplicitTrainer:
    `Accelerator.gather_for_metrics`)."""
    mixture = model.neural_mixture
    if mixture is None:
        raise ValueError("gate calibration needs a neural mixture (SaffuConfig.neural_mixture_dim > 0): it has none")
    was_training, kept, columns = model.training, [], 3 if mixture.cache is None else 5
    mixture.recorded_terms = recorded = []
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch, skip_logits=True)
                terms = torch.cat(recorded, dim=0)
                recorded.clear()
                kept.append((gather(terms) if gather is not None else terms).reshape(-1, columns).cpu())
    finally:
        mixture.recorded_terms = None
        model.train(was_training)
    terms = torch.cat(kept) if kept else torch.empty(0, columns, dtype=torch.float64)
    terms = terms[~terms.isnan().any(dim=-1)]
    if len(terms) == 0:
        raise ValueError("gate calibration: the held-out data holds no predicted tokens")
    return terms


def mean_nll(terms: torch.Tensor, scale=1.0, shift=0.0, cache_scale=1.0, cache_shift=0.0) -> torch.Tensor:
    """-mean_t ln p(y_t) of the mixture with the gate sigmoid(scale s_t + shift) (and with a cache, its gate
    sigmoid(cache_scale r_t + cache_shift)), from `gate_terms`."""
    mixed = SaffuNeuralMixture.mix(scale * terms[:, 0] + shift, terms[:, 1], terms[:, 2])
    if terms.shape[1] == 5:
        mixed = SaffuNeuralMixture.mix(cache_scale * terms[:, 3] + cache_shift, mixed, terms[:, 4])
    return -mixed.mean()


def fit_gate(terms: torch.Tensor) -> tuple[float, ...]:
    """The scale a and shift d of the best gate on `terms` (`gate_terms`), and with a cache its gate's a_K, d_K, by
    L-BFGS from a = 1, d = 0 (a_K = 1, d_K = 0). A fit that is not finite, or not better than the trained gates,
    returns them unchanged: (1.0, 0.0) (or (1.0, 0.0, 1.0, 0.0))."""
    unchanged = (1.0, 0.0) * (1 if terms.shape[1] == 3 else 2)
    parameters = torch.tensor(unchanged, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [parameters], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = mean_nll(terms, *parameters)
        loss.backward()
        return loss

    optimizer.step(closure)
    fit = tuple(parameters.detach().tolist())
    with torch.no_grad():
        fitted = float(mean_nll(terms, *fit))
        trained = float(mean_nll(terms, *unchanged))
    if not (all(math.isfinite(number) for number in fit) and fitted < trained):
        return unchanged
    return fit


def calibrate_gate(
    model: SaffuForCausalLM, batches: Iterable[dict], gather: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> GateCalibration:
    """Fit the gate of `model`'s neural mixture on the held-out `batches` and fold the fit into its weights."""
    terms = gate_terms(model, batches, gather)
    fit = fit_gate(terms)
    with torch.no_grad():
        before, after = (math.exp(float(mean_nll(terms, *numbers))) for numbers in ((), fit))
    model.neural_mixture.calibrate_gate(*fit)
    return GateCalibration(fit[0], fit[1], before, after, len(terms), *fit[2:])
