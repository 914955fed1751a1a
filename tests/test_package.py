"""The top-level API: what `import hf_saffu` provides and what it leaves alone."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import hf_saffu
from transformers import AutoConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from hf_saffu import (
    SaffuConfig, SaffuForCausalLM, SaffuModel, ExplicitTrainer, ExplicitTrainingArguments, explicit_warm_start,
)
print(json.dumps({
    "cogo_registered": "cogo" in CONFIG_MAPPING,
    "saffu_registered": "saffu" in CONFIG_MAPPING,
    "modules": sorted(m for m in sys.modules if m.startswith("hf_saffu.experimental")),
    "trainer": ExplicitTrainer.__module__,
    "all": sorted(hf_saffu.__all__),
}))
"""


def run_probe(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_registers_saffu_only_and_exports_the_api():
    probe = run_probe(PROBE)
    assert probe["saffu_registered"]
    assert not probe["cogo_registered"]
    assert probe["modules"] == []
    assert probe["trainer"] == "hf_saffu.trainer"
    assert {
        "SaffuConfig",
        "SaffuForCausalLM",
        "SaffuModel",
        "ExplicitTrainer",
        "ExplicitTrainingArguments",
        "explicit_warm_start",
    } <= set(probe["all"])


def test_cogo_registers_its_auto_classes_when_imported():
    probe = run_probe(
        "import json, hf_saffu.experimental.cogo\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "print(json.dumps({'cogo': 'cogo' in CONFIG_MAPPING}))"
    )
    assert probe == {"cogo": True}


HUB_FILES = ("modeling_saffu.py", "configuration_saffu.py", "bit_cipher.py")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it; relative imports as '.name'."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add("." * node.level + (node.module or ""))
    return modules


def test_the_hub_files_say_they_ship_and_import_only_each_other():
    """What `register_for_auto_class` copies to the Hub: the standard library, torch, transformers and the other
    Hub files; the one exception is the guarded model-card import of the push_to_hub upload hook."""
    allowed = {"torch", "transformers", *sys.stdlib_module_names}
    hub_modules = {"." + name.removesuffix(".py") for name in HUB_FILES}
    for name in HUB_FILES:
        path = REPO / "hf_saffu" / name
        assert "ships to the Hub" in (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""), name
        others = {
            module
            for module in imported_modules(path)
            if module not in hub_modules and module.split(".")[0] not in allowed
        }
        assert others == ({"hf_saffu.model_card"} if name == "modeling_saffu.py" else set()), name
