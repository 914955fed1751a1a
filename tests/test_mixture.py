"""The neural word model mixed linearly with the count-based logits (`SaffuNeuralMixture`, neural_mixture_dim)."""

import math

import pytest
import torch
from factories import (
    PAD,
    VOCAB,
    batches_of,
    mixture_model,
    packed_dataset,
    randomise_,
    saffu_config,
    training_arguments,
)
from safetensors.torch import load_file

from hf_saffu import SaffuConfig, SaffuForCausalLM
from hf_saffu.explicit import solve_softmax
from hf_saffu.leave_one_out import DirectPathLeaveOneOut, direct_path_leave_one_out, table_leave_one_out
from hf_saffu.model_card import describe_architecture
from hf_saffu.trainer import DIRECT_PATH_COUNTS_NAME, ExplicitTrainer
from hf_saffu.warm_start import explicit_warm_start


def test_logits_are_the_log_of_the_linear_mixture():
    """ln p = ln((1 - lambda) softmax(counted) + lambda softmax(g W + b_W)), recomputed from the equations with the
    same weights in a model without the mixture (the counted logits) and by hand (g, lambda)."""
    model = mixture_model()
    randomise_(model)
    model = model.double()  # float64: the comparison measures the equation, not float32 rounding of ln p ~ -30
    counted_model = SaffuForCausalLM(saffu_config()).eval().double()
    counted_model.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(2, 40, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
        counted = counted_model(ids).logits
        hidden = model.model(ids).last_hidden_state.exp()  # H_t (the head reads ln H)
        previous = torch.cat([torch.full((2, 1), -1), ids[:, :-1]], dim=1)
        vectors = model.model.embeddings.weight
        inputs = torch.cat([hidden, vectors[ids], vectors[previous.clamp_min(0)] * (previous >= 0)[..., None]], -1)
        mixture = model.neural_mixture
        g = torch.nn.functional.gelu(inputs @ mixture.feature_weight + mixture.feature_bias)
        weight = torch.sigmoid(g @ mixture.gate_weight + mixture.gate_bias)
        neural = torch.softmax(inputs @ mixture.direct_weight + g @ mixture.word_weight + mixture.word_bias, -1)
        expected = torch.log((1 - weight) * torch.softmax(counted, -1) + weight * neural)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(logits.logsumexp(-1), torch.zeros(2, 11, dtype=torch.float64), atol=1e-9)


def class_model(**overrides) -> SaffuForCausalLM:
    """A randomised mixture with 6 token classes of uneven sizes, class 5 empty."""
    model = mixture_model(neural_mixture_classes=6, **overrides)
    randomise_(model, scale=0.5)
    model.neural_mixture.token_classes.copy_(torch.randint(0, 5, (VOCAB,), generator=torch.Generator().manual_seed(5)))
    return model


def test_class_factored_neural_part_is_the_product_of_two_softmaxes():
    """neural_mixture_classes: p_N(y) = softmax(u D^c + g W^c + b^c)_{k(y)} (over the classes with words) times
    the softmax over k(y)'s words of u D + g W + b_W, recomputed by hand in float64; ln p sums to 1."""
    model = class_model().double()
    words_model = SaffuForCausalLM(saffu_config(neural_mixture_dim=8)).eval().double()
    words_model.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(2, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    mixture = model.neural_mixture
    captured = {}
    mixture.register_forward_pre_hook(lambda module, args: captured.update(inputs=args[1]))
    with torch.no_grad():
        logits = model(ids).logits
        counted = SaffuForCausalLM(saffu_config()).eval().double()
        counted.load_state_dict(model.state_dict(), strict=False)
        inputs = captured["inputs"]
        g = torch.nn.functional.gelu(inputs @ mixture.feature_weight + mixture.feature_bias)
        weight = torch.sigmoid(g @ mixture.gate_weight + mixture.gate_bias)
        u = inputs[..., : mixture.direct_weight.shape[0]]
        z = u @ mixture.direct_weight + g @ mixture.word_weight + mixture.word_bias
        classes = u @ mixture.class_direct_weight + g @ mixture.class_word_weight + mixture.class_bias
        classes = torch.softmax(classes[..., :5], -1)  # over the classes with words (class 5 is empty)
        neural = torch.zeros_like(z)
        for k in range(5):
            members = mixture.token_classes == k
            if members.any():
                neural[..., members] = classes[..., k : k + 1] * torch.softmax(z[..., members], -1)
        expected = torch.log((1 - weight) * torch.softmax(counted(ids).logits, -1) + weight * neural)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(logits.logsumexp(-1), torch.zeros(2, 9, dtype=torch.float64), atol=1e-9)
    assert not torch.allclose(logits, words_model(ids).logits, atol=1e-2)  # the classes change the distribution


def test_the_token_classes_are_saved_with_the_model(tmp_path):
    """save_pretrained / from_pretrained keeps k(y) (a buffer) and the class weights: the same logits."""
    model = class_model()
    model.save_pretrained(tmp_path)
    loaded = SaffuForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.neural_mixture.token_classes, model.neural_mixture.token_classes)
    ids = torch.randint(2, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("classes", [0, 6])
def test_warm_start_solves_the_direct_path_and_gives_it_its_initial_weight(classes):
    """After the warm start the neural part is the explicit solution softmax(u_t D + b_W) of the co-occurrences of
    u_t = [H_t, v_t, v_{t-1}] with the next token (recounted here over the blocks), with weight lambda_0 =
    neural_mixture_weight; the counted part equals the warm start of the same model without the mixture. With
    token classes, D^c and b^c are the same solution on the class columns F M of the warm start's clusters."""
    train = packed_dataset(40)
    models = {}
    for dim in (0, 8):
        torch.manual_seed(0)
        config = saffu_config(neural_mixture_dim=dim, neural_mixture_weight=0.2, neural_mixture_classes=classes)
        models[dim] = SaffuForCausalLM(config).eval()
        explicit_warm_start(models[dim], batches_of(train, 16), show_progress=False)
    model, blocks = models[8], train.with_format("torch")[:]
    ids, mask = blocks["input_ids"], blocks["attention_mask"]
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state.exp()
        previous = torch.cat([torch.full((len(ids), 1), -1), torch.where(mask.bool(), ids, -1)[:, :-1]], dim=1)
        inputs = model.neural_inputs(hidden, ids, previous)[:, :-1]
        real = (mask[:, :-1] * mask[:, 1:]).bool()
        counts = torch.zeros(inputs.shape[-1], 40, dtype=torch.float64)
        counts.index_add_(1, ids[:, 1:][real], inputs[real].double().T)
        priming = inputs[real].sum(-1).double().mean().item()
        weight, bias = solve_softmax(counts, priming, 0.01, discount=0.75)
        mixture = model.neural_mixture
        assert torch.allclose(mixture.direct_weight.double(), weight, atol=1e-4)
        assert torch.allclose(mixture.word_bias.double(), bias, atol=1e-4)
        if classes:
            assert sorted(mixture.token_classes.unique().tolist()) == list(range(classes))
            assert not torch.equal(mixture.token_classes, torch.arange(40) % classes)  # the clusters, not the default
            weight, bias = solve_softmax(counts @ mixture.class_members(), priming, 0.01, discount=0.75)
            assert torch.allclose(mixture.class_direct_weight.double(), weight, atol=1e-4)
            assert torch.allclose(mixture.class_bias.double(), bias, atol=1e-4)
            return
        sample = ids[:4]
        u = model.neural_inputs(model.model(sample).last_hidden_state.exp(), sample, previous[:4])
        direct = torch.softmax((u @ mixture.direct_weight + mixture.word_bias).double(), -1)
        expected = torch.log(0.8 * torch.softmax(models[0](sample).logits.double(), -1) + 0.2 * direct)
        assert torch.allclose(model(sample).logits.double(), expected, atol=1e-5)


@pytest.mark.parametrize(("classes", "window"), [(0, 0), (6, 0), (6, 4)])
def test_backprop_trains_the_neural_part_and_its_weight(classes, window):
    """W and w start at 0, so the first step reaches W, w, c and D; from the second A and a learn too (no saddle);
    with classes, D^c, W^c and b^c too; with attention, every weight of it from the second step."""
    model = mixture_model(
        neural_mixture_classes=classes, neural_mixture_attention_window=window, neural_mixture_attention_dim=8
    )
    explicit_warm_start(model, batches_of(packed_dataset(40), 16), show_progress=False)
    model.train()
    mixture = model.neural_mixture
    before = {name: parameter.detach().clone() for name, parameter in mixture.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = packed_dataset(8, seed=2).with_format("torch")[:]
    for _ in range(2):
        optimizer.zero_grad()
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        assert math.isfinite(output.loss.item())
        output.loss.backward()
        optimizer.step()
    for name, parameter in mixture.named_parameters():  # moved, or (LN's unit gain in float32) given a gradient
        assert not torch.equal(parameter, before[name]) or parameter.grad.abs().max() > 0, name


@pytest.mark.parametrize("mixture", ["words", "classes", "classes-aux", None])
def test_the_loss_alone_equals_the_loss_from_the_logits(mixture):
    """skip_logits (ExplicitTrainer's training steps): the loss read at the targets (with classes: each target's
    class alone) equals the cross-entropy of the full ln p, in value and gradient, with ignored labels, shift_labels
    and num_items_in_batch, and with the direct path's leave-one-out changes, the auxiliary loss included; no logits
    return."""
    if mixture == "classes-aux":
        model, mixture = class_model(ngram_order=3, neural_mixture_aux_loss_coef=0.7), "classes"
    elif mixture == "classes":
        model = class_model(ngram_order=3)
    else:
        model = mixture_model(ngram_order=3) if mixture else SaffuForCausalLM(saffu_config(ngram_order=3))
        randomise_(model, scale=0.5)
    model = model.double().train()
    if mixture:
        counts = torch.rand(model.neural_mixture.direct_weight.shape, generator=torch.Generator().manual_seed(6)) * 3
        members = model.neural_mixture.class_members() if mixture == "classes" else None
        model.neural_leave_one_out = DirectPathLeaveOneOut(counts, 0.01, 0.75, members)
    ids = torch.randint(2, 40, (3, 10), generator=torch.Generator().manual_seed(4))
    labels = ids.clone()
    labels[0, :4] = labels[2, 7:] = -100
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for kwargs in ({}, {"num_items_in_batch": torch.tensor(50)}, {"shift_labels": shifted}):
        full = model(ids, labels=labels, **kwargs)
        alone = model(ids, labels=labels, skip_logits=True, **kwargs)
        assert alone.logits is None and full.logits is not None
        assert alone.loss.item() == pytest.approx(full.loss.item(), rel=1e-6)  # Trainer's loss casts to float32
        for expected, got in zip(
            torch.autograd.grad(full.loss, trained, allow_unused=True),
            torch.autograd.grad(alone.loss, trained, allow_unused=True),
            strict=True,
        ):
            assert (expected is None) == (got is None)
            assert expected is None or torch.allclose(expected, got, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="skip_logits=True returns only the loss: pass labels"):
        model(ids, skip_logits=True)


def test_the_aux_loss_adds_the_neural_parts_own_cross_entropy():
    """neural_mixture_aux_loss_coef alpha: in training the loss is the mixture's cross-entropy plus alpha times p_N's
    own, -mean_t ln softmax(u_t D + g_t W + b_W)_{y_t} recomputed by hand; in evaluation the mixture's alone."""
    model = mixture_model(neural_mixture_aux_loss_coef=0.5)
    randomise_(model, scale=0.5)
    model = model.double()
    plain = mixture_model().double()
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(2, 40, (2, 11), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, :3] = -100
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state.exp()
        previous = torch.cat([torch.full((2, 1), -1), ids[:, :-1]], dim=1)
        vectors = model.model.embeddings.weight
        inputs = torch.cat([hidden, vectors[ids], vectors[previous.clamp_min(0)] * (previous >= 0)[..., None]], -1)
        mixture = model.neural_mixture
        g = torch.nn.functional.gelu(inputs @ mixture.feature_weight + mixture.feature_bias)
        neural = torch.log_softmax(inputs @ mixture.direct_weight + g @ mixture.word_weight + mixture.word_bias, -1)
        targets = labels[:, 1:]
        own = -neural[:, :-1].gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)[targets != -100].mean()
        mixed = plain.train()(ids, labels=labels).loss
        for skip_logits in (False, True):
            loss = model.train()(ids, labels=labels, skip_logits=skip_logits).loss
            assert loss.item() == pytest.approx(mixed.item() + 0.5 * own.item(), rel=1e-6)  # float32 loss casts
        evaluated = plain.eval()(ids, labels=labels).loss.item()
        assert model.eval()(ids, labels=labels).loss.item() == pytest.approx(evaluated, rel=1e-12)


def test_the_trainer_trains_on_the_loss_alone(tmp_path):
    """ExplicitTrainer's training steps ask for the loss alone (no V-wide logits), its evaluation for the logits;
    with label smoothing (Trainer computes the loss from the logits) training steps get the logits."""
    train = packed_dataset(24)
    model = SaffuForCausalLM(saffu_config(neural_mixture_dim=8))
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append((module.training, output.logits is None)))
    args = training_arguments(tmp_path, max_steps=2, save_strategy="no", eval_strategy="steps", eval_steps=2)
    ExplicitTrainer(model=model, args=args, train_dataset=train, eval_dataset=packed_dataset(4, seed=1)).train()
    assert {logits_skipped for training, logits_skipped in seen if training} == {True}
    assert {logits_skipped for training, logits_skipped in seen if not training} == {False}
    seen.clear()
    smoothed = training_arguments(tmp_path, max_steps=1, save_strategy="no", label_smoothing_factor=0.1)
    ExplicitTrainer(model=model, args=smoothed, train_dataset=train).train()
    assert seen and not any(logits_skipped for _, logits_skipped in seen)
    model.config.neural_mixture_aux_loss_coef = 1.0  # part of the model's loss, which label smoothing replaces
    with pytest.raises(ValueError, match="neural_mixture_aux_loss_coef is part of the model's own loss"):
        ExplicitTrainer(model=model, args=smoothed, train_dataset=train)


def test_the_hidden_path_reads_earlier_codes_in_order():
    """neural_mixture_context k = 4: g_t = GELU([u_t, v_{t-2}, v_{t-3}] A + a) (v = 0 before the text), recomputed
    by hand; D reads u_t alone."""
    model = mixture_model(neural_mixture_context=4, ngram_order=2)
    randomise_(model, scale=0.5)  # lambda_t away from 1, where (1 - lambda_t) underflows in this formula
    model = model.double()
    ids = torch.randint(2, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state.exp()
        vectors = model.model.embeddings.weight
        padded = torch.cat([torch.full((2, 3), -1), ids], dim=1)
        codes = [
            vectors[padded[:, 3 - j : 12 - j].clamp_min(0)] * (padded[:, 3 - j : 12 - j] >= 0)[..., None]
            for j in range(4)
        ]
        inputs = torch.cat([hidden, *codes], dim=-1)
        mixture = model.neural_mixture
        assert mixture.feature_weight.shape[0] == inputs.shape[-1] == mixture.direct_weight.shape[0] + 2 * 40
        g = torch.nn.functional.gelu(inputs @ mixture.feature_weight + mixture.feature_bias)
        weight = torch.sigmoid(g @ mixture.gate_weight + mixture.gate_bias)
        direct = inputs[..., : mixture.direct_weight.shape[0]] @ mixture.direct_weight
        neural = torch.softmax(direct + g @ mixture.word_weight + mixture.word_bias, -1)
        counted = SaffuForCausalLM(saffu_config(ngram_order=2)).eval().double()
        counted.load_state_dict(model.state_dict(), strict=False)
        expected = torch.log((1 - weight) * torch.softmax(counted(ids).logits, -1) + weight * neural)
        assert torch.allclose(model(ids).logits, expected, atol=1e-5)


def test_the_attention_reads_the_last_w_tokens_of_the_text():
    """neural_mixture_attention_window w = 4: o_t ends with a_t, recomputed by hand per position and head from the
    equations (LN(E) W, softmax over the known tokens x_t ... x_{t-3} plus the offset biases); the hidden path's
    features then read it."""
    model = mixture_model(
        neural_mixture_attention_window=4, neural_mixture_attention_dim=6, neural_mixture_attention_heads=2
    )
    randomise_(model, scale=0.5)
    model = model.double()
    attention = model.neural_mixture.attention
    ids = torch.randint(2, 40, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state.exp()
        previous = torch.cat([torch.full((2, 3), -1), ids], dim=1)
        inputs = model.neural_inputs(hidden, ids, torch.stack([previous[:, 2 - j : 9 - j] for j in range(3)], -1))
        rows = attention.norm(attention.token_embeddings)
        q, k, v = (rows @ projection.weight.T for projection in (attention.query, attention.key, attention.value))
        for b in range(2):
            for t in range(7):
                offsets = range(min(4, t + 1))  # the tokens before the text are unknown
                expected = []
                for head in (slice(0, 3), slice(3, 6)):
                    h = head.start // 3
                    scores = (
                        torch.stack([q[ids[b, t], head] @ k[ids[b, t - j], head] / math.sqrt(3) for j in offsets])
                        + attention.offset_bias[h, : len(offsets)]
                    )
                    weights = torch.softmax(scores, 0)
                    expected.append(sum(weights[j] * v[ids[b, t - j], head] for j in offsets))
                assert torch.allclose(inputs[b, t, -6:], torch.cat(expected), atol=1e-12), (b, t)
    assert inputs.shape[-1] == model.neural_mixture.feature_weight.shape[0]
    with pytest.raises(ValueError, match="neural_mixture_attention_dim=6 must be a multiple of"):
        SaffuConfig(neural_mixture_attention_dim=6, neural_mixture_attention_heads=4)


def test_dropout_drops_the_features_in_training_only():
    """neural_mixture_dropout p: in training each entry of a_t and of g_t is 0 or its evaluation value / (1 - p),
    some of each 0; in evaluation the model equals the same weights without dropout."""
    p = 0.5
    settings = dict(neural_mixture_attention_window=3, neural_mixture_attention_dim=8, neural_mixture_attention_heads=2)
    model = mixture_model(neural_mixture_dropout=p, **settings)
    randomise_(model, scale=0.5)
    model = model.double()
    plain = mixture_model(**settings).double()
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(2, 40, (2, 9), generator=torch.Generator().manual_seed(5))
    windows = torch.stack([ids, ids.roll(1, 1), ids.roll(2, 1)], -1)
    inputs = torch.randn(2, 9, model.neural_mixture.feature_weight.shape[0], dtype=torch.float64)
    mixture = model.neural_mixture
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)
        evaluated = [mixture.attention(windows), mixture.features(inputs)[2]]
        torch.manual_seed(0)
        model.train()
        trained = [mixture.attention(windows), mixture.features(inputs)[2]]
    for before, after in zip(evaluated, trained, strict=True):
        kept = after != 0
        assert 0 < kept.sum() < kept.numel()
        assert torch.allclose(after[kept], before[kept] / (1 - p))


@pytest.mark.parametrize(
    ("order", "context", "classes", "window", "ordered", "layers"),
    [
        (2, 2, 0, 0, 0, 1),
        (3, 2, 0, 0, 0, 1),
        (2, 5, 0, 0, 0, 1),
        (4, 3, 0, 0, 0, 1),
        (3, 3, 6, 0, 0, 1),
        (2, 2, 0, 6, 0, 1),
        (3, 4, 6, 3, 0, 1),
        (3, 2, 6, 6, 4, 1),
        (3, 2, 6, 6, 4, 3),
    ],
)
def test_cached_generation_equals_a_full_recompute(order, context, classes, window, ordered, layers):
    """The mixture reads k - 1 (and its attention w - 1, its ordered embeddings n - 1) earlier tokens: from the
    decoding state when generating (kept for it even by a model whose tables read fewer, e.g. ngram_order 2), from
    the text otherwise. With 3 layers, the layers above the first feed the mixture (upper_layers="neural")."""
    model = mixture_model(
        initializer_range=3.0,
        num_layers=layers,
        upper_layers="neural",
        ngram_order=order,
        neural_mixture_context=context,
        neural_mixture_classes=classes,
        neural_mixture_attention_window=window,
        neural_mixture_token_context=ordered,
        neural_mixture_attention_dim=8,
        neural_mixture_attention_heads=2,
    )
    randomise_(model, scale=0.5)
    model = model.double()
    prompt = torch.randint(2, 40, (2, 5), generator=torch.Generator().manual_seed(4))
    out = model.generate(
        prompt, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=PAD
    )
    for step, cached in enumerate(out.logits):
        full = model(out.sequences[:, : prompt.shape[1] + step], use_cache=False).logits[:, -1]
        assert torch.allclose(cached, full.to(cached.dtype), atol=1e-5), step


def test_the_ordered_embeddings_are_the_last_n_tokens_rows_in_order():
    """neural_mixture_token_context n = 3: o_t ends with LN(E)[x_t], LN(E)[x_{t-1}], LN(E)[x_{t-2}] after a_t, 0
    before the text; the hidden path's A reads them (its rows for them get a gradient), and n > w is refused."""
    settings = dict(neural_mixture_attention_window=4, neural_mixture_attention_dim=6, neural_mixture_attention_heads=2)
    model = mixture_model(neural_mixture_token_context=3, **settings)
    plain = mixture_model(**settings)
    randomise_(model, scale=0.5)
    model, plain = model.double(), plain.double()
    attention = model.neural_mixture.attention
    ids = torch.randint(2, 40, (2, 7), generator=torch.Generator().manual_seed(2))
    previous = torch.cat([torch.full((2, 3), -1), ids], dim=1)
    previous = torch.stack([previous[:, 2 - j : 9 - j] for j in range(3)], -1)
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state.exp()
        inputs = model.neural_inputs(hidden, ids, previous)
        rows = attention.norm(attention.token_embeddings)
        plain.load_state_dict(
            {k: v for k, v in model.state_dict().items() if k != "neural_mixture.feature_weight"}, strict=False
        )
        assert torch.equal(inputs[..., :-18], plain.neural_inputs(hidden, ids, previous))  # ..., a_t unchanged
        for b in range(2):
            for t in range(7):
                expected = [rows[ids[b, t - j]] if t - j >= 0 else torch.zeros(6, dtype=rows.dtype) for j in range(3)]
                assert torch.equal(inputs[b, t, -18:], torch.cat(expected)), (b, t)
    assert inputs.shape[-1] == model.neural_mixture.feature_weight.shape[0]
    model.train()
    model(ids, labels=ids).loss.backward()
    assert model.neural_mixture.feature_weight.grad[-18:].abs().sum(-1).min() > 0
    with pytest.raises(ValueError, match=r"neural_mixture_token_context must be an integer in \[0, .*window=4\]"):
        SaffuConfig(neural_mixture_token_context=5, **settings)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (-1, "neural_mixture_dim"),
        (1.0, "neural_mixture_weight"),
        (1, "neural_mixture_context"),
        (2.5, "neural_mixture_context"),
        (-1, "neural_mixture_classes"),
        (2.5, "neural_mixture_classes"),
        (65, "neural_mixture_attention_window"),
        (-1, "neural_mixture_attention_window"),
        (0, "neural_mixture_attention_dim"),
        (0, "neural_mixture_attention_heads"),
        (1, "neural_mixture_dropout"),
        (-0.1, "neural_mixture_dropout"),
        (float("nan"), "neural_mixture_dropout"),
        ("yes", "neural_mixture_tied_output"),
        (-0.5, "neural_mixture_aux_loss_coef"),
        (float("inf"), "neural_mixture_aux_loss_coef"),
        (-1, "neural_mixture_token_context"),
        (1.5, "neural_mixture_token_context"),
        (1, "neural_mixture_token_context"),  # more than the attention window (0)
    ],
)
def test_invalid_mixture_settings_name_the_field(value, field):
    with pytest.raises(ValueError, match=field):
        SaffuConfig(**{field: value})


