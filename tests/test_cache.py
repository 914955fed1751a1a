"""The neural mixture's cache of the last W tokens (`SaffuTokenCache`, neural_mixture_cache_window)."""

import math

import pytest
import torch
from factories import PAD, mixture_model, packed_dataset, randomise_
from test_calibration import labelled_batches, target_log_probs

from hf_saffu import SaffuConfig
from hf_saffu.calibration import calibrate_gate, fit_gate, gate_terms, mean_nll
from hf_saffu.model_card import calibration_note, describe_architecture
from hf_saffu.modeling_saffu import SaffuNeuralMixture

ATTENTION = dict(neural_mixture_attention_window=3, neural_mixture_attention_dim=8, neural_mixture_attention_heads=2)


def cache_model(window: int = 6, **overrides):
    """A randomised trigram-table mixture with a cache of `window` tokens (its recency biases random too)."""
    model = mixture_model(**{"ngram_order": 3, "neural_mixture_cache_window": window, **overrides})
    randomise_(model, scale=0.5)
    return model.double()


def test_the_cache_mixes_in_the_windows_token_frequencies():
    """ln p = ln((1 - kappa) p_M + kappa p_K), recomputed by hand: p_M from the same model without a cache, kappa =
    sigmoid(g_t w_K + c_K) from its hidden features, p_K(y) = sum_j softmax(beta)_j [x_{t-j} = y] over the known
    tokens of the window (fewer at the text's start)."""
    model = cache_model(window=4)
    plain = mixture_model(ngram_order=3).double()
    plain.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(2, 12, (2, 9), generator=torch.Generator().manual_seed(1))  # repeats within the window
    mixture = model.neural_mixture
    with torch.no_grad():
        logits = model(ids).logits
        mixed = plain(ids).logits
        hidden = model.model(ids).last_hidden_state.exp()
        previous = torch.cat([torch.full((2, 1), -1), ids[:, :-1]], dim=1)
        inputs = model.neural_inputs(hidden, ids, previous)
        kappa = torch.sigmoid(mixture.cache_gate(mixture.features(inputs)[2]))
        beta = mixture.cache.offset_bias
        cached = torch.zeros(2, 9, model.config.vocab_size, dtype=torch.float64)
        for b in range(2):
            for t in range(9):
                known = [j for j in range(4) if t - j >= 0]
                alpha = torch.softmax(beta[known], 0)
                for weight, j in zip(alpha, known, strict=True):
                    cached[b, t, ids[b, t - j]] += weight
        expected = torch.log((1 - kappa) * mixed.exp() + kappa * cached)
    assert kappa.std() > 0.05  # the gate differs between positions
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(logits.logsumexp(-1), torch.zeros(2, 9, dtype=torch.float64))


@pytest.mark.parametrize("classes", [0, 6])
def test_the_loss_alone_equals_the_loss_from_the_logits_and_has_no_nan(classes):
    """skip_logits reads ln p_K at the targets alone: the same loss and gradients as the full ln p, with targets
    that are not in the window (ln p_K = -inf there, no NaN in any gradient), and the recency biases learn."""
    model = cache_model(neural_mixture_classes=classes, **ATTENTION).train()
    if classes:
        model.neural_mixture.token_classes.copy_(torch.arange(model.config.vocab_size) % classes)
    ids = torch.randint(2, 40, (3, 10), generator=torch.Generator().manual_seed(4))
    labels = ids.clone()
    labels[0, :4] = -100
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    full, alone = model(ids, labels=labels), model(ids, labels=labels, skip_logits=True)
    assert alone.loss.item() == pytest.approx(full.loss.item(), rel=1e-6)  # the full loss casts to float32
    grads = [torch.autograd.grad(output.loss, trained, allow_unused=True) for output in (full, alone)]
    for expected, got in zip(*grads, strict=True):
        assert (expected is None) == (got is None)
        assert expected is None or (torch.isfinite(got).all() and torch.allclose(expected, got, rtol=1e-4, atol=1e-7))
    named = dict(zip([name for name, p in model.named_parameters() if p.requires_grad], grads[1], strict=True))
    assert named["neural_mixture.cache.offset_bias"].abs().min() > 0
    assert named["neural_mixture.cache_gate_weight"].abs().max() > 0


