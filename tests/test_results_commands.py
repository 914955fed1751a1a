"""Every command a results file cites still parses (issue 23). Read from benchmarks/*.md, README.md, docs/DESIGN.md,
model_cards/, the model card template, configs/*.yaml's comments and the "command" of each benchmarks/**/*.json:
the quoted `python -m training.NAME`, `hf-saffu ...`, `python -m hf_saffu.lmeval ...`, `python benchmarks/...py`
and `benchmarks/beyond/*.sh` commands, and `hf-saffu train` flags quoted alone (a backticked `--snake_case ...`
span). Each is parsed by the code it names, without training: the check stops at the seam where parsing is over.

- `python -m training.NAME ARGS`: `main(ARGS)` with `start_run` (called right after parsing, `training.harness`)
  raising `Parsed` (cogo_experiment, which has no start_run, at `run_constructions`, its first step).
- `hf-saffu CMD ARGS`: the CLI's parser, and for `train` `hf_saffu.train.parse_arguments` (the dataclasses).
- `python -m hf_saffu.lmeval ARGS`: lm_eval's parser, up to `HarnessCLI.execute` (skipped without the lmeval extra).
- `python benchmarks/X.py ARGS`: the script run with those arguments until it loads data, a tokenizer or a model.
- `benchmarks/beyond/X.sh ARGS`: the script run by bash with a stand-in `hf-saffu` that records its arguments,
  which are then parsed as above.

Placeholders (BROWN, TINY_SHAKESPEARE, MODEL_DIR, FILE, N, ...) become tiny files and folders under tmp_path;
`[optional parts]` are dropped, and `...` after a flag is a value. A quoted fragment is completed as little as
parsing needs, so its flags are still checked: placeholders for the positionals it leaves out (`hf-saffu evaluate
--data FILE`), configs/shakespeare.yaml for an `hf-saffu train` without a config, `--train_files FILE` for one that
names no data (`hf-saffu train configs/brown.yaml`, whose files are given on the command line).
"""

import importlib
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import hf_saffu.data
import training.harness
from hf_saffu.cli import build_parser
from hf_saffu.errors import UsageError
from hf_saffu.modeling_saffu import SaffuForCausalLM
from hf_saffu.train import argument_parser, parse_arguments
from tests.factories import text_file

REPO = Path(__file__).resolve().parents[1]
RESULTS_FILES = [
    *sorted((REPO / "benchmarks").glob("*.md")),
    REPO / "README.md",
    REPO / "docs" / "DESIGN.md",
    *sorted((REPO / "model_cards").glob("*.md")),
    REPO / "hf_saffu" / "templates" / "model_card.md",
    *sorted((REPO / "configs").glob("*.yaml")),
    *sorted((REPO / "benchmarks").rglob("*.json")),  # each run's "command"
]
COMMAND = re.compile(
    r"(python -m training\.(?!NAME\b)|hf-saffu\s|python -m hf_saffu\.lmeval\s|python benchmarks/"
    r"|benchmarks/beyond/\w+\.sh)"
)
TRAIN_FLAGS = re.compile(r"--[a-z]+_[a-z_]+")  # hf-saffu train's spelling; training/ scripts use --kebab-case
OTHER_TOOLS_FLAGS = {"--multi_gpu"}  # accelerate launch's, quoted beside `-m hf_saffu.cli train`
PARSE_SEAMS = {"training.cogo_experiment": "run_constructions"}  # default: start_run


class Parsed(Exception):
    """Raised at the seam: the arguments were parsed."""


def reached_seam(*args, **kwargs):
    raise Parsed


# -- reading the commands ------------------------------------------------------------------------------


