"""What a Hugging Face user meets: dataset kinds, data sources, cards, generation, export, PEFT, lm-eval."""

import ast
import logging
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
import torch
from factories import (
    EOS,
    VOCAB,
    WORDS,
    fill_pivot_bigrams,
    fill_pivot_trigrams,
    packed_dataset,
    saffu_config,
    training_arguments,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_cache import ATTENTION, cache_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_saffu import ExplicitTrainer, SaffuForCausalLM
from hf_saffu.data import DataArguments, config_for_tokenizer, train_tokenizer
from hf_saffu.export import export_onnx
from hf_saffu.model_card import TrainingRunInfo, build_model_card, model_run_info
from hf_saffu.train import dataset_results

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the training data: every kind Trainer takes works or gets one line ------------------------------


def warm_started(tmp_path, train) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config())
    args = training_arguments(tmp_path, warm_start_only=True, output_dir=str(tmp_path / "out"))
    ExplicitTrainer(model=model, args=args, train_dataset=train).train()
    return model.state_dict()


class TorchBlocks(torch.utils.data.Dataset):
    """A map-style torch Dataset of packed blocks (tensors)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return {key: torch.tensor(value) for key, value in self.rows[index].items()}


def test_a_list_or_a_torch_dataset_warm_starts_as_the_datasets_dataset_does(tmp_path):
    train = packed_dataset(60)
    expected = warm_started(tmp_path / "a", train)
    rows = train.to_list()
    for index, given in enumerate([rows, TorchBlocks(rows)]):
        weights = warm_started(tmp_path / str(index), given)
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[name], expected[name]) for name in expected), type(given).__name__


@pytest.mark.parametrize(
    "train, message",
    [
        ((row for row in [{"input_ids": [1, 2]}]), "got generator"),
        ({"input_ids": [[1, 2]]}, "got dict"),
        ([[1, 2, 3]], r"dicts with input_ids \(packed blocks\), got \['list'\]"),
    ],
)
def test_other_kinds_of_training_data_get_one_line_naming_what_is_supported(tmp_path, train, message):
    model = SaffuForCausalLM(saffu_config())
    args = training_arguments(tmp_path, warm_start_only=True)
    with pytest.raises(ValueError, match=message) as error:
        ExplicitTrainer(model=model, args=args, train_dataset=train).train()
    assert "\n" not in str(error.value)


# -- the data source ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["text", "json", "csv"])
def test_a_file_format_without_files_is_refused(name, tmp_path, monkeypatch):
    """`--dataset_name text` with no files would train on every text file of the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"dataset_name '{name}' is a file format, not a dataset.*train_files"):
        DataArguments(dataset_name=name)
    (tmp_path / name).mkdir()  # a local folder of that name is a dataset
    assert DataArguments(dataset_name=name).dataset_name == name


# -- every third-party import is declared ----------------------------------------------------------------


def imported_distributions() -> dict[str, set[str]]:
    """{distribution name: files of hf_saffu/ importing it}, from every absolute import (module level or not)."""
    distributions = packages_distributions()
    found: dict[str, set[str]] = {}
    for file in sorted((ROOT / "hf_saffu").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "hf_saffu":
                    for name in distributions.get(top, [top]):
                        found.setdefault(canonicalize_name(name), set()).add(str(file.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared_in_pyproject():
    """A package that only arrives as another one's dependency (httpx2 through huggingface_hub, pyarrow through
    datasets) can vanish with that package's next release: hf_saffu imports only what pyproject declares, in
    the dependencies, or in an extra for the opt-in code that imports it inside a function."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    extras = {canonicalize_name(Requirement(r).name) for rs in project["optional-dependencies"].values() for r in rs}
    imported = imported_distributions()
    assert {"torch", "transformers", "pyarrow"} <= imported.keys()
    undeclared = {name: sorted(files) for name, files in imported.items() if name not in declared | extras}
    assert not undeclared


# -- model cards ------------------------------------------------------------------------------------------


def test_file_and_folder_names_are_escaped_in_the_card_body(tmp_path):
    """Names of local files and folders reach the card's Markdown body as plain text: no HTML, link, image,
    heading or table cell can start from them (the metadata keeps them as YAML strings)."""
    names = ["<img src=x onerror=alert(1)>.txt", "[click](javascript:alert(1)).txt", "a\n# Heading | cell.txt"]
    files = []
    for index, name in enumerate(names):
        folder = tmp_path / str(index)
        folder.mkdir()
        files.append(str(folder / name))
    results = dataset_results(DataArguments(train_files=files))
    info = model_run_info(saffu_config(), 10, results, None, "![x](http://e/x.png)\n# run")
    text = build_model_card(TrainingRunInfo.from_dict(info)).text
    assert "<img" not in text and "](javascript" not in text and "](http" not in text
    assert "\n# Heading" not in text and "\n# run" not in text and " | cell" not in text
    assert r"&lt;img src=x onerror=alert\(1\)&gt;.txt, \[click\]\(javascript:alert\(1\)\).txt" in text


@pytest.mark.parametrize(
    "warm_started, steps, says, never",
    [
        (False, None, "Its weights are not trained", ["warm start, computed", "backpropagation ("]),
        (True, 0, "explicit warm start, computed in closed form", ["refined", "not trained"]),
        (True, 12, "then refined with backpropagation (12 optimizer steps)", ["not trained"]),
        (False, 12, "trained with backpropagation (12 optimizer steps) from a random initialisation", ["closed"]),
    ],
)
def test_the_card_says_how_the_weights_were_set(warm_started, steps, says, never):
    config = saffu_config(warm_started=warm_started)
    info = model_run_info(config, 10, {"backprop_steps": steps}, "u/r", "run")
    card = build_model_card(TrainingRunInfo.from_dict(info))
    assert says in card.text and not any(text in card.text for text in never)
    assert ("warm-start" in card.data.tags) == warm_started


# -- generation ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A saved tiny SAFFU (a tokenizer from `train_tokenizer`, random weights with a filled bigram table), reloaded
    with the Auto classes: (model, tokenizer, directory)."""
    directory = tmp_path_factory.mktemp("tiny_lm")
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 5)) for i in range(200)]
    tokenizer = train_tokenizer(iter([texts]), 300)
    torch.manual_seed(0)
    model = SaffuForCausalLM(config_for_tokenizer(tokenizer, embed_bits=12, hidden_bits=12, windows=[1, 4]))
    fill_pivot_bigrams(model, 2000, scale=2.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory), directory