def test_a_tied_output_needs_the_attention():
    with pytest.raises(ValueError, match="neural_mixture_tied_output .* needs neural_mixture_attention_window > 0"):
        SaffuConfig(neural_mixture_dim=8, neural_mixture_tied_output=True)


def left_out_logit(counts: torch.Tensor, own: torch.Tensor, y: int, discount: float | None) -> torch.Tensor:
    """sum_i u_ti ln F'_iy of the counts without the position's own u_t (re-solved with `solve_softmax` without a
    discount; with one, the row back-off mass R and the marginal pi held at the full counts' values)."""
    without = counts.clone()
    without[:, y] -= own
    if discount is None:
        smoothed = solve_softmax(without, 1.0, 0.01)[0][:, y].exp()
    else:
        marginal = (counts.sum(0) + 0.01) / (counts.sum() + 0.01 * counts.shape[1])
        backoff = (counts.clamp(max=discount).sum(1) + 0.01) * marginal[y]
        smoothed = (without[:, y] - discount).clamp_min(0) + backoff
    return own @ smoothed.log()


@pytest.mark.parametrize("discount", [None, 0.75])
def test_direct_path_leave_one_out_removes_the_positions_own_count(discount):
    """The change of the target's direct-path logit at a training position makes it sum_i u_ti ln F'_iy of the
    co-occurrences without that position (`left_out_logit`); with token classes the target class's logit of D^c
    (solved from F^c = F M) moves the same way; positions without a target do not move."""
    generator = torch.Generator().manual_seed(0)
    vocab, dim, num_classes = 7, 5, 3
    inputs = torch.rand(2, 6, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, vocab, (2, 6), generator=generator)
    labels[1, 3] = -100
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    counts = torch.zeros(dim, vocab, dtype=torch.float64)
    counts.index_add_(1, targets[targets >= 0], inputs[targets >= 0].T)
    counts += torch.rand(dim, vocab, generator=generator, dtype=torch.float64)  # other positions' counts
    token_classes = torch.tensor([0, 2, 1, 0, 2, 2, 1])
    members = torch.nn.functional.one_hot(token_classes, num_classes).double()
    class_targets = torch.where(targets == -100, targets, token_classes[targets.clamp_min(0)])
    word_change, class_change = DirectPathLeaveOneOut(counts, 0.01, discount, members)(inputs, targets, class_targets)
    assert torch.equal(word_change, DirectPathLeaveOneOut(counts, 0.01, discount)(inputs, targets)[0])
    for table, change, goal in ((counts, word_change, targets), (counts @ members, class_change, class_targets)):
        logits = inputs @ solve_softmax(table, 1.0, 0.01, discount=discount)[0]
        for row in range(2):
            for t in range(6):
                y = int(goal[row, t])
                if y < 0:
                    assert change[row, t] == 0
                    continue
                expected = left_out_logit(table, inputs[row, t], y, discount)
                assert torch.allclose(logits[row, t, y] + change[row, t], expected, atol=1e-4), (row, t)