def code_texts(path: Path) -> list[str]:
    """The code a results file quotes: fenced and indented lines (continuations joined), backticked spans and, in
    a YAML file's comments, a bare `python -m training.NAME`."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return [value for key, value in json_items(json.loads(text)) if key == "command"]
    if path.suffix == ".yaml":
        text = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
        bare = re.findall(r"python -m training\.\w+", re.sub(r"`[^`]*`", "", text))
    else:
        bare = []
    fences = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    indented = "\n".join(line for line in prose.splitlines() if line.startswith("    ") and line.strip())
    blocks = [line for block in [*fences, indented] for line in block.replace("\\\n", " ").splitlines()]
    return [" ".join(span.split()) for span in [*blocks, *re.findall(r"`([^`]+)`", prose), *bare]]


def json_items(value) -> list[tuple[str, object]]:
    """Every (key, value) pair of a JSON document, at any depth."""
    if isinstance(value, list):
        return [item for element in value for item in json_items(element)]
    if isinstance(value, dict):
        return [*value.items(), *(item for element in value.values() for item in json_items(element))]
    return []


def command_of(code: str) -> str | None:
    """`code` as a command this test checks (env assignments, `.venv/bin/`, `nice` and a launcher before
    `-m hf_saffu.cli` removed), or None."""
    code = re.sub(r"^(\w+=\S*\s+)*(nice -n \d+\s+)?", "", code).replace(".venv/bin/", "")
    code = re.sub(r"^(torchrun|accelerate launch|python)\b.*?-m hf_saffu\.cli\b", "hf-saffu", code)
    return code if COMMAND.match(code) else None


def train_flags_of(code: str) -> str | None:
    """`code` when it is a span of `hf-saffu train` flags, else None."""
    return code if TRAIN_FLAGS.match(code) else None


def cited(kind: str) -> list[tuple[str, str]]:
    """(file, text) of every quoted command (kind "command") or `hf-saffu train` flag span (kind "flags")."""
    pick = command_of if kind == "command" else train_flags_of
    found = {}
    for path in RESULTS_FILES:
        for code in code_texts(path):
            if command := pick(code):
                found.setdefault(command, str(path.relative_to(REPO)))
    return sorted((where, text) for text, where in found.items())


@pytest.fixture(autouse=True)
def from_the_repository_root(monkeypatch):
    """The cited commands run from the repository root (configs/brown.yaml, benchmarks/...)."""
    monkeypatch.chdir(REPO)


# -- placeholders ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """Placeholder -> a tiny stand-in: data folders with train/validation/test.txt, a text file, names."""
    root = tmp_path_factory.mktemp("cited")
    folders = {}
    for name in ("BROWN", "MIXED", "TINY_SHAKESPEARE", "BROWN_DIR"):
        folder = root / name.lower()
        folder.mkdir()
        for split in ("train", "validation", "test", "input"):
            text_file(folder / f"{split}.txt", lines=8)
        folders[name] = str(folder)
    file = text_file(root / "file.txt", lines=8)
    models = {name: str(root / name.lower()) for name in ("MODEL_DIR", "MODEL", "DIR", "WARM")}
    words = {"FILE": file, "N": "2", "NAME": "cited", "REPO_ID": "user/repo", "CONFIG.yaml": "configs/brown.yaml"}
    return {**folders, **models, **words, "COMMAND": "fetch-corpus", "FLAGS": ""}


def argv_of(command: str, places: dict[str, str]) -> list[str]:
    """The arguments of a quoted command, placeholders replaced and optional `[...]` parts dropped."""
    command = re.sub(r"\s*\[[^\]]*\]", "", command)
    names = "|".join(re.escape(name) for name in sorted(places, key=len, reverse=True))
    command = re.sub(rf"(?<![\w.$/-])\$?({names})(?![\w.])", lambda m: places[m.group(1)], command)
    argv = []
    for word in shlex.split(command):
        if word == "...":
            if argv and argv[-1].startswith("--"):
                argv.append(places["FILE"])  # `--train_files ...`: a value
            continue
        argv.append(word)
    return argv


# -- parsing each kind at its seam ------------------------------------------------------------------------


def parse_training_script(argv: list[str], monkeypatch) -> None:
    """`python -m training.NAME ARGS`: main(ARGS) up to its seam."""
    name = argv[2]
    module = importlib.import_module(name)
    seam = PARSE_SEAMS.get(name, "start_run")
    monkeypatch.setattr(module if hasattr(module, seam) else training.harness, seam, reached_seam)
    with pytest.raises(Parsed):
        module.main(argv[3:])


def parse_cli(argv: list[str], places: dict[str, str]) -> None:
    """`hf-saffu ARGS` with the CLI's parser (`train`: the three dataclasses too)."""
    argv = argv[1:]
    if argv[:1] == ["--debug"]:
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:  # a fragment without its positionals: placeholders for them
        missing = re.match(r"the following arguments are required: ([\w, -]+?)(?: \(see --help\))?$", str(error))
        if not missing:
            raise
        names = missing[1].split(", ")
        stand_ins = [
            places["REPO_ID"] if name == "repo_id" else places["MODEL_DIR"] for name in names if name[0] != "-"
        ]
        options = [word for name in names if name[0] == "-" for word in (name, places["FILE"])]
        args = build_parser().parse_args(argv[:1] + stand_ins + argv[1:] + options)
    if args.command == "train":
        parse_train([args.config or "configs/shakespeare.yaml", *args.flags], places)


