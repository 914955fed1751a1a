"""Decoding benchmark: SAFFU's constant-size decoding state vs GPT-2's KV cache.

For each prompt length, one sequence (batch 1):

- memory per sequence: SAFFU's `SaffuDecodingState.nbytes()` vs the bytes of GPT-2's key/value cache
  after the prompt (both what must be kept per sequence to continue decoding);
- decoding speed: greedy `generate(use_cache=True)`; tokens/s of the decode phase =
  (new - 1) / (time to generate `new` tokens - time to generate 1 token), wall clock, median of repeats.

The SAFFU is the training config's model section (default configs/brown.yaml) on its vocabulary size; the
GPT-2 gets as many parameters as the SAFFU allows (2 layers, the widest multiple of 32 dims whose parameter
count is <= the SAFFU's). Weights are random: speed and memory do not depend on them.

    python -m training.generation_benchmark            # prompt lengths 16 .. 2048
    python -m training.generation_benchmark --quick    # 16 .. 256, fewer tokens

Writes benchmarks/GENERATION.md and benchmarks/generation.json.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_saffu import SaffuConfig, SaffuForCausalLM

from . import harness

EOS_ID = 0
PAD_ID = 1


def saffu(recipe: harness.SaffuRecipe) -> SaffuForCausalLM:
    """The recipe's SAFFU on its vocabulary size (random weights)."""
    config = SaffuConfig(
        vocab_size=recipe.vocab_size, eos_token_id=EOS_ID, bos_token_id=EOS_ID, pad_token_id=PAD_ID, **recipe.model
    )
    return SaffuForCausalLM(config).eval()


def gpt2_config(vocab_size: int, dims: int, positions: int, layers: int = 2) -> GPT2Config:
    """A GPT-2 config on the benchmark vocabulary."""
    return GPT2Config(
        vocab_size=vocab_size,
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


def matching_gpt2(vocab_size: int, max_parameters: int, positions: int) -> GPT2LMHeadModel:
    """The widest 2-layer GPT-2 (multiple of 32 dims) with at most `max_parameters` parameters."""
    dims = 32
    while gpt2_parameters(gpt2_config(vocab_size, dims + 32, positions)) <= max_parameters:
        dims += 32
    return GPT2LMHeadModel(gpt2_config(vocab_size, dims, positions)).eval()


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
    vocab_size = min(model.config.vocab_size for model in models.values())
    rows = []
    for length in lengths:
        prompt = torch.randint(2, vocab_size, (1, length), generator=generator)
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


def targets(rows: list[dict]) -> list[dict]:
    """Met / missed for the decoding targets."""
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
        {
            "target": "memory per sequence constant in the prompt length",
            "met": constant,
            "numbers": f"SAFFU state {sorted(sizes)} bytes; GPT-2's KV cache {min(kv_bytes):,} to "
            f"{max(kv_bytes):,} bytes",
        },
        {
            "target": "decode tokens/s at least GPT-2's with its KV cache",
            "met": not slower,
            "numbers": f"slower at prompt lengths {slower}" if slower else "at every prompt length",
        },
    ]


def report_lines(rows: list[dict], parameters: dict, new_tokens: int) -> list[str]:
    """Bytes and tokens/s per prompt length, and the targets."""
    by_key = {(r["model"], r["prompt_length"]): r for r in rows}
    table = []
    for length in sorted({r["prompt_length"] for r in rows}):
        s, g = by_key["SAFFU", length], by_key["GPT-2", length]
        table.append(
            [
                length,
                f"{s['state_bytes']:,}",
                f"{g['state_bytes']:,}",
                f"{s['decode_tokens_per_second']:.0f}",
                f"{g['decode_tokens_per_second']:.0f}",
            ]
        )
    header = ["prompt length", "SAFFU state bytes", "GPT-2 KV cache bytes", "SAFFU tokens/s", "GPT-2 tokens/s"]
    return [
        f"- parameters: {', '.join(f'{k} {v:,}' for k, v in parameters.items())}; batch 1, float32, greedy, "
        f"{new_tokens} new tokens, wall-clock decode tokens/s (generation time minus the 1-token time)",
        "",
        *harness.markdown_table(header, table, "rrrrr"),
        "",
        "## Targets",
        "",
        *harness.targets_table(targets(rows)),
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser, threads=2, data=False)
    parser.add_argument("--config", type=Path, default=harness.DEFAULT_CONFIG, help="training config of the SAFFU")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    torch.manual_seed(0)
    lengths = [16, 64, 256] if args.quick else [16, 64, 256, 1024, 2048]
    new_tokens, repeats = (16, 1) if args.quick else (128, 7)
    recipe = harness.read_config(args.config)
    model = saffu(recipe)
    gpt2 = matching_gpt2(recipe.vocab_size, harness.count_parameters(model), max(lengths) + new_tokens)
    parameters = {
        "SAFFU": harness.count_parameters(model),
        f"GPT-2 ({gpt2.config.n_layer} x {gpt2.config.n_embd})": harness.count_parameters(gpt2),
    }
    rows = measure({"SAFFU": model, "GPT-2": gpt2}, lengths, new_tokens, repeats)
    title = "Decoding: SAFFU decoding state vs GPT-2 KV cache" + (" (--quick)" if args.quick else "")
    payload = {"parameters": parameters, "rows": rows, "targets": targets(rows)}
    out = args.output_dir
    harness.write_results(
        out / "GENERATION.md", out / "generation.json", title, report_lines(rows, parameters, new_tokens), payload
    )
    return rows


if __name__ == "__main__":
    main()
