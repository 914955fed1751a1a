"""Publish and share: push, pull, remote code, revisions, offline reload, model card.

Every Hub client runs in a fresh subprocess pointed at the local server of ``tests/hub_server.py``
(``HF_ENDPOINT`` is read when huggingface_hub is imported); a socket guard in each subprocess
refuses any host other than 127.0.0.1. The pytest process computes the reference outputs of
the saved model directly from disk.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from factories import BLOCK_HF_SAFFU, REPO_ID, RUN_INFO, build_tokenizer, save_saffu, text_file
from huggingface_hub import HfApi, ModelCard
from transformers import PreTrainedTokenizerFast

import hf_saffu.hub as saffu_hub
from hf_saffu import SaffuConfig, SaffuForCausalLM
from hf_saffu.cli import main as cli_main
from hf_saffu.model_card import (
    NOT_MEASURED,
    RESULTS_FILE,
    TrainingRunInfo,
    build_model_card,
    describe_architecture,
    write_model_card,
)

API_REPO_ID = "tester/tiny-saffu-push-to-hub"
ROOT = Path(__file__).resolve().parents[1]

# Prepended to every client script: only loopback connections are possible.
NETWORK_GUARD = '''
import socket

_getaddrinfo = socket.getaddrinfo


def _loopback_only(host, *args, **kwargs):
    """Refuse to resolve anything but the local test hub."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise OSError(f"test network guard: connection to {host!r} refused")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_only