def parse_train(argv: list[str], places: dict[str, str]) -> None:
    """`hf-saffu train ARGS` into the three dataclasses; a fragment naming no data (`hf-saffu train
    configs/brown.yaml`, whose data are given on the command line) gets `--train_files FILE`."""
    try:
        parse_arguments(argv)
    except ValueError as error:
        if "give dataset_name" not in str(error):
            raise
        parse_arguments([*argv, "--train_files", places["FILE"]])


def parse_lmeval(argv: list[str], monkeypatch) -> None:
    """`python -m hf_saffu.lmeval ARGS`: lm_eval's command line (the `lmeval` extra) until it runs."""
    harness_cli = pytest.importorskip("lm_eval._cli", reason="the lmeval extra (lm_eval >= 0.4.10's CLI)")
    monkeypatch.setattr(harness_cli.HarnessCLI, "execute", reached_seam)
    monkeypatch.setattr(sys, "argv", ["python"])
    with pytest.raises(Parsed):
        importlib.import_module("hf_saffu.lmeval").main(argv[3:])


def parse_benchmark_script(argv: list[str], monkeypatch) -> None:
    """`python benchmarks/X.py ARGS`: the script run until it reads data, a tokenizer or a model."""
    loaders = [
        (hf_saffu.data, "load_text_datasets"),
        (training.harness, "load_data"),
        (AutoTokenizer, "from_pretrained"),
    ]
    for owner, name in loaders:
        monkeypatch.setattr(owner, name, reached_seam)
    monkeypatch.setattr(SaffuForCausalLM, "from_pretrained", reached_seam)
    monkeypatch.setattr(sys, "argv", argv[1:])
    with pytest.raises(Parsed):
        runpy.run_path(str(REPO / argv[1]), run_name="__main__")


def parse_shell_script(argv: list[str], places: dict[str, str], tmp_path: Path) -> None:
    """`benchmarks/beyond/X.sh ARGS`: run by bash with a stand-in `hf-saffu` that writes its arguments (one a
    line) to a file; then those are parsed as an `hf-saffu` command."""
    script = (REPO / argv[0]).read_text()
    assert "hf-saffu " in script and "python" not in script, f"{argv[0]} must run hf-saffu (this test runs it)"
    bin_dir, received = tmp_path / "bin", tmp_path / "received"
    bin_dir.mkdir()
    stand_in = bin_dir / "hf-saffu"
    stand_in.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {shlex.quote(str(received))}\n')
    stand_in.chmod(0o755)
    environment = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "BROWN": places["BROWN"],
        "RUNS": str(tmp_path / "runs"),
    }
    subprocess.run(["bash", *argv], cwd=REPO, env=environment, check=True)
    assert received.is_file(), f"{argv[0]} did not run hf-saffu"
    parse_cli(["hf-saffu", *received.read_text().splitlines()], places)


@pytest.mark.parametrize("where, command", cited("command"))
def test_cited_command_parses(where, command, places, monkeypatch, tmp_path):
    argv = argv_of(command, places)
    if argv[:3] == ["python", "-m", "hf_saffu.lmeval"]:
        parse_lmeval(argv, monkeypatch)
    elif argv[:2] == ["python", "-m"]:
        parse_training_script(argv, monkeypatch)
    elif argv[0] == "hf-saffu":
        parse_cli(argv, places)
    elif argv[0] == "python":
        parse_benchmark_script(argv, monkeypatch)
    else:
        parse_shell_script(argv, places, tmp_path)