@pytest.mark.parametrize(("context", "classes"), [(2, 0), (4, 0), (2, 5)])
def test_trainer_trains_the_mixture_with_leave_one_out_values(tmp_path, context, classes):
    """With table_leave_one_out and a neural mixture, the trainer's first logged loss is that of its first batch
    with both the tables' and the direct path's leave-one-out values (recomputed here; 2 steps: the graph of the
    counts must not be kept between steps), and the model it leaves reads the plain values."""
    train = packed_dataset(40)
    args = training_arguments(
        tmp_path, table_leave_one_out=True, max_steps=2, learning_rate=0.0, save_strategy="no", warmup_steps=0
    )
    config = saffu_config(
        pivot_bigrams=VOCAB**2,
        pivot_trigrams=VOCAB**3,
        neural_mixture_dim=8,
        neural_mixture_context=context,
        neural_mixture_classes=classes,
    )
    model = SaffuForCausalLM(config)
    trainer = ExplicitTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    assert model.table_leave_one_out is None and model.neural_leave_one_out is None
    first = next(iter(trainer.get_train_dataloader()))
    model.train()
    with torch.no_grad():
        plain = model(**first).loss.item()
        model.table_leave_one_out = table_leave_one_out(model, batches_of(train, 16))
        tables_only = model(**first).loss.item()
        model.neural_leave_one_out = direct_path_leave_one_out(model, batches_of(train, 16))
        left_out = model(**first).loss.item()
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert logged == pytest.approx(left_out, rel=1e-5)
    assert left_out > tables_only > plain


