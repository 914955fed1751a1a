"""Parameter count and forward tokens/s of a SAFFU configuration (default: `SaffuConfig()`).

python training/forward_throughput.py [--vocab-size 8192] [--batch-size 32] [--length 128] [--repeats 10]
"""

import argparse
import time

import torch

from hf_saffu import SaffuConfig, SaffuForCausalLM


def measure(config: SaffuConfig, batch_size: int, length: int, repeats: int) -> dict:
    model = SaffuForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (batch_size, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(ids)
        seconds = time.perf_counter() - start
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_tokens_per_second": batch_size * length * repeats / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=SaffuConfig().vocab_size)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    config = SaffuConfig(vocab_size=args.vocab_size)
    result = measure(config, args.batch_size, args.length, args.repeats)
    print(
        f"config: windows {config.windows}, document context {config.use_document_context}, "
        f"embed_bits {config.embed_bits}, hidden_bits {config.hidden_bits}, vocab {config.vocab_size}"
    )
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size} x {args.length} tokens")
    print(f"parameters {result['parameters']:,}")
    print(f"forward tokens/s {result['forward_tokens_per_second']:,.0f}")


if __name__ == "__main__":
    main()
