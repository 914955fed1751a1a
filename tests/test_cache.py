"""The neural mixture's cache of the last W tokens (`SaffuTokenCache`, neural_mixture_cache_window)."""

import math

import pytest
import torch
from factories import PAD, mixture_model, packed_dataset, randomise_, saffu_config
from test_calibration import labelled_batches, target_log_probs
from test_modeling import BEAM_SEARCH, recomputed_beam_scores

from hf_saffu import SaffuConfig, SaffuForCausalLM
from hf_saffu.calibration import calibrate_gate, fit_gate, gate_terms, mean_nll
from hf_saffu.model_card import calibration_note, describe_architecture

ATTENTION = dict(neural_mixture_attention_window=3, neural_mixture_attention_dim=8, neural_mixture_attention_heads=2)


def cache_model(window: int = 6, **overrides):
    """A randomised trigram-table mixture with a cache of `window` tokens (its recency biases random too)."""
    model = mixture_model(**{"ngram_order": 3, "neural_mixture_cache_window": window, **overrides})
    randomise_(model, scale=0.5)
    return model.double()


def test_the_caches_mix_in_the_windows_token_frequencies_in_turn():
    """ln p = ln p^2, recomputed by hand: p^0 from the same model without caches, p^n = (1 - kappa_n) p^{n-1} +
    kappa_n p_Kn with kappa_n = sigmoid(g_t w_Kn + c_Kn) from its hidden features; p_K1(y) = sum_j softmax(beta_1)_j
    [x_{t-j} = y] over the known tokens of the window (fewer at the text's start), p_K2(y) the same over the tokens
    that followed the earlier occurrences of the pivot in the window, and p^2 = p^1 where there is none."""
    model = cache_model(window=4, neural_mixture_cache_order=2)
    plain = mixture_model(ngram_order=3).double()
    plain.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(2, 6, (2, 9), generator=torch.Generator().manual_seed(1))  # repeats within the window
    mixture = model.neural_mixture
    with torch.no_grad():
        logits = model(ids).logits
        mixed = plain(ids).logits.exp()
        hidden = model.model(ids).last_hidden_state.exp()
        previous = torch.cat([torch.full((2, 1), -1), ids[:, :-1]], dim=1)
        inputs = model.neural_inputs(hidden, ids, previous)
        kappa = torch.sigmoid(mixture.cache_gates(mixture.features(inputs)[2]))
        unigram, bigram = (cache.offset_bias for cache in mixture.caches)
        expected = torch.zeros(2, 9, model.config.vocab_size, dtype=torch.float64)
        matched = 0
        for b in range(2):
            for t in range(9):
                known = [j for j in range(4) if t - j >= 0]
                cached = torch.zeros(model.config.vocab_size, dtype=torch.float64)
                for weight, j in zip(torch.softmax(unigram[known], 0), known, strict=True):
                    cached[ids[b, t - j]] += weight
                first = (1 - kappa[b, t, 0]) * mixed[b, t] + kappa[b, t, 0] * cached
                after = [j for j in range(1, 4) if t - j >= 0 and ids[b, t - j] == ids[b, t]]  # offsets j = 1 ... 3
                expected[b, t] = first
                if after:
                    matched += 1
                    cached = torch.zeros(model.config.vocab_size, dtype=torch.float64)
                    for weight, j in zip(torch.softmax(bigram[[j - 1 for j in after]], 0), after, strict=True):
                        cached[ids[b, t - j + 1]] += weight
                    expected[b, t] = (1 - kappa[b, t, 1]) * first + kappa[b, t, 1] * cached
    assert 0 < matched < 18 and kappa.std() > 0.05  # the gates differ between positions
    torch.testing.assert_close(logits, expected.log())
    torch.testing.assert_close(logits.logsumexp(-1), torch.zeros(2, 9, dtype=torch.float64))


@pytest.mark.parametrize("classes", [0, 6])
def test_the_loss_alone_equals_the_loss_from_the_logits_and_has_no_nan(classes):
    """skip_logits reads ln p_Kn at the targets alone: the same loss and gradients as the full ln p, with targets
    that are not candidates (ln p_Kn = -inf there) and positions where the order-2 cache has no evidence (no NaN in
    any gradient), and the recency biases learn."""
    model = cache_model(neural_mixture_classes=classes, neural_mixture_cache_order=2, **ATTENTION).train()
    if classes:
        model.neural_mixture.token_classes.copy_(torch.arange(model.config.vocab_size) % classes)
    ids = torch.randint(2, 6, (3, 10), generator=torch.Generator().manual_seed(4))
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
    assert named["neural_mixture.caches.0.offset_bias"].abs().min() > 0
    assert named["neural_mixture.caches.1.offset_bias"].abs().max() > 0
    assert named["neural_mixture.cache_gate_weight"].abs().sum(0).min() > 0