def test_the_counted_cache_gives_the_counted_part_of_the_loss_once_computed():
    """`frozen_counted`: a training loss (skip_logits) reads the counted parts' ln p at the targets from the cache
    once a block was seen (the same loss and gradients as computing it), and only then: a change of the output
    layer and tables after the first pass does not reach the cached loss, while it does reach the loss without
    the cache."""
    from hf_saffu.frozen_phase import FrozenInputCache

    model = mixture_model(neural_mixture_classes=5, neural_mixture_attention_window=3, neural_mixture_attention_dim=4)
    randomise_(model, scale=0.5)
    model.train()
    ids = torch.randint(2, 40, (3, 9), generator=torch.Generator().manual_seed(6))
    batch = dict(input_ids=ids, labels=ids, skip_logits=True)

    def loss_and_gradient():
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), model.neural_mixture.feature_weight.grad.clone()

    plain = loss_and_gradient()
    model.frozen_counted = FrozenInputCache()
    for _ in range(2):  # computed, then read
        for expected, got in zip(plain, loss_and_gradient(), strict=True):
            torch.testing.assert_close(got, expected)
    assert len(model.frozen_counted) == 3
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("lm_head.", "pivot_")):  # the output layer and tables (not u_t's parts)
                parameter.add_(torch.randn(parameter.shape, generator=generator))
    torch.testing.assert_close(loss_and_gradient()[0], plain[0])
    model.frozen_counted = None
    assert not torch.allclose(loss_and_gradient()[0], plain[0])