def test_the_saved_tokenizer_pads_left_and_batched_generation_equals_one_by_one(tiny_lm, caplog):
    model, tokenizer, _ = tiny_lm
    assert tokenizer.padding_side == "left"
    prompts = ["the cat", "a dog ran in the park with", "sun"]
    with caplog.at_level(logging.WARNING):
        batch = tokenizer(prompts, padding=True, return_tensors="pt")
        batched = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "right-padding" not in caplog.text
    width = batch.input_ids.shape[1]
    for row, prompt in enumerate(prompts):
        single = tokenizer(prompt, return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert batched[row, width:].tolist() == alone[0, single.input_ids.shape[1] :].tolist(), prompt


@pytest.mark.parametrize("mode", ["prompt_lookup_num_tokens", "assistant_model"])
def test_assisted_decoding_and_prompt_lookup_are_refused_in_one_line(tiny_lm, mode):
    model, tokenizer, _ = tiny_lm
    ids = tokenizer("the cat sat on the mat the cat", return_tensors="pt").input_ids
    option = {"prompt_lookup_num_tokens": 2} if mode == "prompt_lookup_num_tokens" else {"assistant_model": model}
    with pytest.raises(ValueError, match=r"^SAFFU does not support assisted decoding or prompt lookup") as error:
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id, **option)
    assert "\n" not in str(error.value)


# -- lm-evaluation-harness -----------------------------------------------------------------------------------


def test_lm_eval_loads_a_saved_saffu_without_remote_code_and_scores_as_the_model_does(tiny_lm):
    """lm_eval's HFLM, in a process that imported hf_saffu (what `python -m hf_saffu.lmeval` is), loads the
    directory without trust_remote_code and its loglikelihoods equal the model's own log-probabilities."""
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    model, tokenizer, directory = tiny_lm
    lm = huggingface.HFLM(pretrained=str(directory), backend="causal", device="cpu", batch_size=2)
    assert isinstance(lm.model, SaffuForCausalLM)
    pairs = [("the cat sat", " on the mat"), ("a dog", " ran in the park"), ("sun", " with")]
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]
    theirs = [logprob for logprob, _ in lm.loglikelihood(requests)]
    ours = []
    for context, continuation in pairs:
        start = len(tokenizer(context).input_ids)
        ids = torch.tensor([tokenizer(context + continuation).input_ids])
        with torch.no_grad():
            logprobs = model(ids).logits.log_softmax(-1)[0, start - 1 : -1]
        ours.append(logprobs.gather(1, ids[0, start:, None]).sum().item())
    assert theirs == pytest.approx(ours, abs=1e-4)


# -- PEFT ---------------------------------------------------------------------------------------------------


