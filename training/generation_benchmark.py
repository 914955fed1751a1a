"""Decoding benchmark: SAFFU's constant-size decoding state vs GPT-2's KV cache (issue 5).

For each prompt length, one sequence (batch 1):

- memory per sequence: SAFFU's `SaffuDecodingState.nbytes()` vs the bytes of GPT-2's key/value cache
  after the prompt (both what must be kept per sequence to continue decoding);
- decoding speed: greedy `generate(use_cache=True)`; tokens/s of the decode phase =
  (new - 1) / (time to generate `new` tokens - time to generate 1 token), wall clock, median of repeats.

The GPT-2 gets as many parameters as the SAFFU allows (2 layers, the widest multiple of 32 dims whose
parameter count is <= the SAFFU's). Weights are random: speed and memory do not depend on them.

    python training/generation_benchmark.py            # prompt lengths 16 .. 2048
    python training/generation_benchmark.py --quick    # 16 .. 256, fewer tokens

Writes benchmarks/GENERATION.md and benchmarks/generation.json.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_common import REPO_ROOT, command_line, count_parameters, git_revision, machine_description
from transformers import GPT2Config, GPT2LMHeadModel

from hf_saffu import SaffuConfig, SaffuForCausalLM

VOCAB_SIZE = 8192
EOS_ID = 0
PAD_ID = 1


def saffu() -> SaffuForCausalLM:
    """The benchmark's SAFFU (SaffuConfig defaults, 8192 tokens)."""
    config = SaffuConfig(vocab_size=VOCAB_SIZE, eos_token_id=EOS_ID, bos_token_id=EOS_ID, pad_token_id=PAD_ID)
    return SaffuForCausalLM(config).eval()


def gpt2_config(dims: int, positions: int, layers: int = 2) -> GPT2Config:
    """A GPT-2 config on the benchmark vocabulary."""
    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=positions,
        n_embd=dims,
        n_layer=layers,
        n_head=4,
        eos_token_id=EOS_ID,
        bos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def gpt2_parameters(config: GPT2Config) -> int:
    """Parameter count of a GPT2LMHeadModel (tied output) without building it."""
    d, layers = config.n_embd, config.n_layer
    per_layer = 12 * d * d + 13 * d
    return (config.vocab_size + config.n_positions) * d + layers * per_layer + 2 * d


def matching_gpt2(max_parameters: int, positions: int) -> GPT2LMHeadModel:
    """The widest 2-layer GPT-2 (multiple of 32 dims) with at most `max_parameters` parameters."""
    dims = 32
    while gpt2_parameters(gpt2_config(dims + 32, positions)) <= max_parameters:
        dims += 32
    return GPT2LMHeadModel(gpt2_config(dims, positions)).eval()


def kv_cache_bytes(cache) -> int:
    """Bytes of a transformers `Cache` (keys and values of every layer)."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@torch.no_grad()
def state_bytes(model, prompt: torch.Tensor) -> int:
    """Bytes of what the model keeps per sequence after reading `prompt` (batch 1)."""
    cache = model(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True).past_key_values
    return cache.nbytes() if hasattr(cache, "nbytes") else kv_cache_bytes(cache)


@torch.no_grad()
def generate_seconds(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Wall seconds of greedy `generate` of exactly `new_tokens` tokens after `prompt`."""
    start = time.perf_counter()
    model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=PAD_ID,
    )
    return time.perf_counter() - start


def decode_tokens_per_second(model, prompt: torch.Tensor, new_tokens: int, repeats: int) -> float:
    """(new - 1) / (median time for `new` tokens - median time for 1 token)."""
    full = statistics.median(generate_seconds(model, prompt, new_tokens) for _ in range(repeats))
    prefill = statistics.median(generate_seconds(model, prompt, 1) for _ in range(repeats))
    return (new_tokens - 1) / max(full - prefill, 1e-9)


