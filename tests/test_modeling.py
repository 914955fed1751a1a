"""SAFFU model: config validation, bit-cipher codes, causality, masking, decoding state, save/load."""

import subprocess
import sys
import textwrap

import pytest
import torch
from factories import BLOCK_HF_SAFFU, fill_pivot_bigrams, fill_pivot_trigrams, saffu_config
from transformers import AutoModelForCausalLM

from hf_saffu import SaffuConfig, SaffuForCausalLM
from hf_saffu.bit_cipher import bit_cipher_codes, bit_cipher_vectors, codes_to_vectors, frequency_ranks
from hf_saffu.modeling_saffu import SaffuPivotBigrams, document_means

VOCAB = 50
EOS = 1
PAD = 0

B5_CODES = (
    "10000 01000 00100 00010 00001 "
    "00011 00101 01001 10001 00110 01010 10010 01100 10100 11000 "
    "11001 10101 01101 10011 01011 00111 11010 10110 01110 11100 "
    "11101 01111 10111 11011 11110 11111"
).split()


# The tiny model of these tests: `saffu_config` with two layers, small widths and a large initialisation.
TINY = dict(vocab_size=VOCAB, embed_bits=12, hidden_bits=10, windows=[2, 5], num_layers=2, initializer_range=0.5)


def tiny_config(**overrides) -> SaffuConfig:
    return saffu_config(**{**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides) -> SaffuForCausalLM:
    """A random tiny model; its bigram table (when configured) holds 400 random pairs, so the pivot's channel
    matters in every comparison."""
    torch.manual_seed(seed)
    model = SaffuForCausalLM(tiny_config(**overrides)).eval()
    if model.pivot_bigrams is not None:
        fill_pivot_bigrams(model, 400, scale=model.config.initializer_range, seed=seed)
    if model.pivot_trigrams is not None:  # histories (w, x) are dense enough that random prompts hit them
        fill_pivot_trigrams(model, 3000, scale=model.config.initializer_range, seed=seed)
    return model


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, length), generator=generator)


# -- bit cipher -----------------------------------------------------------------------------------


def test_bit_cipher_b5_test_vector():
    codes = bit_cipher_codes(31, 5)
    assert [format(code, "05b") for code in codes] == B5_CODES


def test_bit_cipher_vectors_are_unit_l1_and_distinct():
    vectors = codes_to_vectors(bit_cipher_codes(500, 70), 70)
    assert torch.allclose(vectors.sum(dim=1), torch.ones(500))
    assert (vectors >= 0).all()
    assert len({tuple(row.tolist()) for row in vectors}) == 500


def test_bit_cipher_too_few_bits_is_an_error():
    with pytest.raises(ValueError, match="non-zero codes"):
        bit_cipher_codes(32, 5)


def test_frequency_ranks_break_ties_by_token_id():
    ranks = frequency_ranks(torch.tensor([3.0, 5.0, 5.0, 0.0, 1.0]))
    assert ranks.tolist() == [2, 0, 1, 4, 3]
    vectors = bit_cipher_vectors(ranks, 5)
    assert vectors[1].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # most frequent token gets the first code


def test_fresh_model_embeddings_are_bit_cipher_codes():
    model = tiny_model()
    expected = bit_cipher_vectors(torch.arange(VOCAB), 12)
    assert torch.equal(model.model.embeddings.weight.detach(), expected)
    assert not model.model.embeddings.weight.requires_grad  # freeze_embeddings defaults to True


# -- forward --------------------------------------------------------------------------------------


def test_shapes_and_loss():
    model = tiny_model()
    ids = random_ids(3, 11)
    output = model(ids, labels=ids, output_hidden_states=True)
    assert output.logits.shape == (3, 11, VOCAB)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert len(output.hidden_states) == 3  # embeddings + 2 layers
    assert output.hidden_states[-1].shape == (3, 11, 3 * 10)
    # every layer output is a concatenation of C distributions; the head reads the last one's logarithm
    assert torch.allclose(output.hidden_states[1].sum(-1), torch.full((3, 11), 3.0), atol=1e-5)
    assert torch.allclose(output.hidden_states[-1].exp().sum(-1), torch.full((3, 11), 3.0), atol=1e-5)
    paper = tiny_model(**SaffuConfig.PAPER_FORM)(ids, output_hidden_states=True)
    assert torch.allclose(paper.hidden_states[-1].sum(-1), torch.full((3, 11), 3.0), atol=1e-5)