@pytest.mark.parametrize(("window", "order"), [(9, 3), (2, 2), (70, 4)])
def test_cached_generation_equals_a_full_recompute(window, order):
    """The decoding state keeps the cache's W - 1 tokens (more than the attention's and the tables'), so generating
    from it gives the logits of a full recompute at every step, also once the text is longer than the window."""
    model = cache_model(window=window, initializer_range=3.0, **{**ATTENTION, "ngram_order": order}).eval()
    prompt = torch.randint(2, 12, (2, 5), generator=torch.Generator().manual_seed(4))
    out = model.generate(
        prompt, max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=PAD
    )
    for step, cached in enumerate(out.logits):
        full = model(out.sequences[:, : prompt.shape[1] + step], use_cache=False).logits[:, -1]
        torch.testing.assert_close(cached, full.to(cached.dtype), msg=f"step {step}")


def test_a_fresh_cache_holds_its_initial_weight_and_recency_is_uniform():
    model = mixture_model(neural_mixture_cache_window=5, neural_mixture_cache_weight=0.2)
    mixture = model.neural_mixture
    assert torch.sigmoid(mixture.cache_gate_bias).item() == pytest.approx(0.2)
    assert mixture.cache_gate_weight.abs().max() == 0 and mixture.cache.offset_bias.abs().max() == 0


def test_calibration_fits_both_gates_and_folds_them():
    """With a cache, gate_terms adds (r_t, ln p_K(y_t)); the four fitted numbers fold into both gates so that the
    model's own ln p(y_t) is the calibrated mixture, no worse on the fitted text; the model card says so."""
    model = cache_model(**ATTENTION)
    batches = labelled_batches(packed_dataset(12, seed=1), 5)
    terms = gate_terms(model, batches)
    assert terms.shape[1] == 5
    before = target_log_probs(model, batches)
    mixed = SaffuNeuralMixture.mix(terms[:, 3], SaffuNeuralMixture.mix(*terms[:, :3].unbind(-1)), terms[:, 4])
    torch.testing.assert_close(mixed, before)
    fit = fit_gate(terms)
    assert len(fit) == 4 and fit != (1.0, 0.0, 1.0, 0.0)
    calibration = calibrate_gate(model, batches)
    assert (calibration.scale, calibration.shift, calibration.cache_scale, calibration.cache_shift) == fit
    after = target_log_probs(model, batches)
    assert float(-after.mean()) == pytest.approx(float(mean_nll(terms, *fit)), rel=1e-9)
    assert math.exp(float(-after.mean())) == pytest.approx(calibration.perplexity_after, rel=1e-9)
    assert calibration.perplexity_after < calibration.perplexity_before
    metrics = calibration.metrics()
    assert metrics["cache_gate_scale"] == fit[2] and metrics["cache_gate_shift"] == fit[3]
    assert "kappa = sigmoid(" in calibration_note(metrics) and "four fitted numbers" in calibration_note(metrics)
    assert "with a cache of the last 6 tokens" in describe_architecture(model.config)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"neural_mixture_cache_window": -1}, "neural_mixture_cache_window must be an integer in"),
        ({"neural_mixture_cache_window": 4097}, "neural_mixture_cache_window must be an integer in"),
        ({"neural_mixture_cache_window": 2.5}, "neural_mixture_cache_window must be an integer in"),
        ({"neural_mixture_cache_window": 4}, "neural_mixture_cache_window=4 needs a neural mixture"),
        ({"neural_mixture_dim": 8, "neural_mixture_cache_weight": 1.0}, "neural_mixture_cache_weight must be < 1"),
        ({"neural_mixture_dim": 8, "neural_mixture_cache_weight": -0.1}, "neural_mixture_cache_weight"),
    ],
)
def test_invalid_cache_settings_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        SaffuConfig(**settings)
