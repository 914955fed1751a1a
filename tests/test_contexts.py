"""A new kind of context is one class: a fixed-offset context, z_t = v_{t-k}, registered here (test-only), gets the
explicit warm start of its hidden layer through the unchanged warm-start code and a decoding state that
continues exactly."""

import pytest
import torch
from factories import EOS, PAD, VOCAB, packed_dataset, saffu_config
from torch import nn

from hf_saffu import SaffuForCausalLM
from hf_saffu.explicit import Cooccurrence, ExplicitStatisticsError
from hf_saffu.modeling_saffu import CONTEXT_KINDS, ContextVectors, SaffuContext, register_context_kind
from hf_saffu.warm_start import ExplicitWarmStart


class OffsetContext(SaffuContext):
    """z_t = v_{t-k}: the input k positions back (zero before the text and at padding)."""

    def __init__(self, offset: int, input_dim: int, hidden_dim: int):
        super().__init__(input_dim, hidden_dim)
        self.offset = offset
        self.history = offset

    def context_vectors(self, computed, state) -> ContextVectors:
        end = computed.extended.shape[1] - self.offset
        start = end - computed.inputs.shape[1]
        return ContextVectors(computed.extended[:, start:end], computed.extended_valid[:, start:end].double())

    @classmethod
    def build(cls, config, input_dim: int) -> nn.ModuleList | None:
        offsets = getattr(config, "context_offsets", None)
        return nn.ModuleList(cls(k, input_dim, config.hidden_bits) for k in offsets) if offsets else None


@pytest.fixture
def offsets_registered():
    register_context_kind("offsets", OffsetContext.build)
    yield
    CONTEXT_KINDS.pop("offsets")


def test_the_offset_context_is_a_layer_context_after_the_others(offsets_registered):
    model = SaffuForCausalLM(saffu_config(context_offsets=[2, 6], num_layers=2))
    layer = model.model.layers[1]
    assert [type(context).__name__ for context in layer.contexts] == [
        "SaffuWindowContext", "SaffuWindowContext", "SaffuDocumentContext", "OffsetContext", "OffsetContext"
    ]  # fmt: skip
    assert model.model.num_contexts == 5 and layer.history == 6 and layer.input_dim == 5 * 40
    assert "model.layers.1.offsets.1.hidden.weight" in model.state_dict()
    plain = saffu_config()  # a config without offsets builds none
    assert SaffuForCausalLM(plain).model.num_contexts == plain.num_contexts == 3


def test_the_offset_context_gets_its_closed_form_warm_start(offsets_registered):
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config(context_offsets=[2], explicit_discount=None))
    train = packed_dataset(40).with_format("torch")
    batches = [train[i : i + 16] for i in range(0, len(train), 16)]
    warm_start = ExplicitWarmStart(model, batches, show_progress=False)
    warm_start.run()
    # F_U = sum_t z_t^T e_{class(y_t)}, z_t = v_{t-2}, computed here from the solved embeddings alone
    embeddings = model.model.embeddings.weight.detach()
    expected = Cooccurrence.zeros(model.config.embed_bits, model.config.hidden_bits)
    for batch in batches:
        ids, valid = batch["input_ids"], batch["attention_mask"].bool()
        vectors = embeddings[ids] * valid[..., None]
        offset = torch.cat([torch.zeros_like(vectors[:, :2]), vectors[:, :-2]], dim=1)
        expected.add(offset[:, :-1], warm_start.target_classes[ids[:, 1:]], valid[:, :-1] & valid[:, 1:])
    weight, bias = expected.solve(model.config.warm_start_recipe.explicit_smoothing)
    hidden = model.model.layers[0].offsets[0].hidden
    assert expected.counts.sum() > 100
    assert torch.allclose(hidden.weight, weight.T.float(), atol=1e-5)
    assert torch.allclose(hidden.bias, bias.float(), atol=1e-5)


def test_cached_generation_with_an_offset_context_equals_a_full_recompute(offsets_registered):
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config(context_offsets=[2, 6], num_layers=2, initializer_range=3.0)).double()
    model.eval()
    prompt = torch.randint(2, VOCAB, (2, 5))
    prompt[1, 3] = EOS
    out = model.generate(
        prompt, max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=PAD
    )
    with torch.no_grad():
        full = model(out.sequences[:, :-1]).logits[:, prompt.shape[1] - 1 :]
    cached = torch.stack(out.logits, dim=1)
    assert cached.shape == full.shape and full.std() > 1.0
    assert torch.allclose(cached, full.to(cached.dtype), atol=1e-5)


class NegatedOffsetContext(OffsetContext):
    """z_t = -v_{t-k}: a registered kind whose vectors the explicit solution cannot take."""

    def context_vectors(self, computed, state) -> ContextVectors:
        vectors = super().context_vectors(computed, state)
        return ContextVectors(-vectors.vectors, vectors.inputs_behind)


def test_a_registered_kinds_vectors_are_checked_in_the_warm_start():
    """The warm start checks the layer's inputs once and trusts the windows' and the document's z_t (convex mixtures
    of them); a registered kind's z_t are checked batch by batch: negative ones are a clear error."""
    register_context_kind("offsets", NegatedOffsetContext.build)
    try:
        model = SaffuForCausalLM(saffu_config(context_offsets=[2]))
        train = packed_dataset(40).with_format("torch")
        with pytest.raises(ExplicitStatisticsError, match="explicit-solution inputs holds negative values"):
            ExplicitWarmStart(model, [train[i : i + 16] for i in range(0, len(train), 16)], show_progress=False).run()
    finally:
        CONTEXT_KINDS.pop("offsets")