SOLVED = ("direct_weight", "word_bias", "class_direct_weight", "class_bias")  # the direct path's explicit solution


# a small attention for the neural word model: 3 tokens, E of width 4, 2 heads
ATTENTION = dict(neural_mixture_attention_window=3, neural_mixture_attention_dim=4, neural_mixture_attention_heads=2)


def trained_mixture_config(**overrides) -> SaffuConfig:
    """Tables for every pair and triple, and a class-factored neural word model with attention: what the trainer's
    freeze_counted_parts tests train."""
    return saffu_config(
        pivot_bigrams=VOCAB**2,
        pivot_trigrams=VOCAB**3,
        neural_mixture_dim=8,
        neural_mixture_classes=5,
        **ATTENTION,
        **overrides,
    )


def test_freeze_counted_parts_trains_the_neural_word_model_alone(tmp_path):
    """freeze_counted_parts: what the warm start counts or solves keeps its warm-start values (the neural word model's
    direct path D, b_W, D^c, b^c included), and the neural word model's learned parts end where a run that gives
    every other part learning rate 0 (frozen embeddings, the direct path's gradient off) leaves them, weight for
    weight, though it read the counted parts' ln p from the cache in its second epoch; and they moved. A model
    without a neural word model is refused."""
    train = packed_dataset(40)
    config = trained_mixture_config()
    # no clipping: the other run's global gradient norm would include the counted parts' gradients
    # 8 steps of 8 blocks: the second epoch reads the counted parts' ln p from the cache
    common = dict(table_leave_one_out=True, max_steps=8, save_strategy="no", warmup_steps=0, max_grad_norm=0.0)
    runs = {}
    for name, overrides in {
        "frozen": dict(freeze_counted_parts=True, learning_rate=1e-2, freeze_embeddings_steps=0),
        "rates": dict(
            learning_rate=0.0, head_learning_rate=0.0, table_learning_rate=0.0, neural_mixture_learning_rate=1e-2
        ),
    }.items():
        torch.manual_seed(0)
        model = SaffuForCausalLM(config)
        if name == "rates":
            for solved in SOLVED:
                getattr(model.neural_mixture, solved).requires_grad_(False)
        args = training_arguments(tmp_path / name, **common, **overrides)
        trainer = ExplicitTrainer(model=model, args=args, train_dataset=train)
        trainer.train()
        runs[name] = (model, trainer)
    frozen, rates = runs["frozen"][0], runs["rates"][0]
    assert frozen.frozen_counted is None and runs["frozen"][1].state.global_step == 8
    warm = SaffuForCausalLM(config)
    explicit_warm_start(warm, batches_of(train, 16))
    for name, parameter in frozen.named_parameters():
        torch.testing.assert_close(parameter, rates.get_parameter(name), rtol=1e-5, atol=1e-7, msg=name)
        learned = any(parameter is p for p in frozen.neural_mixture.learned_parameters())
        assert learned or torch.equal(parameter, warm.get_parameter(name)), name
    for moved in (frozen.neural_mixture.word_weight, frozen.neural_mixture.attention.offset_bias):
        assert not torch.equal(moved, torch.zeros_like(moved))
    mixture = frozen.neural_mixture
    for solved in SOLVED:
        assert not any(getattr(mixture, solved) is p for p in mixture.learned_parameters())
    assert all(parameter.requires_grad for parameter in mixture.parameters())  # left as it came
    with pytest.raises(ValueError, match="freeze_counted_parts=True trains the neural word model alone"):
        ExplicitTrainer(
            model=SaffuForCausalLM(saffu_config()),
            args=training_arguments(tmp_path / "none", freeze_counted_parts=True),
            train_dataset=train,
        )