@pytest.mark.parametrize("position", [0, 4, 9])
def test_causality(position):
    model = tiny_model()
    ids = random_ids(2, 12)
    ids[:, 3] = EOS  # a document boundary inside the sequence
    changed = ids.clone()
    changed[:, position + 1] = (changed[:, position + 1] + 7) % (VOCAB - 2) + 2
    before, after = model(ids).logits, model(changed).logits
    assert torch.equal(before[:, : position + 1], after[:, : position + 1])
    assert not torch.allclose(before[:, position + 1 :], after[:, position + 1 :])


def test_left_padding_is_masked():
    model = tiny_model()
    ids = random_ids(1, 9)
    padded = torch.cat([torch.full((1, 4), PAD), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
    alone = model(ids).logits
    with_padding = model(padded, attention_mask=mask).logits[:, 4:]
    assert torch.allclose(alone, with_padding, atol=1e-5)
    unmasked = model(padded).logits[:, 4:]
    assert not torch.allclose(alone, unmasked, atol=1e-3)


def test_document_mean_resets_after_eos():
    inputs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    ends = torch.tensor([[False, True, False, False]])
    zeros = torch.zeros(1, 2, dtype=torch.float64)
    means, counts, carried_sum, carried_count = document_means(
        inputs, valid, ends, zeros, torch.zeros(1, dtype=torch.float64)
    )
    expected = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [1.0, 1.0], [2.0, 0.5]]])
    assert torch.allclose(means, expected)
    assert counts.tolist() == [[1.0, 2.0, 1.0, 2.0]]
    assert carried_sum.tolist() == [[4.0, 1.0]] and carried_count.tolist() == [2.0]


def test_uniform_attention_window_means_equal_the_banded_mix():
    """The warm start's path for uniform attention (`uniform_attention`: means from float64 running sums) gives the
    z_t of softmax attention with W = 0, c = 0 (`banded_mix`), with padding and a decoding state's history; with any
    other attention the two differ (the comparison can fail)."""
    model = tiny_model(windows=[2, 5])
    layer = model.model.layers[0]
    torch.manual_seed(3)
    inputs, valid = torch.rand(3, 11, layer.input_dim), torch.rand(3, 11) > 0.2
    ends = torch.zeros(3, 11, dtype=torch.bool)
    state = layer.context_inputs(torch.rand(3, 6, layer.input_dim), torch.rand(3, 6) > 0.3, ends[:, :6], None).state
    with torch.no_grad():
        for window in layer.windows:
            window.attention.weight.zero_()
            window.attention.bias.zero_()
        banded = layer.context_inputs(inputs, valid, ends, state, list(layer.windows))
        uniform = layer.context_inputs(inputs, valid, ends, state, list(layer.windows), uniform_attention=True)
        for window in layer.windows:
            assert torch.allclose(uniform.outputs[window].vectors, banded.outputs[window].vectors, atol=1e-6)
            assert torch.equal(uniform.outputs[window].inputs_behind, banded.outputs[window].inputs_behind)
        layer.windows[1].attention.bias[0] = 2.0  # attention that is not uniform: the banded mix moves
        moved = layer.context_inputs(inputs, valid, ends, state, list(layer.windows))
    window = layer.windows[1]
    assert not torch.allclose(uniform.outputs[window].vectors, moved.outputs[window].vectors, atol=1e-3)


def test_wrong_vocabulary_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[3, VOCAB + 5]]))


# -- decoding state -------------------------------------------------------------------------------


def test_incremental_state_equals_full_forward():
    model = tiny_model()
    ids = random_ids(2, 15)
    ids[0, 6] = EOS
    full = model(ids).logits
    state, pieces = None, []
    for chunk in (ids[:, :4], ids[:, 4:5], ids[:, 5:12], ids[:, 12:13], ids[:, 13:]):
        output = model(chunk, past_key_values=state, use_cache=True)
        state = output.past_key_values
        pieces.append(output.logits)
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    assert state.get_seq_length() == 15


def test_decoding_state_has_constant_size():
    model = tiny_model()
    short = model(random_ids(1, 10), use_cache=True).past_key_values
    long = model(random_ids(1, 300), use_cache=True).past_key_values
    assert short.nbytes() == long.nbytes()


