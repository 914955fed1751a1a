"""training/scale_quality.py and training/scale_distributed.py: sources, subsets and the --quick paths end to end."""

import json
import random
from pathlib import Path

import pytest
from factories import benchmark_recipe

from training import harness, scale_distributed, scale_quality

WORDS = "the cat dog sat ran on under a mat log red big small quickly slowly".split()
TINY_RECIPE = {"pivot_bigrams": 512, "pivot_trigrams": 1024, "learning_rate": 0.001}  # factories.benchmark_recipe


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; step_clock too, where a test takes it


def documents(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(count)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a mixed-like folder, a Brown folder whose validation holds a third of its validation lines, a config).
    Validation: lines 0, 3, ... capitalised (other), 1, 4, ... Brown's, 2, 5, ... lower-cased (movie_reviews)."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "mixed").mkdir()
    (root / "brown").mkdir()
    for split, count, seed in (("train", 300, 0), ("validation", 30, 1), ("test", 30, 2)):
        lines = documents(count, seed)
        if split == "validation":
            lines = [line.capitalize() if i % 3 != 2 else line for i, line in enumerate(lines)]
            (root / "brown" / "validation.txt").write_text("\n".join(lines[1::3]) + "\n")
        (root / "mixed" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root / "mixed", root / "brown", benchmark_recipe(root / "tiny.yaml", **TINY_RECIPE)


def test_sources_of_the_validation_documents(mixed):
    data_dir, brown_dir, _ = mixed
    by_source = scale_quality.source_documents(data_dir, brown_dir)
    assert {source: len(lines) for source, lines in by_source.items()} == {
        "brown": 10,
        "movie_reviews": 10,
        "other": 10,
    }
    assert by_source["brown"] == (brown_dir / "validation.txt").read_text().splitlines()
    assert all(line == line.lower() for line in by_source["movie_reviews"])


def test_the_subset_holds_about_the_tokens_asked_for(mixed):
    data_dir, brown_dir, config = mixed
    recipe = harness.read_config(config)
    tokenizer, data = harness.load_data(data_dir, recipe.vocab_size, recipe.block_size)
    train = data["train"]
    subset = scale_quality.blocks_with_tokens(train, 1000, seed=0)
    real = subset[:]["attention_mask"].sum(dim=1)
    assert 1000 <= int(real.sum()) < 1000 + recipe.block_size and len(subset) < len(train)
    assert scale_quality.blocks_with_tokens(train, 1000, seed=0)[:]["input_ids"].equal(subset[:]["input_ids"])
    assert not scale_quality.blocks_with_tokens(train, 1000, seed=1)[:]["input_ids"].equal(subset[:]["input_ids"])


def test_scale_quality_quick_writes_each_arm_then_the_report(mixed, tmp_path, step_clock):
    data_dir, brown_dir, config = mixed
    argv = ["--quick", "--data-dir", str(data_dir), "--brown-dir", str(brown_dir), "--config", str(config)]
    argv += ["--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]
    for size in ("1M", "4.5M"):
        scale_quality.main([*argv, "--size", size])
    files = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "scale_quality").glob("*.json")}
    assert files.keys() == {f"{size}-{arm}" for size in ("1M", "4.5M") for arm in scale_quality.ARMS}
    assert all(f["complete"] for f in files.values())
    assert files["1M-counts"]["train_tokens"] < files["4.5M-counts"]["train_tokens"]
    saffu = files["4.5M-saffu"]
    assert saffu["points"][0]["step"] == 0 and saffu["points"][0]["cpu_seconds"] < 0.3  # the warm start alone
    assert all(p["cpu_seconds"] >= 0.3 for p in saffu["points"][1:]) and saffu["points"][-1]["step"] > 0
    for point in saffu["points"]:
        assert point["scores"].keys() == {"validation", *scale_quality.SOURCES}
        assert point["scores"]["validation"] == point["validation_perplexity"]
    kn = {r["arm"]: r for r in files["4.5M-counts"]["results"]}
    assert kn.keys() == {"Kneser-Ney 2-gram", "Kneser-Ney 3-gram", "Kneser-Ney 4-gram"}
    report = (tmp_path / "SCALE_QUALITY.md").read_text()
    assert "python -m training.scale_quality --quick" in report and "| SAFFU warm start alone |" in report
    assert "## 1M:" in report and "## 4.5M:" in report and "| 1M | + backprop @ 0.6 CPU-s | movie_reviews |" in report
    assert (tmp_path / "scale_quality.png").stat().st_size > 0
    payload = json.loads((tmp_path / "scale_quality.json").read_text())
    rows = [r for r in payload["rows"] if r["arm"] == "Kneser-Ney 3-gram" and r["size"] == "1M"]
    assert rows[0]["movie_reviews"] == kn_at(files["1M-counts"], "Kneser-Ney 3-gram")["movie_reviews"]


def kn_at(counts: dict, arm: str) -> dict:
    return next(r for r in counts["results"] if r["arm"] == arm)["scores"]


def test_scale_distributed_quick_two_processes_give_the_same_model(mixed, tmp_path):
    data_dir, brown_dir, config = mixed
    argv = ["--quick", "--data-dir", str(data_dir), "--brown-dir", str(brown_dir), "--config", str(config)]
    argv += ["--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--eval-blocks", "8"]
    payload = scale_distributed.main(argv)
    one, two = payload["runs"]
    assert (one["processes"], two["processes"]) == (1, 2) and one["tokens"] == two["tokens"] > 0
    assert len(two["cpu_seconds_per_process"]) == 2 and one["max_abs_difference"] == 0.0
    assert two["max_relative_difference"] < 1e-6
    assert two["validation_perplexity"] == pytest.approx(one["validation_perplexity"], rel=1e-6)
    assert "| 2 |" in (tmp_path / "SCALE_DISTRIBUTED.md").read_text()