def test_lora_with_saffus_default_targets_trains_saves_reloads_and_merges(tiny_lm, tmp_path):
    """`LoraConfig(task_type="CAUSAL_LM")` without target_modules adapts the contexts' softmax layers; after a few
    steps the adapter, reloaded onto a fresh base, gives the trained logits, and so does the merged model."""
    peft = pytest.importorskip("peft")
    _, tokenizer, directory = tiny_lm
    torch.manual_seed(0)
    model = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(directory), peft.LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False)
    )
    adapted = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert adapted and all(name.endswith((".attention", ".hidden")) for name in adapted)
    ids = tokenizer(["the cat sat on the mat", "a dog ran in the park"], return_tensors="pt").input_ids
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(directory)
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(directory)(input_ids=ids).logits
        assert not torch.allclose(base_logits, trained, atol=1e-3)
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, rtol=0, atol=1e-5)
        merged = reloaded.merge_and_unload()
        assert isinstance(merged, SaffuForCausalLM)
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, rtol=0, atol=1e-4)


# -- export ---------------------------------------------------------------------------------------------------


def table_model(**overrides) -> SaffuForCausalLM:
    """A tiny SAFFU with the document context and filled bigram and trigram tables (the default channel)."""
    torch.manual_seed(0)
    config = saffu_config(**{"use_document_context": True, "pivot_bigrams": 500, "pivot_trigrams": 800} | overrides)
    model = SaffuForCausalLM(config).eval()
    fill_pivot_bigrams(model, 500)
    if model.pivot_trigrams is not None:
        fill_pivot_trigrams(model, 800)
    return model


def eos_rich_ids(seed: int) -> torch.Tensor:
    """(2, 12) token ids with documents ending (EOS) inside the rows."""
    ids = torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))
    ids[0, 3], ids[1, 7], ids[1, 8] = EOS, EOS, EOS
    return ids


def onnx_and_eager_logits(model, traced: torch.Tensor, ids: torch.Tensor, folder: Path):
    """The logits of `ids` from `export_onnx`'s program (traced on `traced`) run in onnxruntime, and the model's own."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    session = onnxruntime.InferenceSession(str(export_onnx(model, traced, folder / "saffu.onnx")))
    (logits,) = session.run(["logits"], {"input_ids": ids.numpy()})
    with torch.no_grad():
        return torch.from_numpy(logits), model(ids).logits


def test_onnx_export_with_the_bigram_table_runs_in_onnxruntime_with_the_eager_logits(tmp_path):
    model = table_model(pivot_trigrams=0)
    assert model.pivot_bigrams is not None and int(model.pivot_bigrams.rows[-1]) > 0
    exported, eager = onnx_and_eager_logits(model, eos_rich_ids(0), eos_rich_ids(1), tmp_path)
    torch.testing.assert_close(exported, eager, rtol=0, atol=1e-5)


def mixture_with_caches(ngram_order: int) -> SaffuForCausalLM:
    """The shipped configs' kind of model: the neural mixture with its attention and the caches of orders 1-2, whose
    candidates are scattered into ln p."""
    return cache_model(window=6, neural_mixture_cache_order=2, ngram_order=ngram_order, **ATTENTION).float().eval()


def repeating_ids(seed: int) -> torch.Tensor:
    """(2, 12) token ids from 4 tokens, so that the caches find earlier occurrences."""
    return torch.randint(2, 6, (2, 12), generator=torch.Generator().manual_seed(seed))


# what torch.export traces: the tables' lookups, and the neural mixture's caches with either table
EXPORTED = {
    "tables": (table_model, eos_rich_ids),
    "mixture with caches, trigram table": (lambda: mixture_with_caches(3), repeating_ids),
    "mixture with caches, bigram table": (lambda: mixture_with_caches(2), repeating_ids),
}


@pytest.mark.parametrize("kind", EXPORTED)
def test_torch_export_of_the_causal_lm_gives_the_eager_logits(kind):
    build, token_ids = EXPORTED[kind]
    model = build()
    program = torch.export.export(model, (token_ids(0),), kwargs={"use_cache": False})
    for seed in (1, 2):  # other token ids of the traced shape
        ids = token_ids(seed)
        with torch.no_grad():
            exported, eager = program.module()(ids, use_cache=False).logits, model(ids, use_cache=False).logits
        torch.testing.assert_close(exported, eager, rtol=0, atol=1e-6)


def test_onnx_export_of_a_neural_mixture_with_caches_runs_in_onnxruntime_with_the_eager_logits(tmp_path):
    model = mixture_with_caches(ngram_order=2)
    exported, eager = onnx_and_eager_logits(model, repeating_ids(0), repeating_ids(1), tmp_path)
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-4)


def test_onnx_export_of_a_model_with_the_trigram_table_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"pivot's trigram table \(800 entries\) cannot be exported to ONNX") as error:
        export_onnx(table_model(), eos_rich_ids(0), tmp_path / "saffu.onnx")
    assert "\n" not in str(error.value) and not (tmp_path / "saffu.onnx").exists()
