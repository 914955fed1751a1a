"""Tests of hf_saffu.evaluation: perplexity (function and evaluate module), minimal pairs, CLI
handler and lm-evaluation-harness compatibility, on tiny GPT-2 and SAFFU models."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import evaluate
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from hf_saffu import SaffuConfig, SaffuForCausalLM
from hf_saffu.cli import main as cli_main
from hf_saffu.evaluation import (
    Segment,
    evaluate_minimal_pairs,
    format_minimal_pairs_table,
    packed_perplexity,
    perplexity,
    perplexity_metric_path,
    read_minimal_pairs,
    sequence_logprobs,
    sliding_windows,
    token_nll_sum,
    write_json,
)

PAIRS_DIR = Path(__file__).parent / "data" / "minimal_pairs"
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
WORDS = "the a cat cats dog dogs is are was were sits sit sat ran on mat big small red".split()
# Unigram scores of the "known preferences" model: singular forms +2, plural forms -2.
UNIGRAM_SCORES = {"is": 2.0, "was": 2.0, "sits": 2.0, "cat": 2.0, "dog": 2.0}
UNIGRAM_SCORES |= {"are": -2.0, "were": -2.0, "sit": -2.0, "cats": -2.0, "dogs": -2.0}
TEXTS = ["the cat", "a dog sat on the mat", "red"]
LONG_TEXT = " ".join(WORDS)  # 19 words + start token: longer than the GPT-2 context of 16


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


SPECIAL_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def make_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(SPECIALS + WORDS), n_positions=16, n_embd=16, n_layer=2, n_head=2, **SPECIAL_IDS)
    return GPT2LMHeadModel(config).eval()


def make_saffu() -> SaffuForCausalLM:
    torch.manual_seed(0)
    config = SaffuConfig(vocab_size=len(SPECIALS + WORDS), embed_bits=8, hidden_bits=8, windows=[2, 4], **SPECIAL_IDS)
    model = SaffuForCausalLM(config)
    with torch.no_grad():  # a sharper output layer than the default init (logits of a few nats), so no pair is a
        model.lm_head.weight.normal_(std=0.25)  # near-tie; the head reads ln H, entries about -2
        model.lm_head.bias.normal_(std=1.0)
    return model.eval()


def make_unigram_model(tokenizer) -> GPT2LMHeadModel:
    """GPT-2 whose logits are UNIGRAM_SCORES at every position: ln_f outputs the constant e_0 and
    lm_head's first column holds the scores, so log p(w | anything) = s_w - logsumexp(s)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=32,
        n_embd=4,
        n_layer=1,
        n_head=1,
        tie_word_embeddings=False,
        **SPECIAL_IDS,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        model.lm_head.weight.zero_()
        for word, score in UNIGRAM_SCORES.items():
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(word), 0] = score
    return model.eval()


MODEL_FACTORIES = {"gpt2": make_gpt2, "saffu": make_saffu}


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module", params=sorted(MODEL_FACTORIES))
def model(request):
    return MODEL_FACTORIES[request.param]()


@pytest.fixture(scope="module")
def saved_dirs(tmp_path_factory, tokenizer):
    """Saved model + tokenizer directories, one per model kind."""
    dirs = {}
    for name, factory in MODEL_FACTORIES.items():
        directory = tmp_path_factory.mktemp(name)
        factory().save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        dirs[name] = directory
    return dirs