def measure(models: dict, lengths: list[int], new_tokens: int, repeats: int) -> list[dict]:
    """One row per (model, prompt length)."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for length in lengths:
        prompt = torch.randint(2, VOCAB_SIZE, (1, length), generator=generator)
        for name, model in models.items():
            rows.append(
                {
                    "model": name,
                    "prompt_length": length,
                    "state_bytes": state_bytes(model, prompt),
                    "decode_tokens_per_second": decode_tokens_per_second(model, prompt, new_tokens, repeats),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def verdicts(rows: list[dict]) -> list[str]:
    """Met / missed for the decoding targets of the issue."""
    saffu_rows = [r for r in rows if r["model"] == "SAFFU"]
    gpt2_rows = {r["prompt_length"]: r for r in rows if r["model"] == "GPT-2"}
    sizes = {r["state_bytes"] for r in saffu_rows}
    kv_bytes = [r["state_bytes"] for r in gpt2_rows.values()]
    constant = len(sizes) == 1
    slower = [
        r["prompt_length"]
        for r in saffu_rows
        if r["decode_tokens_per_second"] < gpt2_rows[r["prompt_length"]]["decode_tokens_per_second"]
    ]
    return [
        f"- memory per sequence constant in length: **{'met' if constant else 'MISSED'}** "
        f"(SAFFU state {sorted(sizes)} bytes at every prompt length; GPT-2's KV cache grows from "
        f"{min(kv_bytes):,} to {max(kv_bytes):,} bytes)",
        f"- tokens/s at least GPT-2's with its KV cache: **{'met' if not slower else 'MISSED'}**"
        + (f" (slower at prompt lengths {slower})" if slower else " (at every prompt length)"),
    ]


def write_report(path: Path, rows: list[dict], parameters: dict, new_tokens: int, quick: bool) -> None:
    """benchmarks/GENERATION.md: bytes and tokens/s per prompt length, and the targets."""
    lines = [
        "# Decoding: SAFFU decoding state vs GPT-2 KV cache" + (" (--quick)" if quick else ""),
        "",
        f"- command: `{command_line()}`",
        f"- commit: `{git_revision()}`",
        f"- machine: {machine_description()}",
        f"- parameters: {', '.join(f'{k} {v:,}' for k, v in parameters.items())}; batch 1, float32, greedy, "
        f"{new_tokens} new tokens, wall-clock decode tokens/s (generation time minus the 1-token time)",
        "",
        "| prompt length | SAFFU state bytes | GPT-2 KV cache bytes | SAFFU tokens/s | GPT-2 tokens/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["model"], r["prompt_length"]): r for r in rows}
    for length in sorted({r["prompt_length"] for r in rows}):
        s, g = by_key["SAFFU", length], by_key["GPT-2", length]
        lines.append(
            f"| {length} | {s['state_bytes']:,} | {g['state_bytes']:,} | "
            f"{s['decode_tokens_per_second']:.0f} | {g['decode_tokens_per_second']:.0f} |"
        )
    lines += ["", "## Targets (issue 5)", "", *verdicts(rows), ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "benchmarks")
    args = parser.parse_args(argv)
    git_revision()  # the commit this run starts from (cached for the report)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lengths = [16, 64, 256] if args.quick else [16, 64, 256, 1024, 2048]
    new_tokens, repeats = (16, 1) if args.quick else (128, 7)
    model = saffu()
    gpt2 = matching_gpt2(count_parameters(model), max(lengths) + new_tokens)
    models = {"SAFFU": model, "GPT-2": gpt2}
    parameters = {
        "SAFFU": count_parameters(model),
        f"GPT-2 ({gpt2.config.n_layer} x {gpt2.config.n_embd})": count_parameters(gpt2),
    }
    rows = measure(models, lengths, new_tokens, repeats)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_report(args.output_dir / "GENERATION.md", rows, parameters, new_tokens, args.quick)
    (args.output_dir / "generation.json").write_text(json.dumps({"parameters": parameters, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