def sharp_model(**overrides) -> SaffuForCausalLM:
    """Weights large enough that every logit matters (a stale or empty state changes them by O(1)), in float64
    so that a 1e-5 tolerance measures the state, not float32 rounding of logits of size ~100."""
    return tiny_model(initializer_range=3.0, **overrides).double()


def recomputed_logits(model, sequences: torch.Tensor, prompt_length: int, mask: torch.Tensor | None = None):
    """Next-token logits of every generated position from a full forward of the prefix, no state."""
    steps = []
    for end in range(prompt_length, sequences.shape[1]):
        prefix_mask = None if mask is None else torch.cat([mask, mask.new_ones(len(mask), end - prompt_length)], 1)
        steps.append(model(sequences[:, :end], attention_mask=prefix_mask, use_cache=False).logits[:, -1])
    return steps


def assert_generation_matches_recompute(model, prompt, mask=None, **kwargs):
    """Per-step logits of cached generate() equal a full recompute of each prefix."""
    out = model.generate(
        prompt, attention_mask=mask, output_logits=True, return_dict_in_generate=True, pad_token_id=PAD, **kwargs
    )
    expected = recomputed_logits(model, out.sequences, prompt.shape[1], mask)
    assert len(out.logits) == len(expected) > 0
    for step, (cached, full) in enumerate(zip(out.logits, expected, strict=True)):
        full = full.to(cached.dtype)  # generate() returns float32 logits
        assert torch.allclose(cached, full, atol=1e-5), f"step {step}: max diff {(cached - full).abs().max():.3g}"
    return out


def test_greedy_generation_logits_equal_a_full_recompute():
    model = sharp_model()
    assert_generation_matches_recompute(model, random_ids(1, 6), max_new_tokens=12, do_sample=False)


def test_sampled_generation_logits_equal_a_full_recompute():
    model = sharp_model()
    torch.manual_seed(123)
    out = assert_generation_matches_recompute(model, random_ids(2, 5), max_new_tokens=15, do_sample=True, top_k=0)
    torch.manual_seed(123)
    recomputed = model.generate(
        random_ids(2, 5), use_cache=False, max_new_tokens=15, do_sample=True, top_k=0, pad_token_id=PAD
    )
    assert torch.equal(out.sequences, recomputed)


