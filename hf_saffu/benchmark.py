"""`hf-saffu benchmark`: runs the benchmark scripts of a source checkout (training/*.py).

The scripts live in the repository, not in the package; this module only finds and runs them:

    hf-saffu benchmark [--quick] [--data-efficiency] [...]   # training/benchmark.py
    hf-saffu benchmark ablate [--limit N] [...]               # training/ablate.py
    hf-saffu benchmark generation [--quick]                   # training/generation_benchmark.py
"""

import runpy
import sys
from pathlib import Path

TRAINING_DIR = Path(__file__).resolve().parents[1] / "training"
SCRIPTS = {"ablate": "ablate.py", "generation": "generation_benchmark.py"}


def add_benchmark_subcommand(subparsers) -> None:
    """List `benchmark` in `hf-saffu --help`; `main` hands `hf-saffu benchmark ...` to `run_benchmark` before
    parsing (like `train`), so the script's own flags pass through untouched."""
    subparsers.add_parser(
        "benchmark", help="Brown benchmarks: the arms (default), 'ablate' or 'generation'", add_help=False
    )


def run_benchmark(argv: list[str]) -> None:
    """Run training/benchmark.py (or ablate.py / generation_benchmark.py when argv starts with their name)."""
    script = SCRIPTS.get(argv[0], "benchmark.py") if argv else "benchmark.py"
    arguments = argv[1:] if argv and argv[0] in SCRIPTS else argv
    path = TRAINING_DIR / script
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `hf-saffu benchmark` needs a source checkout of hf_saffu")
    sys.path.insert(0, str(TRAINING_DIR))
    sys.argv = [str(path), *arguments]
    runpy.run_path(str(path), run_name="__main__")