def test_the_upper_layers_read_the_same_distributions_in_both_forms():
    """With the same weights, upper_layers="neural" computes the hidden distributions of upper_layers="head": the first
    layer gives ln H_t^1 (the head reads it) where the papers' form gives the last layer's ln H_t^3, and each layer
    above reads H_t / C of the layer below either way."""
    ids = torch.randint(2, 40, (2, 11), generator=torch.Generator().manual_seed(1))
    outputs = {}
    for form in ("head", "neural"):
        torch.manual_seed(0)
        model = SaffuForCausalLM(saffu_config(neural_mixture_dim=8, num_layers=3, upper_layers=form)).eval()
        randomise_(model, scale=0.5)
        with torch.no_grad():
            outputs[form] = model.model(ids, output_hidden_states=True).hidden_states[1:]
    head, neural = outputs["head"], outputs["neural"]
    blocks = neural[0].unflatten(-1, (3, -1))  # C = 3 contexts of 10 classes
    assert torch.allclose(blocks.logsumexp(-1), torch.zeros(2, 11, 3), atol=1e-6)
    torch.testing.assert_close(neural[0].exp(), head[0])
    torch.testing.assert_close(neural[1], head[1])
    torch.testing.assert_close(neural[2], head[2].exp())


def test_the_upper_layers_start_unread_and_train_with_the_neural_word_model(tmp_path):
    """upper_layers="neural": after the warm start, three layers predict exactly what one does (the head and the direct
    path read the first layer, the hidden path starts at W = 0); with freeze_counted_parts the layers above the first
    train with the neural word model, and every other part keeps its warm-start values."""
    train = packed_dataset(40)
    blocks = train.with_format("torch")[:]
    warm = {}
    for layers in (1, 3):
        torch.manual_seed(0)
        warm[layers] = SaffuForCausalLM(trained_mixture_config(num_layers=layers, upper_layers="neural")).eval()
        explicit_warm_start(warm[layers], batches_of(train, 16), show_progress=False)
    with torch.no_grad():
        one, three = (warm[n](blocks["input_ids"], attention_mask=blocks["attention_mask"]) for n in (1, 3))
    assert torch.equal(one.logits, three.logits)
    assert three.hidden_states is None  # read inside, returned only when asked for
    torch.manual_seed(0)
    model = SaffuForCausalLM(trained_mixture_config(num_layers=3, upper_layers="neural"))
    common = dict(freeze_counted_parts=True, table_leave_one_out=True, max_steps=4, save_strategy="no")
    ExplicitTrainer(model=model, args=training_arguments(tmp_path, **common), train_dataset=train).train()
    trained = {id(parameter) for parameter in model.backprop_parameters()}
    for name, parameter in model.named_parameters():
        if name.startswith(("model.layers.1.", "model.layers.2.")):
            assert id(parameter) in trained, name
        if id(parameter) not in trained:
            assert torch.equal(parameter, warm[3].get_parameter(name)), name
    for layer in (1, 2):
        solved = warm[3].model.layers[layer].windows[0].hidden.weight
        assert not torch.equal(model.model.layers[layer].windows[0].hidden.weight, solved), layer