def hand_nll(model, ids: list[int]) -> float:
    """-sum_{t>=1} log softmax(logits_{t-1})[x_t], one unpadded sequence, position by position."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return -sum(torch.log_softmax(logits[t - 1].double(), dim=-1)[ids[t]].item() for t in range(1, len(ids)))


def with_start(tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]


# --------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------


def test_token_nll_sum_matches_hand_computation(model, tokenizer):
    ids = with_start(tokenizer, "the cat")  # [<bos>, the, cat]
    assert len(ids) == 3
    nll, n_tokens = token_nll_sum(model, torch.tensor([ids]))
    assert n_tokens == 2
    assert nll == pytest.approx(hand_nll(model, ids), rel=1e-6)


def test_perplexity_matches_hand_computation(model, tokenizer):
    nlls = [hand_nll(model, with_start(tokenizer, text)) for text in TEXTS]
    n_tokens = sum(len(text.split()) for text in TEXTS)
    result = perplexity(model, tokenizer, TEXTS, batch_size=2)  # padded batches
    assert result["n_tokens"] == n_tokens
    assert result["nll_sum"] == pytest.approx(sum(nlls), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(sum(nlls) / n_tokens), rel=1e-6)


def test_perplexity_of_unigram_model_is_closed_form(tokenizer):
    model = make_unigram_model(tokenizer)
    log_z = math.log(sum(math.exp(UNIGRAM_SCORES.get(t, 0.0)) for t in SPECIALS + WORDS))
    words = [w for text in TEXTS for w in text.split()]
    expected = math.exp(sum(log_z - UNIGRAM_SCORES.get(w, 0.0) for w in words) / len(words))
    assert perplexity(model, tokenizer, TEXTS)["perplexity"] == pytest.approx(expected, rel=1e-5)


def test_metric_loaded_by_path_equals_function(model, tokenizer):
    metric = evaluate.load(perplexity_metric_path())
    result = metric.compute(predictions=TEXTS, model=model, tokenizer=tokenizer, batch_size=2)
    expected = perplexity(model, tokenizer, TEXTS, batch_size=3)
    assert result["n_tokens"] == expected["n_tokens"]
    assert result["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)


def test_metric_loads_model_from_directory(saved_dirs, tokenizer):
    metric = evaluate.load(perplexity_metric_path())
    for name, directory in saved_dirs.items():
        expected = perplexity(MODEL_FACTORIES[name](), tokenizer, TEXTS)["perplexity"]
        result = metric.compute(predictions=TEXTS, model=str(directory))["perplexity"]
        assert result == pytest.approx(expected, rel=1e-6), name


@pytest.mark.parametrize(("n", "max_length", "stride"), [(2, 2, 1), (10, 4, 1), (10, 4, 3), (11, 5, 2), (9, 9, 8)])
def test_sliding_windows_score_every_target_once(n, max_length, stride):
    windows = sliding_windows(list(range(n)), max_length, stride)
    targets = [token for window in windows for token in window.ids[window.first_target :]]
    assert targets == list(range(1, n))
    assert all(len(w.ids) <= max_length and w.first_target >= 1 for w in windows)


def test_sliding_windows_reject_stride_without_context():
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(list(range(10)), max_length=4, stride=4)
    assert sliding_windows([5], max_length=4) == []
    assert sliding_windows([5, 6]) == [Segment([5, 6], 1)]


def test_window_of_full_length_equals_no_window(model, tokenizer):
    full = max(len(with_start(tokenizer, text)) for text in TEXTS)
    reference = perplexity(model, tokenizer, TEXTS)  # every text fits the model: one window each
    for stride in (1, full - 1):
        windowed = perplexity(model, tokenizer, TEXTS, max_length=full, stride=stride)
        assert windowed["n_tokens"] == reference["n_tokens"]
        assert windowed["nll_sum"] == pytest.approx(reference["nll_sum"], rel=1e-6)


def test_stride_one_scores_each_token_with_the_last_max_length_minus_one_tokens(model, tokenizer):
    ids = with_start(tokenizer, LONG_TEXT)
    max_length = 6
    expected = 0.0
    for t in range(1, len(ids)):
        context = ids[max(0, t - max_length + 1) : t]
        with torch.no_grad():
            last_logits = model(torch.tensor([context])).logits[0, -1].double()
        expected -= torch.log_softmax(last_logits, dim=-1)[ids[t]].item()
    result = perplexity(model, tokenizer, [LONG_TEXT], batch_size=4, max_length=max_length, stride=1)
    assert result["n_tokens"] == len(ids) - 1
    assert result["nll_sum"] == pytest.approx(expected, rel=1e-5)


def test_text_longer_than_gpt2_context_is_windowed_by_default(tokenizer):
    model = make_gpt2()
    n_tokens = len(LONG_TEXT.split())
    assert n_tokens + 1 > model.config.n_positions
    result = perplexity(model, tokenizer, [LONG_TEXT])
    assert result["n_tokens"] == n_tokens
    assert math.isfinite(result["perplexity"])


# --------------------------------------------------------------------------------------------
# Minimal pairs
# --------------------------------------------------------------------------------------------


def test_minimal_pairs_on_model_with_known_preferences(tokenizer):
    """The unigram model prefers singular forms, so every pair whose good sentence is singular is
    correct and the plural agreement pair ("the cats are small") is wrong: 5 of 6."""
    model = make_unigram_model(tokenizer)
    result = evaluate_minimal_pairs(model, tokenizer, PAIRS_DIR, batch_size=3)
    assert (result["n_pairs"], result["correct"]) == (6, 5)
    assert result["accuracy"] == pytest.approx(5 / 6)
    assert result["per_uid"] == {
        "determiners": {"n_pairs": 2, "correct": 2, "accuracy": 1.0},
        "subject_verb_agreement": {"n_pairs": 4, "correct": 3, "accuracy": 0.75},
    }
    assert result["per_field"]["morphology"]["accuracy"] == 0.75
    assert result["per_field"]["syntax"]["accuracy"] == 1.0
    assert result["start_token"] == "<bos>"
    log_z = math.log(sum(math.exp(UNIGRAM_SCORES.get(t, 0.0)) for t in SPECIALS + WORDS))
    first = result["pairs"][0]  # agreement.jsonl comes first: "the cat is big" / "the cat are big"
    assert first["logprob_good"] == pytest.approx(2.0 + 2.0 - 4 * log_z, rel=1e-5)
    assert first["logprob_bad"] == pytest.approx(2.0 - 2.0 - 4 * log_z, rel=1e-5)


def test_minimal_pairs_agree_with_hand_log_probabilities(model, tokenizer):
    result = evaluate_minimal_pairs(model, tokenizer, PAIRS_DIR / "agreement.jsonl", batch_size=8)
    pairs = read_minimal_pairs(PAIRS_DIR / "agreement.jsonl")
    for pair, scored in zip(pairs, result["pairs"], strict=True):
        good = -hand_nll(model, with_start(tokenizer, pair.sentence_good))
        bad = -hand_nll(model, with_start(tokenizer, pair.sentence_bad))
        assert scored["logprob_good"] == pytest.approx(good, rel=1e-5)
        assert scored["logprob_bad"] == pytest.approx(bad, rel=1e-5)
        assert scored["correct"] == (good > bad)
    assert result["correct"] == sum(p["correct"] for p in result["pairs"])


def test_tied_pair_counts_as_wrong(tmp_path, tokenizer):
    path = tmp_path / "tie.jsonl"  # same words, other order: equal unigram log-probabilities
    path.write_text(json.dumps({"sentence_good": "the cat sat", "sentence_bad": "cat the sat"}) + "\n")
    result = evaluate_minimal_pairs(make_unigram_model(tokenizer), tokenizer, path)
    assert result["pairs"][0]["logprob_good"] == result["pairs"][0]["logprob_bad"]
    assert result["correct"] == 0
    assert result["per_uid"] == {"tie": {"n_pairs": 1, "correct": 0, "accuracy": 0.0}}


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (None, FileNotFoundError, "not found"),
        ("", ValueError, "empty file"),
        ("\n\n", ValueError, "empty file"),
        ('{"sentence_good": "a cat sat"}\n', ValueError, r":1: missing string field\(s\) sentence_bad"),
        ('{"sentence_good": "a", "sentence_bad": "b"}\n{"sentence_bad": "b"}\n', ValueError, ":2: missing"),
        ("{not json\n", ValueError, "invalid JSON"),
    ],
)
def test_minimal_pair_file_errors(tmp_path, content, error, match):
    path = tmp_path / "pairs.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=match):
        read_minimal_pairs(path)


def test_directory_without_jsonl_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no .jsonl files"):
        read_minimal_pairs(tmp_path)


def test_table_and_json_report(tmp_path, tokenizer):
    result = evaluate_minimal_pairs(make_unigram_model(tokenizer), tokenizer, PAIRS_DIR)
    lines = format_minimal_pairs_table(result).splitlines()
    assert lines[0].split() == ["UID", "pairs", "correct", "accuracy"]
    assert lines[1].split() == ["determiners", "2", "2", "1.0000"]
    assert lines[2].split() == ["subject_verb_agreement", "4", "3", "0.7500"]
    assert lines[3].split() == ["OVERALL", "6", "5", "0.8333"]
    assert json.loads(write_json(result, tmp_path / "out" / "pairs.json").read_text()) == result


def test_cli_evaluate_command(saved_dirs, tmp_path, capsys):
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(TEXTS) + "\n\n")
    model_dir, output = str(saved_dirs["gpt2"]), tmp_path / "result.json"
    inputs = ["--minimal-pairs", str(PAIRS_DIR), "--data", str(text_file)]
    cli_main(["evaluate", model_dir, *inputs, "--output", str(output)])
    written = json.loads(output.read_text())
    expected = packed_perplexity(make_gpt2(), make_tokenizer(), TEXTS, block_size=16)  # GPT-2's n_positions
    assert written["perplexity"]["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
    assert written["minimal_pairs"]["n_pairs"] == 6
    printed = capsys.readouterr().out
    assert "OVERALL" in printed and f"perplexity {expected['perplexity']:.4f}" in printed
    with pytest.raises(SystemExit) as nothing:
        cli_main(["evaluate", model_dir])
    assert nothing.value.code == 2 and "nothing to evaluate" in capsys.readouterr().err


def test_packed_perplexity_scores_documents_packed_into_blocks(tokenizer):
    """The packed-documents protocol: documents + EOS, concatenated, cut into blocks; each block's first token
    is context only."""
    model = make_gpt2()
    stream = [t for text in TEXTS for t in (*tokenizer(text, add_special_tokens=False)["input_ids"], 2)]
    blocks = [stream[start : start + 5] for start in range(0, len(stream), 5)]
    expected_nll = sum(hand_nll(model, block) for block in blocks)
    expected_tokens = sum(len(block) - 1 for block in blocks)
    result = packed_perplexity(model, tokenizer, TEXTS, block_size=5, batch_size=2)
    assert result["n_tokens"] == expected_tokens
    assert result["nll_sum"] == pytest.approx(expected_nll, rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(expected_nll / expected_tokens), rel=1e-6)


def test_cli_evaluate_reproduces_the_test_perplexity_of_a_training_run(tmp_path, capsys):
    """`hf-saffu evaluate MODEL_DIR --data test.txt` prints (and writes) the test perplexity that the
    `hf-saffu train` run which wrote MODEL_DIR reports in all_results.json and its model card."""
    generator = torch.Generator().manual_seed(0)
    words = WORDS[:12]

    def write(name: str, lines: int) -> str:
        rows = [
            " ".join(words[i] for i in torch.randint(len(words), (int(n),), generator=generator))
            for n in torch.randint(3, 12, (lines,), generator=generator)
        ]
        path = tmp_path / name
        path.write_text("\n".join(rows) + "\n\n")
        return str(path)

    train, validation, test = write("train.txt", 80), write("validation.txt", 10), write("test.txt", 15)
    run_dir = tmp_path / "run"
    cli_main(
        [
            *("train", "--train_files", train, "--validation_files", validation, "--test_files", test),
            *("--tokenizer_vocab_size", "300", "--block_size", "24", "--windows", "1", "4"),
            *("--embed_bits", "12", "--hidden_bits", "12", "--output_dir", str(run_dir), "--max_steps", "2"),
            *("--per_device_eval_batch_size", "3", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no"),
        ]
    )
    reported = json.loads((run_dir / "all_results.json").read_text())
    capsys.readouterr()
    output = tmp_path / "evaluation.json"
    cli_main(["evaluate", str(run_dir), "--data", test, "--output", str(output)])
    evaluated = json.loads(output.read_text())["perplexity"]
    assert evaluated["block_size"] == 24
    assert evaluated["perplexity"] == pytest.approx(reported["test_perplexity"], rel=1e-6)
    assert evaluated["loss"] == pytest.approx(reported["test_loss"], rel=1e-6)
    assert f"perplexity {reported['test_perplexity']:.4f}" in capsys.readouterr().out
    card = (run_dir / "README.md").read_text()
    assert f"{reported['test_perplexity']:,.2f}" in card


# --------------------------------------------------------------------------------------------
# lm-evaluation-harness
# --------------------------------------------------------------------------------------------

TASK_YAMLS = {
    "saffu_test_pairs": """