'''


def model_outputs(model, tokenizer, prompt="the cat sat on", new_tokens=6):
    """Logits of the prompt and greedy continuation tokens (shipped to the clients as source)."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    tokens = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    return {"logits": logits, "tokens": tokens}


def pipeline_text(model_id, trust_remote_code=False, prompt="the cat sat on", new_tokens=6):
    """Greedy text of ``pipeline("text-generation", model=model_id)`` (shipped to the clients as source)."""
    from transformers import pipeline

    generator = pipeline("text-generation", model=model_id, trust_remote_code=trust_remote_code)
    return generator(prompt, max_new_tokens=new_tokens, do_sample=False)[0]["generated_text"]


def run_client(script: str, env: dict[str, str], cwd: Path, *args: object) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh Python (guarded network, helper functions defined); it must exit 0."""
    helpers = inspect.getsource(model_outputs) + "\n\n" + inspect.getsource(pipeline_text)
    code = "import sys\n" + NETWORK_GUARD + "\n" + helpers + "\n" + textwrap.dedent(script)
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"client failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def client_env(hub, directory: Path) -> dict[str, str]:
    """The hub's client environment (HF_HOME under ``directory``) without PYTHONPATH."""
    env = hub.env(directory)
    env.pop("PYTHONPATH", None)
    return env


def dir_files(directory: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``directory``."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def copy_model_dir(source: Path, target: Path, remove: tuple[str, ...] = (), config: dict | None = None) -> Path:
    """Copy a model directory, removing files and updating config.json."""
    shutil.copytree(source, target)
    for name in remove:
        (target / name).unlink()
    if config is not None:
        path = target / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | config))
    return target


def cached_snapshot(hf_home: str, repo_id: str, sha: str) -> dict[str, bytes]:
    """Files of one revision in the huggingface_hub cache under ``hf_home``."""
    snapshot = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / sha
    return dir_files(snapshot)


def assert_same_outputs(got: dict, expected: dict, keys: tuple[str, ...] = ("logits", "tokens", "text")) -> None:
    """Logits bit-identical, generated tokens and pipeline text equal."""
    for key in keys:
        same = torch.equal(got[key], expected[key]) if key != "text" else got[key] == expected[key]
        assert same, f"{key} differs"


def local_outputs(directory: Path) -> dict:
    """Reference outputs of a saved directory, computed in this process."""
    model = SaffuForCausalLM.from_pretrained(directory).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    return model_outputs(model, tokenizer) | {"text": pipeline_text(str(directory))}


@pytest.fixture(scope="module")
def saffu_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two saved SAFFU model directories (different weights, same tokenizer)."""
    tokenizer = build_tokenizer()
    root = tmp_path_factory.mktemp("saffu")
    return save_saffu(root / "a", tokenizer, seed=0), save_saffu(root / "b", tokenizer, seed=1)


@pytest.fixture(scope="module")
def saffu_dir(saffu_dirs) -> Path:
    """The first saved SAFFU model directory."""
    return saffu_dirs[0]


@pytest.fixture(scope="module")
def reference(saffu_dir) -> dict:
    """Outputs of the first model loaded from disk."""
    return local_outputs(saffu_dir)


PUBLISH = """
import json
from hf_saffu.cli import main
from transformers import AutoModelForCausalLM, AutoTokenizer

cli_pushes, model_dir, api_repo_id = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
for argv in cli_pushes:
    main(argv)
AutoModelForCausalLM.from_pretrained(model_dir).push_to_hub(api_repo_id)
AutoTokenizer.from_pretrained(model_dir).push_to_hub(api_repo_id)
"""

PULL = """
import hf_saffu, torch
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM, AutoTokenizer

repo_id, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(repo_id)
result = model_outputs(model, AutoTokenizer.from_pretrained(repo_id))
result["text"] = pipeline_text(repo_id)
result["snapshot"] = snapshot_download(repo_id)
torch.save(result, out)
"""

OFFLINE = """
import hf_saffu, torch
from transformers import AutoModelForCausalLM, AutoTokenizer

repo_id, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(repo_id)
torch.save(model_outputs(model, AutoTokenizer.from_pretrained(repo_id)) | {"text": pipeline_text(repo_id)}, out)
"""


def test_push_pull_and_offline_reload_are_identical(hub, saffu_dir, reference, tmp_path):
    """``hf-saffu push`` stores the directory byte for byte (without checkpoints; a re-push deletes
    stale weight files; --revision creates a branch) and ``push_to_hub`` publishes weights, code
    and tokenizer; a fresh process pulls the same files, logits, tokens and pipeline text; after
    the server stops, HF_HUB_OFFLINE=1 reloads them from the cache."""
    env, work = client_env(hub, tmp_path), tmp_path / "work"
    stale = copy_model_dir(saffu_dir, tmp_path / "stale")
    (stale / "model-00002-of-00002.safetensors").write_bytes(b"stale shard")
    (stale / "checkpoint-10").mkdir()
    (stale / "checkpoint-10" / "optimizer.pt").write_bytes(b"training leftover")
    pushes = [
        ["push", str(stale), REPO_ID.split("/")[1], "--private"],  # the namespace defaults to the user
        ["push", str(saffu_dir), REPO_ID],
        ["push", str(saffu_dir), REPO_ID, "--revision", "dev"],
    ]
    run_client(
        PUBLISH, env | {"PYTHONPATH": str(ROOT)}, work, json.dumps(pushes), saffu_dir, API_REPO_ID
    )  # this checkout
    local = dir_files(saffu_dir)
    assert {"README.md", "model.safetensors", "modeling_saffu.py", "tokenizer.json"} <= set(local)
    assert hub.files(REPO_ID) == local, "the second push must replace the files and delete the stale shard"
    first_push = hub.files(REPO_ID, hub.commits(REPO_ID)[1])
    assert set(first_push) == set(local), "neither checkpoints nor a shard the model does not load are pushed"
    assert hub.files(REPO_ID, "dev") == local
    assert hub.is_private(REPO_ID)
    assert hub.repo_ids() == sorted([REPO_ID, API_REPO_ID])
    assert ("POST", "/api/validate-yaml") in hub.state.requests
    assert_push_to_hub_published(hub.files(API_REPO_ID), local)

    run_client(PULL, env, work, REPO_ID, tmp_path / "pulled.pt")
    pulled = torch.load(tmp_path / "pulled.pt")
    assert_same_outputs(pulled, reference)
    assert dir_files(Path(pulled["snapshot"])) == local
    assert cached_snapshot(env["HF_HOME"], REPO_ID, hub.branches(REPO_ID)["main"]) == local
    assert hub.state.unhandled == []

    hub.stop()
    run_client(OFFLINE, env | {"HF_HUB_OFFLINE": "1"}, work, REPO_ID, tmp_path / "off.pt")
    assert_same_outputs(torch.load(tmp_path / "off.pt"), reference)


def assert_push_to_hub_published(stored: dict[str, bytes], local: dict[str, bytes]) -> None:
    """``model.push_to_hub`` / ``tokenizer.push_to_hub`` stored weights, config with auto_map, the
    self-contained code, generation config and tokenizer."""
    for name in ("configuration_saffu.py", "modeling_saffu.py", "bit_cipher.py", "tokenizer.json"):
        assert stored[name] == local[name], name
    assert json.loads(stored["config.json"])["auto_map"] == json.loads(local["config.json"])["auto_map"]
    assert {"model.safetensors", "generation_config.json", "tokenizer_config.json"} <= set(stored)


PUBLISH_CARDS = """
from hf_saffu import ExplicitTrainer, ExplicitTrainingArguments
from hf_saffu.cli import main
from transformers import AutoModelForCausalLM

model_dir, trainer_dir, cli_repo, api_repo, trainer_repo = sys.argv[1:]
main(["push", model_dir, cli_repo])
AutoModelForCausalLM.from_pretrained(model_dir).push_to_hub(api_repo)
model = AutoModelForCausalLM.from_pretrained(trainer_dir)
args = ExplicitTrainingArguments(trainer_dir, hub_model_id=trainer_repo, report_to="none", use_cpu=True)
ExplicitTrainer(model=model, args=args).push_to_hub()
"""


def test_every_push_publishes_the_same_true_card(hub, saffu_dir, tmp_path):
    """``hf-saffu push``, ``model.push_to_hub`` (of the model loaded from the directory) and
    ``ExplicitTrainer.push_to_hub(hub_model_id=...)`` publish the same card, written from the directory: titled
    and loaded as the repo it is published to, with the results and training data of its all_results.json, and,
    for these untrained weights, no claim of a warm start or of backpropagation."""
    model_dir = copy_model_dir(saffu_dir, tmp_path / "local-folder-name")
    trainer_dir = copy_model_dir(saffu_dir, tmp_path / "trainer-output")
    repos = {"cli": "tester/cli-saffu", "api": "tester/api-saffu", "trainer": "tester/trainer-saffu"}
    # hub.env keeps PYTHONPATH: the client publishes with this checkout's hf_saffu
    run_client(PUBLISH_CARDS, hub.env(tmp_path), tmp_path / "work", model_dir, trainer_dir, *repos.values())

    cards = {kind: hub.files(repo_id)["README.md"].decode() for kind, repo_id in repos.items()}
    same = {
        card.replace(repos[kind], "REPO").replace(repos[kind].split("/")[1], "NAME") for kind, card in cards.items()
    }
    assert len(same) == 1, "one card for every path"
    for repo_id, text in ((repos[kind], card) for kind, card in cards.items()):
        card = ModelCard(text)
        assert "saffu" in card.data.tags and "warm-start" not in card.data.tags
        assert card.text.count(f'from_pretrained("{repo_id}"') == 4 and "<namespace>" not in card.text
        assert f"# {repo_id.split('/')[1]}\n" in card.text and "local-folder-name" not in card.text
        assert {r.dataset_split: r.metric_value for r in card.data.eval_results} == {
            "validation": 17.25,
            "test": 18.125,
        }
        assert card.data.datasets == [RUN_INFO["dataset_id"]] and "| Training data | Tiny test corpus |" in card.text
        assert (
            "| Training tokens | 4,096 |" in card.text
            and "| Final (after backpropagation) | 17.25 | 18.12 |" in card.text
        )
        assert "Its weights are not trained" in card.text
        assert "warm start, computed" not in card.text and "refined" not in card.text
    assert (model_dir / "README.md").read_bytes() == (saffu_dir / "README.md").read_bytes()  # the folder unchanged


def test_push_publishes_only_what_a_model_repo_holds(hub, saffu_dir, tmp_path):
    """``hf-saffu push`` publishes the config, the weights the model loads, the code, the tokenizer, the results
    and the card: no dotfiles, staging leftovers, checkpoints, logs, stray scripts or orphan shards."""
    model_dir = copy_model_dir(saffu_dir, tmp_path / "model")
    leftovers = [".env", ".tmpab12cd", "training_args.bin", "notes.py", "model-00002-of-00002.safetensors"]
    for name in leftovers:
        (model_dir / name).write_bytes(b"HF_TOKEN=hf_secret")
    for folder in ("checkpoint-3", "tmp-checkpoint-6", "runs", ".git"):
        (model_dir / folder).mkdir()
        (model_dir / folder / "optimizer.pt").write_bytes(b"leftover")
    run_client(PUSH_ONE, client_env(hub, tmp_path) | {"PYTHONPATH": str(ROOT)}, tmp_path / "w", model_dir, REPO_ID)
    published = hub.files(REPO_ID)
    assert published == dir_files(saffu_dir)  # what save_pretrained, the tokenizer and the training run wrote
    assert not any(b"hf_secret" in content for content in published.values())


def test_train_with_push_to_hub_publishes_the_finished_run_with_its_card(hub, tmp_path):
    """`hf-saffu train --push_to_hub true` pushes after the model, tokenizer, all_results.json and card are saved:
    the published card is the local one naming the repo, with the run's test perplexity and training data."""
    text_file(tmp_path / "train.txt", 60)
    text_file(tmp_path / "valid.txt", 10, seed=1)
    text_file(tmp_path / "test.txt", 10, seed=2)
    out, repo_id = tmp_path / "out", "tester/trained-saffu"
    argv = ["train", "--train_files", "train.txt", "--validation_files", "valid.txt", "--test_files", "test.txt"]
    argv += ["--tokenizer_vocab_size", "300", "--embed_bits", "12", "--hidden_bits", "12", "--windows", "1", "4"]
    argv += ["--block_size", "16", "--max_steps", "2", "--save_strategy", "no", "--report_to", "none"]
    argv += ["--use_cpu", "true", "--output_dir", str(out), "--push_to_hub", "true", "--hub_model_id", repo_id]
    run_client(PUSH_ONE.replace('"push", ', ""), hub.env(tmp_path), tmp_path, *argv)
    results = json.loads((out / RESULTS_FILE).read_text())
    published = hub.files(repo_id)
    assert {RESULTS_FILE, "tokenizer.json", "model.safetensors"} <= published.keys()
    card = published["README.md"].decode()
    local = (out / "README.md").read_text()
    title = ("# out\n\nout is", "# trained-saffu\n\ntrained-saffu is")
    assert card == local.replace("<namespace>/out", repo_id).replace(*title)
    assert f"| {results['test_perplexity']:,.2f} |" in card and "| Training data | local text files train.txt |" in card
    assert "then refined with backpropagation (2 optimizer steps)" in card


PUSH_ONE = """
from hf_saffu.cli import main

main(["push", *sys.argv[1:]])
"""


REMOTE_CODE = """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

repo_id, out = sys.argv[1], sys.argv[2]
try:
    import hf_saffu
except ModuleNotFoundError:
    pass
else:
    sys.exit("hf_saffu is importable in the remote-code client")
try:
    AutoModelForCausalLM.from_pretrained(repo_id)
except ValueError as err:
    refusal = str(err)
else:
    sys.exit("loaded SAFFU without the plugin and without trust_remote_code")
model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)
result = model_outputs(model, AutoTokenizer.from_pretrained(repo_id))
result |= {"text": pipeline_text(repo_id, trust_remote_code=True), "refusal": refusal}
result["module"] = type(model).__module__
torch.save(result, out)
"""


def test_trust_remote_code_without_plugin(hub, saffu_dir, reference, tmp_path):
    """A process that cannot import hf_saffu refuses to load without ``trust_remote_code`` and, with
    it, runs the code stored in the repo and gets identical logits, tokens and pipeline text."""
    hub.seed_dir(REPO_ID, saffu_dir)
    isolated = tmp_path / "isolated"  # a cwd without the repository on sys.path
    run_client(BLOCK_HF_SAFFU + REMOTE_CODE, client_env(hub, tmp_path), isolated, REPO_ID, tmp_path / "r.pt")
    remote = torch.load(tmp_path / "r.pt")
    assert "trust_remote_code" in remote["refusal"]
    assert remote["module"].startswith("transformers_modules.")
    assert_same_outputs(remote, reference)


PINNED = """
import hf_saffu, torch
from transformers import AutoModelForCausalLM, AutoTokenizer

repo_id, pinned, out = sys.argv[1], sys.argv[2], sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=pinned)
results = {
    revision: model_outputs(AutoModelForCausalLM.from_pretrained(repo_id, revision=revision), tokenizer)
    for revision in (pinned, "main")
}
torch.save(results, out)
"""


def test_revision_pinning_loads_the_pinned_commit(hub, saffu_dirs, reference, tmp_path):
    """After main moves on to other weights, ``revision=<sha>`` still loads the first commit."""
    first_dir, second_dir = saffu_dirs
    pinned = hub.seed_dir(REPO_ID, first_dir)
    hub.seed_dir(REPO_ID, second_dir)
    second = local_outputs(second_dir)
    assert not torch.equal(second["logits"], reference["logits"]), "the two models must differ"

    run_client(PINNED, client_env(hub, tmp_path), tmp_path, REPO_ID, pinned, tmp_path / "rev.pt")
    loaded = torch.load(tmp_path / "rev.pt")
    assert_same_outputs(loaded[pinned], reference, keys=("logits", "tokens"))
    assert_same_outputs(loaded["main"], second, keys=("logits", "tokens"))


@pytest.fixture
def local_hub_api(hub, monkeypatch):
    """Point hf_saffu.hub at the local hub inside this process (no environment variables needed)."""
    monkeypatch.setattr(saffu_hub, "HfApi", lambda: HfApi(endpoint=hub.endpoint, token=hub.token))


@pytest.mark.parametrize(
    ("case", "repo_id", "revision", "expected"),
    [
        ("missing_dir", REPO_ID, None, "is not a directory"),
        ("no_config", REPO_ID, None, "config.json is missing"),
        ("gpt2_config", REPO_ID, None, "model_type 'gpt2'"),
        ("no_auto_map", REPO_ID, None, "no auto_map entry for AutoConfig, AutoModelForCausalLM"),
        ("no_code", REPO_ID, None, "lacks the code files named in auto_map: modeling_saffu.py"),
        ("no_weights", REPO_ID, None, "has no weights"),
        ("no_tokenizer", REPO_ID, None, "has no tokenizer"),
        ("valid", "not a valid id!", None, "invalid repo id 'not a valid id!'"),
        ("valid", "a/b/c", None, "invalid repo id 'a/b/c'"),
        ("valid", "tester/" + "x" * 97, None, "invalid repo id"),
        ("valid", REPO_ID, "0" * 40, "--revision must name a branch"),
    ],
)
@pytest.mark.usefixtures("local_hub_api")
def test_push_rejects_bad_input_and_uploads_nothing(
    hub, saffu_dir, tmp_path, capsys, case, repo_id, revision, expected
):
    """An incomplete or non-SAFFU directory, an invalid repo id or a commit sha as branch gives a
    clear error (exit status 2 from ``hf-saffu push``) and the hub receives no request at all."""
    model_dir = {
        "missing_dir": lambda: tmp_path / "absent",
        "no_config": lambda: copy_model_dir(saffu_dir, tmp_path / "m", remove=("config.json",)),
        "gpt2_config": lambda: copy_model_dir(saffu_dir, tmp_path / "m", config={"model_type": "gpt2"}),
        "no_auto_map": lambda: copy_model_dir(saffu_dir, tmp_path / "m", config={"auto_map": {}}),
        "no_code": lambda: copy_model_dir(saffu_dir, tmp_path / "m", remove=("modeling_saffu.py",)),
        "no_weights": lambda: copy_model_dir(saffu_dir, tmp_path / "m", remove=("model.safetensors",)),
        "no_tokenizer": lambda: copy_model_dir(saffu_dir, tmp_path / "m", remove=("tokenizer.json",)),
        "valid": lambda: saffu_dir,
    }[case]()
    with pytest.raises(saffu_hub.PushError, match=re.escape(expected)):
        saffu_hub.push_model_dir(model_dir, repo_id, revision=revision)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["push", str(model_dir), repo_id, *(["--revision", revision] if revision else [])])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert hub.state.requests == []
    assert hub.repo_ids() == []


def test_push_reports_a_hub_refusal(hub, saffu_dir, capsys, monkeypatch):
    """A Hub error (here: a wrong token) ends ``hf-saffu push`` with status 2 and the Hub's message
    (tests/test_bad_input.py: one line, for 401 and 413)."""
    monkeypatch.setattr(saffu_hub, "HfApi", lambda: HfApi(endpoint=hub.endpoint, token="hf_wrong_token"))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["push", str(saffu_dir), REPO_ID])
    assert exit_info.value.code == 2
    assert f"refused the push to {REPO_ID}: 401 Unauthorized" in capsys.readouterr().err
    assert hub.repo_ids() == []


VALIDATE_CARD = """
from huggingface_hub import ModelCard

for path in sys.argv[1:]:
    try:
        ModelCard.load(path).validate()
    except ValueError as err:
        print(f"{path}: invalid: {err}")
    else:
        print(f"{path}: valid")
"""


def test_model_card_metadata_validates_and_carries_metrics(hub, saffu_dir, tmp_path):
    """The written card round-trips through ModelCardData with the metrics, passes the hub's
    validate-yaml, and a card whose model-index lost a metric value does not."""
    card = ModelCard.load(saffu_dir / "README.md")
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", "text-generation", "mit")
    assert {"saffu", "explicit-optimization"} <= set(data.tags)
    assert data.datasets == [RUN_INFO["dataset_id"]]
    metrics = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert metrics == {("validation", "perplexity"): 17.25, ("test", "perplexity"): 18.125}
    architecture = describe_architecture(SaffuConfig.from_pretrained(saffu_dir))
    for text in (architecture, "4,096", "41.50", "17.25", "0.8 s", "12.5 s", f'"{REPO_ID}", trust_remote_code=True'):
        assert text in card.text, text
    assert f"{SaffuForCausalLM.from_pretrained(saffu_dir).num_parameters():,}" in card.text

    broken = tmp_path / "broken.md"
    broken.write_text(card.content.replace("pipeline_tag: text-generation", "pipeline_tag: poetry"))
    result = run_client(VALIDATE_CARD, client_env(hub, tmp_path), tmp_path, saffu_dir / "README.md", broken)
    valid, invalid = result.stdout.split(f"{broken}: ")
    assert valid == f"{saffu_dir / 'README.md'}: valid\n"
    assert invalid.startswith('invalid: "pipeline_tag" must be one of')


def test_the_cards_remote_code_example_runs_without_a_question(saffu_dir, tmp_path):
    """The card's example for a machine without hf_saffu loads model and tokenizer and generates with stdin
    closed: no "run the custom code? [y/N]" question and no model-type warning."""
    card = build_model_card(
        TrainingRunInfo.from_dict(
            RUN_INFO | {"model_name": "m", "architecture": "SAFFU", "num_parameters": 1, "repo_id": REPO_ID}
        )
    )
    example = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)[1]
    assert "import hf_saffu" not in example
    example = example.replace(f'"{REPO_ID}"', repr(str(saffu_dir)))
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + BLOCK_HF_SAFFU + example],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("Once upon a time")
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    assert "You are using a model of type" not in result.stderr


def test_model_card_renders_missing_and_diverged_metrics(tmp_path):
    """Without optional metrics the card says "not measured", has no model-index, and a
    non-finite perplexity is reported as diverged instead of entering the metadata."""
    required = {"architecture": "SAFFU", "num_parameters": 1234, "dataset_name": "Tiny", "train_tokens": 10}
    card = write_model_card(tmp_path / "my-model", required | {"final_perplexity": float("inf")})
    assert card.text.count(NOT_MEASURED) == 4
    assert "diverged (inf)" in card.text
    assert "# my-model" in card.text
    reloaded = ModelCard.load(tmp_path / "my-model" / "README.md").data
    assert reloaded.eval_results is None and reloaded.datasets is None
    assert "model-index" not in card.content


def test_training_run_info_names_unknown_and_missing_keys():
    """Typos and missing required keys fail with the key names."""
    with pytest.raises(ValueError, match="unknown model card keys \\['final_ppl'\\]"):
        TrainingRunInfo.from_dict({"final_ppl": 3.0})
    with pytest.raises(ValueError, match="missing required keys \\['architecture', 'num_parameters'"):
        TrainingRunInfo.from_dict({"model_name": "m"})
    with pytest.raises(ValueError, match="'train_tokens' must be a non-negative integer"):
        TrainingRunInfo.from_dict(
            {"model_name": "m", "architecture": "a", "num_parameters": 1, "dataset_name": "d", "train_tokens": 1.5}
        )


def http(method: str, url: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict, bytes]:
    """One request to the local hub with urllib: (status, headers, body)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.mark.parametrize(
    ("path", "error_code"),
    [
        ("tester/repo/resolve/main/missing.json", "EntryNotFound"),
        ("tester/nope/resolve/main/config.json", "RepoNotFound"),
        ("tester/repo/resolve/no-such-branch/config.json", "RevisionNotFound"),
        ("api/models/tester/nope", "RepoNotFound"),
        ("api/models/tester/repo/revision/" + "0" * 40, "RevisionNotFound"),
        ("api/models/tester/repo/tree/main/missing-folder", "EntryNotFound"),
    ],
)
def test_hub_answers_404_with_the_hub_error_code(hub, path, error_code):
    """Missing files, repos and revisions answer 404 with the header huggingface_hub dispatches on."""
    hub.seed("tester/repo", {"config.json": b"{}"})
    for method in ("HEAD", "GET"):
        status, headers, _ = http(method, f"{hub.endpoint}/{path}")
        assert (status, headers.get("X-Error-Code")) == (404, error_code), method


def test_hub_serves_files_and_guards_writes(hub):
    """Files come back byte for byte with ETag, X-Repo-Commit and Content-Length; whoami and repo
    creation need the token, and creating an existing repo answers 409."""
    payload = bytes(range(256)) * 3
    sha = hub.seed("tester/repo", {"sub/blob.bin": payload})
    status, headers, body = http("GET", f"{hub.endpoint}/tester/repo/resolve/{sha}/sub/blob.bin")
    assert (status, body, headers["X-Repo-Commit"], int(headers["Content-Length"])) == (200, payload, sha, 768)
    assert headers["ETag"].strip('"')
    assert http("GET", f"{hub.endpoint}/api/whoami-v2")[0] == 401
    assert json.loads(http("GET", f"{hub.endpoint}/api/whoami-v2", token=hub.token)[2])["name"] == hub.user
    create = {"name": "repo", "organization": "tester"}
    assert http("POST", f"{hub.endpoint}/api/repos/create", body=create)[0] == 401
    assert http("POST", f"{hub.endpoint}/api/repos/create", token=hub.token, body=create)[0] == 409


def test_hub_lists_trees_and_model_info(hub):
    """Tree listings (flat, recursive, sub-folder) and model info (sha, siblings) per revision."""
    first = hub.seed("tester/repo", {"a.txt": b"a"})
    second = hub.seed("tester/repo", {"a.txt": b"a", "sub/b.txt": b"b", "sub/deep/c.txt": b"c"})

    def listing(query: str) -> list[tuple[str, str]]:
        body = http("GET", f"{hub.endpoint}/api/models/tester/repo/tree/{query}")[2]
        return [(entry["type"], entry["path"]) for entry in json.loads(body)]

    assert listing("main") == [("directory", "sub"), ("file", "a.txt")]
    assert listing("main/sub") == [("directory", "sub/deep"), ("file", "sub/b.txt")]
    assert listing("main?recursive=true") == [
        ("directory", "sub"),
        ("directory", "sub/deep"),
        ("file", "a.txt"),
        ("file", "sub/b.txt"),
        ("file", "sub/deep/c.txt"),
    ]
    assert listing(first) == [("file", "a.txt")]
    for path, sha, count in (("", second, 3), (f"/revision/{first}", first, 1)):
        info = json.loads(http("GET", f"{hub.endpoint}/api/models/tester/repo{path}")[2])
        assert (info["sha"], len(info["siblings"])) == (sha, count)