@pytest.mark.parametrize("frozen", [True, False])
def test_a_resumed_run_with_leave_one_out_ends_where_the_uninterrupted_run_does(tmp_path, frozen):
    """Leave-one-out values and dropout, the counted parts frozen or trained: 6 steps without a break and 3 + 3
    resumed from the checkpoint give the same weights. Resuming, the leave-one-out hooks are built once the
    checkpoint's weights are loaded (from a fresh model's they were wrong), the direct path's from the warm start's
    counts F saved with the checkpoint (recounted from the trained inputs u_t they differ); frozen, the cache starts
    empty again and the optimizer holds the learned parts only."""
    train = packed_dataset(40)
    config = trained_mixture_config(neural_mixture_dropout=0.2)
    settings = dict(freeze_counted_parts=frozen, table_leave_one_out=True, warmup_steps=0)
    torch.manual_seed(0)
    whole = SaffuForCausalLM(config)
    ExplicitTrainer(model=whole, args=training_arguments(tmp_path / "a", **settings), train_dataset=train).train()
    torch.manual_seed(0)
    first = SaffuForCausalLM(config)
    ExplicitTrainer(model=first, args=training_arguments(tmp_path / "b", **settings), train_dataset=train).train()
    checkpoint = tmp_path / "b" / "run" / "checkpoint-3"
    saved = load_file(checkpoint / DIRECT_PATH_COUNTS_NAME)["counts"]
    assert torch.equal(saved, load_file(tmp_path / "a" / "run" / "checkpoint-3" / DIRECT_PATH_COUNTS_NAME)["counts"])
    resumed = SaffuForCausalLM(config)
    trainer = ExplicitTrainer(model=resumed, args=training_arguments(tmp_path / "b", **settings), train_dataset=train)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 6
    for name, parameter in whole.named_parameters():
        torch.testing.assert_close(resumed.get_parameter(name), parameter, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(whole.neural_mixture.word_weight, torch.zeros_like(whole.neural_mixture.word_weight))


def test_the_tied_output_is_w_equal_to_p_e_transposed():
    """neural_mixture_tied_output: the model equals an untied one whose W is P E^T (E the attention's token
    embeddings), in ln p and in the loss read at the targets; its gradients are the untied model's by the chain
    rule, dL/dP = dL/dW E and dL/dE = (the attention's share) + dL/dW^T P, so the output trains E too."""
    tied = class_model(neural_mixture_tied_output=True, **ATTENTION).double()
    untied = class_model(**ATTENTION).double()
    untied.load_state_dict(tied.state_dict(), strict=False)
    mixture = tied.neural_mixture
    with torch.no_grad():
        untied.neural_mixture.word_weight.copy_(mixture.word_projection @ mixture.attention.token_embeddings.T)
    assert not hasattr(mixture, "word_weight") and mixture.word_projection.shape == (8, 4)
    ids = torch.randint(2, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(tied(ids).logits, untied(ids).logits)
    tied.train(), untied.train()
    for model in (tied, untied):
        model(ids, labels=ids, skip_logits=True).loss.backward()
    word_grad = untied.neural_mixture.word_weight.grad
    embeddings = mixture.attention.token_embeddings
    torch.testing.assert_close(mixture.word_projection.grad, word_grad @ embeddings.detach())
    expected = untied.neural_mixture.attention.token_embeddings.grad + word_grad.T @ mixture.word_projection.detach()
    torch.testing.assert_close(embeddings.grad, expected)
    assert (word_grad.T @ mixture.word_projection.detach()).abs().max() > 1e-3  # the output's share is not nothing


def test_a_fresh_tied_output_leaves_the_warm_start_unchanged():
    """P starts at 0, so W = P E^T = 0 and a fresh tied model equals the untied one."""
    tied, untied = mixture_model(neural_mixture_tied_output=True, **ATTENTION), mixture_model(**ATTENTION)
    assert torch.equal(tied.neural_mixture.word_weights(), torch.zeros(8, VOCAB))
    ids = torch.randint(2, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(tied(ids).logits, untied(ids).logits)


def test_neural_mixture_weight_decay_decays_the_learned_weights_alone(tmp_path):
    """neural_mixture_weight_decay: one AdamW step (constant rate eta) of a run with it set to 0.5 differs from the
    same run at 0 by exactly -eta 0.5 theta for the neural word model's learned weight matrices and embeddings
    (A, W, the gate's w, the attention's E, W_q, W_k, W_v, W^c), and by nothing for its biases, its layer norm, its
    closed-form direct path and every other part (at weight_decay 0.01 those keep the same decay in both runs)."""
    config = trained_mixture_config()
    common = dict(
        warm_start=False,
        max_steps=1,
        save_strategy="no",
        warmup_steps=0,
        lr_scheduler_type="constant",
        weight_decay=0.01,
        learning_rate=1e-2,
    )
    runs, start = {}, None
    for decay in (0.0, 0.5):
        torch.manual_seed(0)
        model = SaffuForCausalLM(config)
        randomise_(model, scale=0.5)
        start = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
        args = training_arguments(tmp_path / str(decay), neural_mixture_weight_decay=decay, **common)
        ExplicitTrainer(model=model, args=args, train_dataset=packed_dataset(8)).train()
        runs[decay] = dict(model.named_parameters())
    decayed = {
        f"neural_mixture.{name}"
        for name in (
            "feature_weight",
            "word_weight",
            "gate_weight",
            "class_word_weight",
            "attention.token_embeddings",
            "attention.query.weight",
            "attention.key.weight",
            "attention.value.weight",
        )
    }
    assert decayed <= set(start)
    for name, theta in start.items():
        expected = -1e-2 * 0.5 * theta if name in decayed else torch.zeros_like(theta)
        torch.testing.assert_close(runs[0.5][name] - runs[0.0][name], expected, rtol=1e-4, atol=1e-7, msg=name)


def test_the_model_card_names_the_mixture():
    assert "neural word model (8 GELU units)" in describe_architecture(saffu_config(neural_mixture_dim=8))
    assert "neural word model" not in describe_architecture(saffu_config())
    wider = describe_architecture(saffu_config(neural_mixture_dim=8, neural_mixture_context=5))
    assert "neural word model (8 GELU units, its hidden path reading 5 tokens in order)" in wider
    factored = describe_architecture(saffu_config(neural_mixture_dim=8, neural_mixture_classes=6))
    assert "neural word model (8 GELU units, its output factored through 6 token classes)" in factored
    attending = describe_architecture(saffu_config(neural_mixture_dim=8, neural_mixture_attention_window=16))
    assert "neural word model (8 GELU units, a learned attention over the last 16 tokens)" in attending
    tied = saffu_config(neural_mixture_dim=8, neural_mixture_attention_window=16, neural_mixture_tied_output=True)
    assert "last 16 tokens, its word weights tied to the attention's token embeddings)" in describe_architecture(tied)
    ordered = saffu_config(neural_mixture_dim=8, neural_mixture_attention_window=16, neural_mixture_token_context=4)
    assert "last 16 tokens, the learned embeddings of the last 4 tokens in order)" in describe_architecture(ordered)
    aux = describe_architecture(saffu_config(neural_mixture_dim=8, neural_mixture_aux_loss_coef=0.5))
    assert "neural word model (8 GELU units, trained on its own cross-entropy too (weight 0.5))" in aux
    upper = describe_architecture(saffu_config(neural_mixture_dim=8, num_layers=2, upper_layers="neural"))
    assert "SAFFU, 2 layers" in upper and "its hidden path reading the layers above the first" in upper