@pytest.mark.parametrize(("window", "orders", "ngram_order"), [(9, 2, 3), (2, 1, 2), (70, 3, 4), (5, 5, 3)])
def test_cached_generation_equals_a_full_recompute(window, orders, ngram_order):
    """The decoding state keeps the caches' W - 1 tokens (more than the attention's and the tables'), so generating
    from it gives the logits of a full recompute at every step, also once the text is longer than the window."""
    settings = {**ATTENTION, "ngram_order": ngram_order, "neural_mixture_cache_order": orders}
    model = cache_model(window=window, initializer_range=3.0, **settings).eval()
    prompt = torch.randint(2, 6, (2, 5), generator=torch.Generator().manual_seed(4))
    out = model.generate(
        prompt, max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=PAD
    )
    for step, cached in enumerate(out.logits):
        full = model(out.sequences[:, : prompt.shape[1] + step], use_cache=False).logits[:, -1]
        torch.testing.assert_close(cached, full.to(cached.dtype), msg=f"step {step}")


def test_left_padding_and_beam_search_with_caches_equal_a_full_recompute():
    """Padding is no token of the caches' window (left-padded logits = the text alone), and beam search reorders the
    window with the beams (each returned beam's score = its log-probability recomputed without the state)."""
    model = cache_model(window=9, neural_mixture_cache_order=2, initializer_range=3.0, **ATTENTION).eval()
    ids = torch.randint(2, 6, (1, 9), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([torch.full((1, 4), PAD), ids], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 4:], model(ids).logits)
    out = model.generate(ids[:, :5], **{**BEAM_SEARCH, "max_new_tokens": 6})
    recomputed = recomputed_beam_scores(model, out.sequences, 5)
    assert len({tuple(row) for row in out.sequences.tolist()}) == 3
    torch.testing.assert_close(out.sequences_scores, recomputed.to(out.sequences_scores.dtype))


def test_a_fresh_cache_holds_its_initial_weight_and_recency_is_uniform():
    model = mixture_model(neural_mixture_cache_window=5, neural_mixture_cache_order=2, neural_mixture_cache_weight=0.2)
    mixture = model.neural_mixture
    torch.testing.assert_close(torch.sigmoid(mixture.cache_gate_bias), torch.tensor([0.2, 0.2]))
    assert mixture.cache_gate_weight.abs().max() == 0
    assert [cache.offset_bias.abs().max() for cache in mixture.caches] == [0, 0]
    assert [len(cache.offset_bias) for cache in mixture.caches] == [5, 4]


def test_calibration_fits_every_gate_and_folds_them():
    """With caches of orders 1 and 2, gate_terms adds (r_tn, ln p_Kn(y_t)) (NaN where the order-2 cache has no
    evidence); the six fitted numbers fold into the gates so that the model's own ln p(y_t) is the calibrated nested
    mixture, no worse on the fitted text; the model card says so."""
    model = cache_model(neural_mixture_cache_order=2, **ATTENTION)
    batches = labelled_batches(packed_dataset(12, seed=1), 5)
    terms = gate_terms(model, batches)
    assert terms.shape[1] == 7 and 0 < int(terms[:, 6].isnan().sum()) < len(terms) and not terms[:, :6].isnan().any()
    before = target_log_probs(model, batches)
    torch.testing.assert_close(-mean_nll(terms), before.mean())
    fit = fit_gate(terms)
    assert len(fit) == 6 and fit != (1.0, 0.0) * 3
    calibration = calibrate_gate(model, batches)
    assert (calibration.scale, calibration.shift, *calibration.caches) == fit
    after = target_log_probs(model, batches)
    assert float(-after.mean()) == pytest.approx(float(mean_nll(terms, *fit)), rel=1e-9)
    assert math.exp(float(-after.mean())) == pytest.approx(calibration.perplexity_after, rel=1e-9)
    assert calibration.perplexity_after < calibration.perplexity_before
    metrics = calibration.metrics()
    assert (metrics["cache_gate_scale_2"], metrics["cache_gate_shift_2"]) == fit[4:]
    note = calibration_note(metrics)
    assert "order-2 cache's kappa = sigmoid(" in note and "these 6 fitted numbers" in note
    assert "with caches of orders 1-2 of the last 6 tokens" in describe_architecture(model.config)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"neural_mixture_cache_window": -1}, "neural_mixture_cache_window must be an integer in"),
        ({"neural_mixture_cache_window": 4097}, "neural_mixture_cache_window must be an integer in"),
        ({"neural_mixture_cache_window": 2.5}, "neural_mixture_cache_window must be an integer in"),
        ({"neural_mixture_dim": 8, "neural_mixture_cache_weight": 1.0}, "neural_mixture_cache_weight must be < 1"),
        ({"neural_mixture_dim": 8, "neural_mixture_cache_window": 3, "neural_mixture_cache_order": 4}, "cache_order"),
        ({"neural_mixture_dim": 8, "neural_mixture_cache_window": 3, "neural_mixture_cache_order": 0}, "cache_order"),
        ({"neural_mixture_dim": 8, "neural_mixture_cache_weight": -0.1}, "neural_mixture_cache_weight"),
    ],
)
def test_invalid_cache_settings_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        SaffuConfig(**settings)


def test_without_the_neural_mixture_the_cache_settings_build_nothing():
    """As the other neural_mixture_* fields, the caches act only with neural_mixture_dim > 0 (their gates read its
    features): without it the model and its decoding state are those of a config without them."""
    config = saffu_config(neural_mixture_cache_window=16, neural_mixture_cache_order=2)
    assert config.previous_token_count == saffu_config().previous_token_count
    model = SaffuForCausalLM(config)
    assert model.neural_mixture is None and not any("cache" in name for name, _ in model.named_parameters())
