"""Held-out calibration of the neural mixture's gate (docs/DESIGN.md, section 8; BEYOND_COUNTING.md).

The gate lambda_t = sigmoid(s_t), s_t = g_t w + c, of `SaffuNeuralMixture` learns where p_N beats the counted parts
p_C on the training split. Measured on Brown, it comes out too sharp for unseen text, and most so out of domain
(BEYOND_COUNTING.md, thirteenth session). Count models fit their mixing weights on held-out data (deleted
interpolation). This fits the gate's scale a and shift d the same way, on the targets y_t of held-out text
(ExplicitTrainer: the validation split):

    (a, d) = argmin_{a, d} -sum_t ln((1 - sigmoid(a s_t + d)) p_C(y_t) + sigmoid(a s_t + d) p_N(y_t)),

then folds them into the gate (w <- a w, c <- a c + d, `SaffuNeuralMixture.calibrate_gate`). With caches
(`SaffuTokenCache`), each cache's gate kappa_tn = sigmoid(r_tn) is fitted with it, kappa_tn = sigmoid(a_n r_tn + d_n),
2 + 2 N numbers on the likelihood of the nested mixture p^N(y_t) (`SaffuNeuralMixture`). The saved model has no new
parameter, and generation reads it like any other. a = 1, d = 0 is the trained gate, and the fit keeps it when
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
    caches: tuple[float, ...] = ()  # a_1, d_1, ..., a_N, d_N: kappa_tn = sigmoid(a_n r_tn + d_n), with caches

    def metrics(self) -> dict[str, float]:
        caches = {}
        for n in range(len(self.caches) // 2):
            caches[f"cache_gate_scale_{n + 1}"], caches[f"cache_gate_shift_{n + 1}"] = self.caches[2 * n : 2 * n + 2]
        return {
            "gate_scale": self.scale,
            "gate_shift": self.shift,
            **caches,
            "gate_calibration_perplexity_before": self.perplexity_before,
            "gate_calibration_perplexity_after": self.perplexity_after,
            "gate_calibration_targets": float(self.targets),
        }


def gate_terms(
    model: SaffuForCausalLM, batches: Iterable[dict], gather: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """(N, 3) float64: (s_t, ln p_C(y_t), ln p_N(y_t)) at every target of `batches` (dicts of input_ids, labels and
    optionally attention_mask); (N, 3 + 2 C) with C caches, (r_tn, ln p_Kn(y_t)) after them (ln p_Kn NaN where the
    cache has no evidence). They are read from the model's own loss path in evaluation mode (`skip_logits`,
    `SaffuNeuralMixture.target_log_probs`). `gather` collects each batch's terms (batch, T, columns), NaN where there
    is no target, across processes (ExplicitTrainer: `Accelerator.gather_for_metrics`)."""
    mixture = model.neural_mixture
    if mixture is None:
        raise ValueError("gate calibration needs a neural mixture (SaffuConfig.neural_mixture_dim > 0): it has none")
    was_training, kept, columns = model.training, [], 3 + 2 * len(mixture.caches)
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
    terms = terms[~terms[:, 1].isnan()]  # the targets (a cache's NaN: no evidence)
    if len(terms) == 0:
        raise ValueError("gate calibration: the held-out data holds no predicted tokens")
    return terms


def mean_nll(terms: torch.Tensor, scale=1.0, shift=0.0, *caches) -> torch.Tensor:
    """-mean_t ln p(y_t) of the mixture with the gate sigmoid(scale s_t + shift) and, with caches, their gates
    sigmoid(a_n r_tn + d_n) (`caches` = a_1, d_1, ..., a_N, d_N, default 1, 0 each), from `gate_terms`."""
    mixed = SaffuNeuralMixture.mix(scale * terms[:, 0] + shift, terms[:, 1], terms[:, 2])
    for n in range((terms.shape[1] - 3) // 2):
        cache_scale, cache_shift = caches[2 * n : 2 * n + 2] if caches else (1.0, 0.0)
        cached = terms[:, 4 + 2 * n]
        cached = torch.where(cached.isnan(), mixed, cached)  # no evidence: kappa changes nothing
        mixed = SaffuNeuralMixture.mix(cache_scale * terms[:, 3 + 2 * n] + cache_shift, mixed, cached)
    return -mixed.mean()


def fit_gate(terms: torch.Tensor) -> tuple[float, ...]:
    """The scale a and shift d of the best gate on `terms` (`gate_terms`), then with caches each cache gate's a_n,
    d_n, by L-BFGS from 1, 0 each. A fit that is not finite, or not better than the trained gates, returns them
    unchanged: (1.0, 0.0) (1.0, 0.0, 1.0, 0.0, ... with caches)."""
    unchanged = (1.0, 0.0) * ((terms.shape[1] - 1) // 2)
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
    return GateCalibration(fit[0], fit[1], before, after, len(terms), fit[2:])