output_type: multiple_choice
doc_to_text: ""
doc_to_target: 0
doc_to_choice: "{{[sentence_good, sentence_bad]}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
    "saffu_test_generate": """
output_type: generate_until
doc_to_text: "{{sentence_good}}"
doc_to_target: "{{sentence_bad}}"
generation_kwargs:
  max_gen_toks: 5
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
}


def write_tasks(directory: Path, data_file: Path) -> None:
    directory.mkdir()
    for name, body in TASK_YAMLS.items():
        header = f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data_file}\n"
        footer = "test_split: test\nmetadata:\n  version: 1.0\n"
        (directory / f"{name}.yaml").write_text(header + body + footer)


def run_lm_eval(model_dir: Path, tmp_path: Path) -> dict[str, list[dict]]:
    """Run lm_eval in an offline subprocess; return the logged samples per task."""
    write_tasks(tmp_path / "tasks", PAIRS_DIR / "agreement.jsonl")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PAIRS_DIR.parents[2]), env.get("PYTHONPATH")]))  # checkout
    command = [sys.executable, "-m", "hf_saffu.lmeval", "--model", "hf"]  # lm_eval with hf_saffu imported
    command += ["--model_args", f"pretrained={model_dir},backend=causal", "--device", "cpu"]  # no remote code
    command += ["--tasks", ",".join(TASK_YAMLS), "--include_path", str(tmp_path / "tasks"), "--batch_size", "2"]
    command += ["--output_path", str(tmp_path / "results"), "--log_samples"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    samples = {}
    for name in TASK_YAMLS:
        (path,) = (tmp_path / "results").rglob(f"samples_{name}_*.jsonl")
        samples[name] = [json.loads(line) for line in path.read_text().splitlines()]
    return samples


def greedy_continuation(model, tokenizer, context: str, max_new_tokens: int) -> str:
    """Greedy generation from `context` (no start token, as lm-eval encodes it), cut at EOS."""
    input_ids = torch.tensor([tokenizer(context)["input_ids"]])
    with torch.no_grad():
        output = model.generate(
            input_ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    new = output[0, input_ids.shape[1] :].tolist()
    new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
    return tokenizer.decode(new, skip_special_tokens=True)


def make_byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer like the package's own: no prefix space, EOS doubles as BOS."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    sentences = [p for pair in read_minimal_pairs(PAIRS_DIR) for p in (pair.sentence_good, pair.sentence_bad)]
    backend.train_from_iterator(sentences, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<eos>", eos_token="<eos>", pad_token="<pad>")


@pytest.mark.slow
def test_lm_eval_harness_matches_package_on_saved_saffu(tmp_path):
    """`python -m hf_saffu.lmeval --model hf --model_args pretrained=DIR,backend=causal` (lm_eval with the SAFFU
    classes registered, no trust_remote_code) on a saved SAFFU directory with a byte-level BPE tokenizer: its
    loglikelihoods and accuracy equal ours and its generations equal greedy `generate`. (GPT-2 is supported by
    lm-eval natively; one CLI run costs ~20 s, mostly indexing lm-eval's built-in tasks.)"""
    pytest.importorskip("lm_eval")
    tokenizer = make_byte_level_tokenizer()
    torch.manual_seed(0)
    special = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    special["pad_token_id"] = tokenizer.pad_token_id
    config = SaffuConfig(vocab_size=len(tokenizer), embed_bits=9, hidden_bits=9, windows=[2, 4], **special)
    model = SaffuForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(std=2.0)
    model.save_pretrained(tmp_path / "saffu")
    tokenizer.save_pretrained(tmp_path / "saffu")
    samples = run_lm_eval(tmp_path / "saffu", tmp_path)
    pairs = sorted(samples["saffu_test_pairs"], key=lambda sample: sample["doc_id"])
    texts = [text for s in pairs for text in (s["doc"]["sentence_good"], s["doc"]["sentence_bad"])]
    ours = sequence_logprobs(model, tokenizer, texts)
    theirs = [float(resp[0][0]) for s in pairs for resp in s["resps"]]
    assert len(theirs) == len(ours) == 8
    assert theirs == pytest.approx(ours, abs=1e-4)
    ours_accuracy = evaluate_minimal_pairs(model, tokenizer, PAIRS_DIR / "agreement.jsonl")["accuracy"]
    assert sum(s["acc"] for s in pairs) / len(pairs) == ours_accuracy
    for sample in samples["saffu_test_generate"]:
        context = sample["arguments"]["gen_args_0"]["arg_0"]
        assert sample["resps"][0][0] == greedy_continuation(model, tokenizer, context, max_new_tokens=5)
