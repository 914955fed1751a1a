"""Smoke tests of the benchmark scripts in training/ on a tiny slice of Brown (a few seconds each)."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

TRAINING = Path(__file__).resolve().parents[1] / "training"
sys.path.insert(0, str(TRAINING))

import ablate  # noqa: E402
import benchmark  # noqa: E402
import generation_benchmark  # noqa: E402
from bench_common import BROWN_DIR, perplexity  # noqa: E402

pytestmark = pytest.mark.skipif(not (BROWN_DIR / "train.txt").is_file(), reason=f"no Brown data at {BROWN_DIR}")

TINY = benchmark.Settings(
    vocab_size=512,
    train_documents=300,
    eval_documents=30,
    budget_cpu_seconds=1.0,
    curve_blocks=4,
    batch_size=4,
    gpt2_dims=32,
    fractions=(0.5, 1.0),
)


@pytest.fixture(autouse=True)
def few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_benchmark_arms_and_report(tmp_path):
    payload = benchmark.run(TINY, tmp_path)
    arms = [r["arm"] for r in payload["results"]]
    assert arms == [
        "bigram",
        "SAFFU warm start",
        "SAFFU warm start, hidden priming 8",
        "SAFFU backprop only",
        "SAFFU warm start + backprop",
        "GPT-2",
    ]
    for result in payload["results"]:
        assert result["validation_perplexity"] > 1 and result["test_perplexity"] > 1
    gpt2, saffu = payload["results"][-1], payload["results"][3]
    assert gpt2["parameters"] <= saffu["parameters"]
    assert len(gpt2["curve"]) >= 2 and gpt2["curve"][0]["step"] == 0
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| GPT-2 |" in report and "met" in report
    assert (tmp_path / "brown.png").stat().st_size > 0


def test_bigram_matches_the_model_perplexity_definition():
    """The bigram scores exactly the tokens `perplexity` scores: a uniform model gives ppl = V."""
    tokenizer, data = benchmark.brown_data(512, 128, train_documents=100, eval_documents=10)

    class Uniform(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 512)})()

    assert perplexity(Uniform(), data["validation"]) == pytest.approx(512, rel=1e-5)
    counts = benchmark.bigram_counts(data["train"], 512)
    assert benchmark.bigram_perplexity(counts, data["validation"], 512, alpha=1e9) == pytest.approx(512, rel=1e-4)


def test_data_efficiency(tmp_path):
    payload = benchmark.run(replace(TINY, budget_cpu_seconds=0.5), tmp_path, data_efficiency=True)
    assert [r["fraction"] for r in payload["rows"]] == [0.5] * 3 + [1.0] * 3
    assert (tmp_path / "DATA_EFFICIENCY.md").is_file()


def test_ablation_is_resumable(tmp_path):
    assert len(ablate.grid()) >= 50
    argv = ["--limit", "1", "--train-documents", "200", "--vocab-size", "512", "--warm-start-max-tokens", "3000"]
    argv += ["--eval-blocks", "4", "--output-dir", str(tmp_path)]
    first = ablate.main(argv)
    second = ablate.main([*argv, "--diagnose-steps", "1"])
    assert len(first) == 1 and len(second) == 2
    lines = (tmp_path / "ablation.jsonl").read_text().splitlines()
    assert [json.loads(line)["config"] for line in lines] == ablate.grid()[:2]
    report = (tmp_path / "ABLATION.md").read_text()
    assert "| 1 |" in report and "| output O |" in report


def test_generation_benchmark_rows():
    model = generation_benchmark.saffu()
    gpt2 = generation_benchmark.matching_gpt2(sum(p.numel() for p in model.parameters()), positions=32)
    assert sum(p.numel() for p in gpt2.parameters()) == generation_benchmark.gpt2_parameters(gpt2.config)
    rows = generation_benchmark.measure({"SAFFU": model, "GPT-2": gpt2}, [4, 16], new_tokens=3, repeats=1)
    saffu_bytes = {r["state_bytes"] for r in rows if r["model"] == "SAFFU"}
    gpt2_bytes = [r["state_bytes"] for r in rows if r["model"] == "GPT-2"]
    assert len(saffu_bytes) == 1 and gpt2_bytes[1] == 4 * gpt2_bytes[0]
    assert "met" in generation_benchmark.verdicts(rows)[0]
