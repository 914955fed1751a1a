"""`sample_text` (the main job's sample and `hf-saffu generate`): documents after EOS, token budget."""

import torch

from hf_saffu import SaffuConfig, SaffuForCausalLM
from hf_saffu.generation import sample_text

VOCAB, EOS, PAD = 40, 1, 0


class WordTokenizer:
    """Token id i <-> the word "w{i}"."""

    eos_token_id, pad_token_id = EOS, PAD

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(word[1:]) for word in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i in (EOS, PAD)))


def eos_prone_model() -> SaffuForCausalLM:
    torch.manual_seed(0)
    config = SaffuConfig(vocab_size=VOCAB, embed_bits=8, hidden_bits=8, windows=[1, 2], eos_token_id=EOS)
    model = SaffuForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.bias[EOS] = 1.5  # P(EOS) ~ 0.15 per step: short documents
        model.lm_head.bias[PAD] = -1e4
    return model


def test_one_document_stops_at_eos():
    model, tokenizer = eos_prone_model(), WordTokenizer()
    text = sample_text(model, tokenizer, "w5 w6", max_new_tokens=50, seed=3)
    torch.manual_seed(3)
    ids = model.generate(
        torch.tensor([[EOS, 5, 6]]), max_new_tokens=50, do_sample=True, temperature=0.8, top_k=50, pad_token_id=PAD
    )
    assert ids[0, -1].item() == EOS and ids.shape[1] < 3 + 50
    assert text == tokenizer.decode(ids[0, 1:].tolist())
    assert "\n\n" not in text


def test_several_documents_within_the_token_budget():
    model, tokenizer = eos_prone_model(), WordTokenizer()
    text = sample_text(model, tokenizer, "", max_new_tokens=60, documents=4, seed=0)
    documents = text.split("\n\n")
    assert 2 <= len(documents) <= 4
    assert sum(len(document.split()) for document in documents) <= 60
    assert all(word.startswith("w") and word != f"w{EOS}" for document in documents for word in document.split())