def test_left_padded_batch_logits_equal_a_full_recompute():
    model = sharp_model()
    prompts = [random_ids(1, 3, seed=5)[0], random_ids(1, 8, seed=6)[0]]
    longest = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.full((longest - len(p),), PAD), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(longest - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    out = assert_generation_matches_recompute(model, ids, mask, max_new_tokens=10, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=10, do_sample=False, pad_token_id=PAD)
        assert torch.equal(out.sequences[row, -10:], alone[0, -10:])


# three beams, each returned, scored by the sum of its tokens' log-probabilities (length_penalty 0)
BEAM_SEARCH = dict(
    max_new_tokens=8,
    num_beams=3,
    num_return_sequences=3,
    do_sample=False,
    pad_token_id=PAD,
    output_scores=True,
    return_dict_in_generate=True,
    length_penalty=0.0,
)


def recomputed_beam_scores(model, sequences: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Each beam's sum of its generated tokens' log-probabilities from a full forward, no state."""
    log_probs = torch.log_softmax(model(sequences, use_cache=False).logits[:, :-1], dim=-1)
    return log_probs.gather(-1, sequences[:, 1:, None])[:, prompt_length - 1 :, 0].sum(-1)


def test_beam_search_scores_equal_a_full_recompute():
    model = sharp_model()
    prompt = random_ids(1, 5)
    cached = model.generate(prompt, use_cache=True, **BEAM_SEARCH)
    full = model.generate(prompt, use_cache=False, **BEAM_SEARCH)
    assert torch.equal(cached.sequences, full.sequences)
    assert torch.allclose(cached.sequences_scores, full.sequences_scores, atol=1e-5)
    recomputed = recomputed_beam_scores(model, cached.sequences, prompt.shape[1])
    assert torch.allclose(recomputed.to(cached.sequences_scores.dtype), cached.sequences_scores, atol=1e-4)


def test_decoding_state_is_accepted_under_both_names():
    model = sharp_model()
    ids = random_ids(2, 9)
    full = model(ids).logits[:, -1]
    first = model(ids[:, :-1], use_cache=True)
    state = first.past_key_values
    assert torch.allclose(model(ids[:, -1:], cache=state).logits[:, -1], full, atol=1e-5)
    assert torch.allclose(model(ids[:, -1:], past_key_values=state).logits[:, -1], full, atol=1e-5)
    with pytest.raises(ValueError, match="not as both"):
        model(ids[:, -1:], cache=state, past_key_values=model(ids[:, :-1], use_cache=True).past_key_values)


# -- save / load ----------------------------------------------------------------------------------


def test_save_and_load_give_identical_logits(tmp_path):
    model = tiny_model(windows=[3], num_layers=1)
    ids = random_ids(2, 9)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "generation_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, SaffuForCausalLM)
    assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_trust_remote_code_without_the_package(tmp_path):
    model = sharp_model()
    ids = random_ids(2, 9)
    model.save_pretrained(tmp_path / "model")
    torch.save({"ids": ids, "logits": model(ids).logits.detach()}, tmp_path / "reference.pt")
    script = BLOCK_HF_SAFFU + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(
            {str(tmp_path / "model")!r}, trust_remote_code=True, dtype=torch.float64
        ).eval()
        assert "hf_saffu" not in sys.modules
        reference = torch.load({str(tmp_path / "reference.pt")!r})
        # float64: equal up to BLAS summation order (the kernel can depend on where the weights sit in memory)
        logits = model(reference["ids"]).logits
        assert torch.allclose(logits, reference["logits"], rtol=0, atol=1e-10), "logits differ"
        def check(prompt, mask=None, **kwargs):
            out = model.generate(prompt, attention_mask=mask, max_new_tokens=8, pad_token_id={PAD},
                                 output_logits=True, return_dict_in_generate=True, **kwargs)
            for end, cached in enumerate(out.logits, start=prompt.shape[1]):
                full_mask = None if mask is None else torch.cat(
                    [mask, mask.new_ones(len(mask), end - prompt.shape[1])], 1)
                full = model(out.sequences[:, :end], attention_mask=full_mask, use_cache=False).logits[:, -1]
                assert torch.allclose(cached, full.float(), atol=1e-5), f"{{kwargs}}: differs at length {{end}}"

        ids = reference["ids"]
        check(ids[:1, :5], do_sample=False)
        torch.manual_seed(0)
        check(ids[:, :5], do_sample=True, top_k=0)
        left_padded = torch.cat([torch.full((1, 3), {PAD}), ids[1:, :4]], 1)
        check(torch.cat([ids[:1, :7], left_padded]), torch.tensor([[1] * 7, [0] * 3 + [1] * 4]), do_sample=False)
        beams = dict(max_new_tokens=6, num_beams=3, num_return_sequences=3, do_sample=False, pad_token_id={PAD},
                     output_scores=True, return_dict_in_generate=True)
        cached, full = (model.generate(ids[:1, :5], use_cache=use, **beams) for use in (True, False))
        assert torch.equal(cached.sequences, full.sequences), "beam search: sequences differ"
        assert torch.allclose(cached.sequences_scores, full.sequences_scores, atol=1e-5), "beam scores differ"
        print("remote code ok", type(model).__module__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=None)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok transformers_modules" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "new_size", "multiple", "field"),
    [
        (dict(embed_bits=6), 64, None, "embed_bits"),  # 2^6 - 1 = 63 codes
        (dict(embed_bits=6), 60, 8, "embed_bits"),  # padded to 64
        (dict(hidden_bits=6), 64, None, "hidden_bits"),
        (dict(eos_token_id=45), 40, None, "eos_token_id"),
    ],
)
def test_resize_beyond_the_bit_cipher_codes_is_refused_before_any_change(overrides, new_size, multiple, field):
    model = tiny_model(**overrides)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match=field):
        model.resize_token_embeddings(new_size, pad_to_multiple_of=multiple)
    assert model.config.vocab_size == VOCAB
    after = model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())


def test_auto_model_with_remote_code_without_the_package(tmp_path):
    """AutoModel (the base SaffuModel) loads from a saved SaffuForCausalLM with trust_remote_code alone."""
    model = sharp_model()
    ids = random_ids(2, 9)
    model.save_pretrained(tmp_path / "model")
    torch.save({"ids": ids, "hidden": model.model(ids).last_hidden_state.detach()}, tmp_path / "reference.pt")
    script = BLOCK_HF_SAFFU + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert "hf_saffu" not in sys.modules
        reference = torch.load({str(tmp_path / "reference.pt")!r})
        assert torch.equal(model(reference["ids"]).last_hidden_state, reference["hidden"]), "hidden states differ"
        print("remote code ok", type(model).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok SaffuModel" in result.stdout


# -- training -------------------------------------------------------------------------------------


def test_backprop_reduces_the_loss():
    model = tiny_model(initializer_range=0.02)
    model.train()
    ids = torch.tensor([[2, 3, 4, 5, 6, 7, 8, 9] * 4] * 4)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_pivot_head_by_distinct_token_equals_the_dense_product():
    model = tiny_model(pivot_head=True, freeze_embeddings=False).train()
    with torch.no_grad():
        model.pivot_head.weight.normal_()
    ids = random_ids(4, 30)  # 120 positions, at most 38 distinct tokens
    parameters = (model.pivot_head.weight, model.model.embeddings.weight)
    weights = torch.linspace(-1, 1, 4 * 30 * VOCAB).view(4, 30, VOCAB)
    dense = model.pivot_head(model.model.embeddings(ids))
    distinct = model.pivot_logits(ids)
    assert torch.allclose(distinct, dense, atol=1e-6)
    for got, expected in zip(
        torch.autograd.grad((distinct * weights).sum(), parameters),
        torch.autograd.grad((dense * weights).sum(), parameters),
        strict=True,
    ):
        assert expected.abs().max() > 0.1 and torch.allclose(got, expected, atol=1e-5)


def test_pivot_bigram_table_equals_its_dense_matrix():
    """b + S[x] from the sparse table (once per distinct pivot) equals the dense V x V matrix's rows, in values
    and in the gradients of the values and the bias."""
    model = tiny_model(pivot_trigrams=0).train()
    channel = model.pivot_bigrams
    used = int(channel.rows[-1])
    assert used == 400
    pivots = torch.repeat_interleave(torch.arange(VOCAB), channel.rows.diff())
    ids = random_ids(4, 30)
    weights = torch.linspace(-1, 1, 4 * 30 * VOCAB).view(4, 30, VOCAB)
    dense = torch.zeros(VOCAB, VOCAB).index_put((pivots, channel.columns[:used]), channel.values[:used])
    expected = (dense + channel.bias)[ids]
    got = model.pivot_logits(ids)
    assert torch.allclose(got, expected, atol=1e-6) and expected.std() > 0.3
    parameters = (channel.values, channel.bias)
    for grad_got, grad_expected in zip(
        torch.autograd.grad((got * weights).sum(), parameters),
        torch.autograd.grad((expected * weights).sum(), parameters),
        strict=True,
    ):
        assert grad_expected.abs().max() > 0.1 and torch.allclose(grad_got, grad_expected, atol=1e-5)
    # the unused entries past rows[-1] get no gradient
    unused = torch.autograd.grad(model.pivot_logits(ids).sum(), channel.values)[0][used:]
    assert not unused.any()


def test_pivot_bigram_table_round_trips_and_resizes(tmp_path):
    model = tiny_model(pivot_trigrams=0)
    ids = random_ids(2, 20)
    model.save_pretrained(tmp_path)
    loaded = SaffuForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.pivot_bigrams.rows, model.pivot_bigrams.rows)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    before = model.pivot_logits(ids)
    model.resize_token_embeddings(VOCAB + 6)
    assert model.pivot_bigrams.bias.shape == (VOCAB + 6,) and len(model.pivot_bigrams.rows) == VOCAB + 7
    assert torch.allclose(model.pivot_logits(ids)[..., :VOCAB], before)
    new_token = model.pivot_logits(torch.tensor([[VOCAB + 3]]))[0, 0]  # no pairs: the bias, 0 for new tokens
    assert torch.equal(new_token, model.pivot_bigrams.bias) and not new_token[VOCAB:].any()
    model.save_pretrained(tmp_path / "resized")
    assert SaffuForCausalLM.from_pretrained(tmp_path / "resized").pivot_bigrams.bias.shape == (VOCAB + 6,)


def test_trigram_table_adds_its_rows_by_previous_and_pivot(tmp_path):
    """The logits of a model with a trigram table minus those of the same model without it are T[(w, x)] of each
    position's (previous, pivot) history, zero at the first position; a saved model gives the same logits."""
    model = tiny_model()
    table = model.pivot_trigrams
    ids = random_ids(3, 12)
    with torch.no_grad():
        full = model(ids).logits
        values = table.values.clone()
        table.values.zero_()  # the same model without the trigram table's corrections
        without = model(ids).logits
        table.values.copy_(values)
    histories = torch.repeat_interleave(table.histories[: len(table.rows) - 1], table.rows.diff())
    dense = torch.zeros(VOCAB * VOCAB, VOCAB).index_put(
        (histories, table.columns[: int(table.rows[-1])]), table.values.detach()[: int(table.rows[-1])]
    )
    expected = dense[ids[:, :-1] * VOCAB + ids[:, 1:]]
    assert torch.allclose(full[:, 1:] - without[:, 1:], expected, atol=1e-5) and expected.abs().max() > 0.1
    assert torch.allclose(full[:, 0], without[:, 0])
    model.save_pretrained(tmp_path)
    assert torch.equal(SaffuForCausalLM.from_pretrained(tmp_path).eval()(ids).logits, full)
    before = model(ids).logits
    model.resize_token_embeddings(VOCAB + 3)
    assert torch.allclose(model(ids).logits[..., :VOCAB], before[..., :VOCAB], atol=1e-5)


def test_pivot_channel_is_one_of_two_forms():
    assert tiny_config().ngram_order == 3 and not tiny_config().pivot_head
    assert tiny_config(pivot_head=True).ngram_order == 1  # asking for the pivot head alone gets it alone
    assert tiny_config().table_capacity(2) == VOCAB**2 and tiny_config().table_capacity(3) == VOCAB**3
    with pytest.raises(ValueError, match="pivot_head and SaffuConfig.ngram_order"):
        tiny_config(pivot_head=True, ngram_order=2)
    with pytest.raises(ValueError, match=r"ngram_capacities\[0\] \(the order-2 table\) must be an integer >= 1"):
        tiny_config(pivot_bigrams=-1)
    with pytest.raises(ValueError, match="pivot_trigrams needs the bigram table"):
        tiny_config(pivot_bigrams=0, pivot_trigrams=100)
    # the fields of earlier versions: capacities of orders 2 and 3, and the order they imply
    assert tiny_config(pivot_bigrams=0).ngram_order == 1 and tiny_config(pivot_trigrams=0).ngram_order == 2
    assert tiny_config(pivot_bigrams=7, pivot_trigrams=9).ngram_capacities == [7, 9]
    assert tiny_config(ngram_order=4, pivot_bigrams=7).ngram_capacities == [7, 2**20, 2**20]
    assert isinstance(tiny_model().pivot_bigrams, SaffuPivotBigrams) and tiny_model(ngram_order=1).pivot_bigrams is None


def test_frozen_input_cache_stops_storing_at_its_memory_bound():
    from hf_saffu.frozen_phase import FrozenInputCache

    model = tiny_model(freeze_embeddings=False).train()
    ids = random_ids(4, 30)
    row_bytes = 30 * model.config.max_window * 4
    expected = model(ids).logits
    model.model.frozen_inputs = FrozenInputCache(max_bytes=3 * row_bytes)
    for _ in range(2):  # the second pass reads three rows from the cache and recomputes the fourth
        assert torch.allclose(model(ids).logits, expected, atol=1e-6)
        assert len(model.model.frozen_inputs) == 3 and model.model.frozen_inputs.nbytes == 3 * row_bytes


@pytest.mark.parametrize("form", ["paper form", "tables"])
def test_forward_compiles_as_one_graph_with_the_same_logits(form):
    """torch.compile traces the whole forward (the input checks read no value back to the host). The tables' add
    has a data-dependent size: it is one graph when dynamo captures such sizes (otherwise it breaks there)."""
    model = tiny_model(**(SaffuConfig.PAPER_FORM if form == "paper form" else {}))
    ids = random_ids(2, 9)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=form == "tables"):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(ids, labels=ids)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        assert torch.equal(compiled(ids, labels=ids).logits, model(ids, labels=ids).logits)