@pytest.mark.parametrize("where, flags", cited("flags"))
def test_cited_train_flags_exist(where, flags, places):
    """A quoted `--snake_case ...` span names hf-saffu train's flags (with its values when it gives them)."""
    known = argument_parser()._option_string_actions
    names = [word for word in flags.split() if word.startswith("--")]
    assert [name for name in names if name not in known and name not in OTHER_TOOLS_FLAGS] == []
    if not set(names) & OTHER_TOOLS_FLAGS and all(len(words.split()) > 1 for words in re.split(r"\s(?=--)", flags)):
        parse_train(["configs/brown.yaml", *argv_of(flags, places)], places)


@pytest.mark.parametrize("script", sorted(path.name for path in (REPO / "benchmarks" / "beyond").glob("*.sh")))
def test_every_benchmark_shell_script_parses(script, places, tmp_path):
    """Each benchmarks/beyond/*.sh (some cited only by name, with a results row's flags) runs hf-saffu with
    arguments it accepts."""
    parse_shell_script([f"benchmarks/beyond/{script}", "NAME"], places, tmp_path)


def test_cited_commands_are_found():
    """The extraction finds each kind (a broken regex would otherwise pass by finding nothing)."""
    commands = [command for _, command in cited("command")]
    for start in ("python -m training.", "hf-saffu train", "hf-saffu evaluate", "python benchmarks/", "benchmarks/"):
        assert any(command.startswith(start) for command in commands), start
    assert cited("flags")


def training_scripts() -> list[str]:
    return sorted(
        f"training.{path.stem}" for path in (REPO / "training").glob("*.py") if "def main(" in path.read_text()
    )


@pytest.mark.parametrize("name", training_scripts())
def test_every_training_script_has_the_seam(name, monkeypatch):
    """The seam comes after parsing in every script: a wrong flag stops before it, no flags reach it."""
    with pytest.raises(SystemExit) as exit_info:
        parse_training_script(["python", "-m", name, "--no-such-flag"], monkeypatch)
    assert exit_info.value.code == 2
    parse_training_script(["python", "-m", name], monkeypatch)


def test_a_misspelt_flag_fails(places, monkeypatch, tmp_path):
    """Each kind of check refuses a flag the code does not have (argparse takes a flag's unique prefix, so
    these are longer than or unlike the real ones)."""
    with pytest.raises(SystemExit):
        parse_training_script(["python", "-m", "training.long_budget", "--budget-cpu-secs", "1"], monkeypatch)
    with pytest.raises(ValueError, match="ngram_orders"):
        parse_cli(["hf-saffu", "train", "configs/brown.yaml", "--ngram_orders", "3"], places)
    with pytest.raises(UsageError, match="minimal_pairs"):
        parse_cli(["hf-saffu", "evaluate", "--minimal_pairs", "x"], places)
    with pytest.raises(IndexError):  # prof.py MODEL_DIR BROWN_DIR
        parse_benchmark_script(["python", "benchmarks/beyond/prof.py", places["MODEL_DIR"]], monkeypatch)
    with pytest.raises(ValueError, match="neural_mixture_dims"):
        parse_shell_script(["benchmarks/beyond/mixture_run.sh", "x", "--neural_mixture_dims", "2"], places, tmp_path)


def test_a_recorded_command_line_runs_as_written(monkeypatch):
    """The harness writes a script's arguments shell-quoted (the `- command:` of its results file): a --note with
    spaces, parentheses and an apostrophe is read back as the one argument it was."""
    note = "Note (the lead's): 300 CPU-s"
    monkeypatch.setattr(training.harness, "_CALLED_AS", [])
    monkeypatch.setattr(sys, "argv", [str(REPO / "training" / "scale_quality.py"), "--report", "--note", note])
    written = training.harness.command_line()
    assert shlex.split(written) == ["python", "-m", "training.scale_quality", "--report", "--note", note]
