"""Parameter count and forward tokens/s of the SAFFU of a training config (default configs/brown.yaml).

    python -m training.forward_throughput [--config configs/brown.yaml] [--batch-size 32] [--length 128]

Writes benchmarks/FORWARD_THROUGHPUT.md and forward_throughput.json.
"""

import argparse
import time
from pathlib import Path

import torch

from hf_saffu import SaffuConfig, SaffuForCausalLM

from . import harness


def measure(config: SaffuConfig, batch_size: int, length: int, repeats: int) -> dict:
    """Parameters and forward tokens/s (wall clock, no gradients) on random token ids."""
    model = SaffuForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (batch_size, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(ids)
        seconds = time.perf_counter() - start
    return {
        "parameters": harness.count_parameters(model),
        "forward_tokens_per_second": batch_size * length * repeats / seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser, data=False)
    parser.add_argument("--config", type=Path, default=harness.DEFAULT_CONFIG, help="training config of the SAFFU")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    recipe = harness.read_config(args.config)
    config = SaffuConfig(vocab_size=recipe.vocab_size, **recipe.model)
    result = measure(config, args.batch_size, args.length, args.repeats)
    lines = [
        f"- SAFFU: `{args.config.name}` model `{recipe.model}`, vocabulary {recipe.vocab_size}",
        f"- batch {args.batch_size} x {args.length} tokens, {args.repeats} repeats, torch threads {args.threads}",
        "",
        *harness.markdown_table(
            ["parameters", "forward tokens/s"],
            [[f"{result['parameters']:,}", f"{result['forward_tokens_per_second']:,.0f}"]],
            "rr",
        ),
    ]
    payload = {"model": recipe.model, "vocab_size": recipe.vocab_size, **vars(args), **result}
    out = args.output_dir
    harness.write_results(
        out / "FORWARD_THROUGHPUT.md", out / "forward_throughput.json", "SAFFU forward throughput", lines, payload
    )
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
