"""Is the neural mixture's gate well placed on unseen text? (issue 24, BEYOND_COUNTING.md, eleventh and later sessions)

usage: python benchmarks/beyond/gate_probe.py MODEL_DIR --text FILE [--blocks 256] [--fit-text FILE2]

MODEL_DIR: a saved SaffuForCausalLM with a neural mixture (`long_budget --save-models`, `mixture_run.sh`). The first
--blocks blocks of FILE (one document a line, packed as `hf-saffu train` packs them, 128-token blocks) are scored
once; at every target the gate's logit s_t = g_t w + c, the counted parts' ln p_C(y_t) and the neural part's
ln p_N(y_t) are kept (`hf_saffu.calibration.gate_terms`), and the mixture is re-scored offline,

    p(y_t) = (1 - sigmoid(a s_t + d)) p_C(y_t) + sigmoid(a s_t + d) p_N(y_t),

with the scale a and shift d fitted on these very blocks (`hf_saffu.calibration.fit_gate`: an upper bound on what
fitting the gate on held-out text could gain), and with a fixed lambda in place of the gate. Prints the perplexities
of the mixture, the counted parts alone, p_N alone, and of each re-fitted gate. With --fit-text, a and d are also
fitted on FILE2's first --blocks blocks and applied to FILE's: held-out calibration, as `calibrate_gate` does after
training (fitted on the validation split, scored on the test split and on out-of-domain text).
"""

import argparse
import math
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: training/
from hf_saffu import SaffuForCausalLM
from hf_saffu.calibration import fit_gate, gate_terms, mean_nll
from hf_saffu.data import DataArguments
from training.long_budget import ood_blocks


def perplexity(terms: torch.Tensor, scale: float = 1.0, shift: float = 0.0, *caches: float) -> float:
    return math.exp(float(mean_nll(terms, scale, shift, *caches)))


def file_terms(model: SaffuForCausalLM, tokenizer, path: str, blocks: int, batch_size: int = 32) -> torch.Tensor:
    """`gate_terms` of the first `blocks` blocks of the text file `path` (packed as the long-budget benchmark packs
    its out-of-domain text, `ood_blocks`)."""
    packed = ood_blocks(Path(path), tokenizer, DataArguments.block_size)  # `hf-saffu train`'s default
    packed = packed.select(range(min(blocks, len(packed))))
    return gate_terms(model, (packed[start : start + batch_size] for start in range(0, len(packed), batch_size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--text", required=True)
    parser.add_argument("--blocks", type=int, default=256)
    parser.add_argument("--fit-text", help="choose the gate's scale and shift on this file, score them on --text")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = SaffuForCausalLM.from_pretrained(args.model_dir).eval()
    if model.neural_mixture is None:
        raise SystemExit(f"error: {args.model_dir} has no neural mixture (neural_mixture_dim 0)")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    terms = file_terms(model, tokenizer, args.text, args.blocks)
    gate, counted, neural = terms[:, :3].unbind(dim=-1)
    mean_weight = float(torch.sigmoid(gate).mean())
    print(f"{len(terms)} targets: mixture {perplexity(terms):.2f}, mean lambda_t {mean_weight:.3f}")
    if terms.shape[1] > 3:  # caches: the mixture without them, and each one's mean kappa_tn
        kappas = ", ".join(
            f"{float(torch.sigmoid(terms[:, 3 + 2 * n]).mean()):.3f}" for n in range(terms.shape[1] // 2 - 1)
        )
        print(f"without its caches {perplexity(terms[:, :3]):.2f}; mean kappa_tn of the caches {kappas}")
    alone = {"counted parts": counted, "p_N": neural}
    print(", ".join(f"{name} alone {math.exp(-float(values.mean())):.2f}" for name, values in alone.items()))
    scale, shift, *caches = fit_gate(terms)
    print(f"gate scaled by {scale:.3f} and shifted by {shift:+.3f} (caches' gates {caches}): ", end="")
    print(f"{perplexity(terms, scale, shift, *caches):.2f}")
    fixed = min((perplexity(terms, 0.0, math.log(k / (100 - k))), k / 100) for k in range(1, 100))  # a = 0
    print(f"fixed lambda {fixed[1]:.2f}: {fixed[0]:.2f}")
    if args.fit_text:
        scale, shift, *caches = fit_gate(file_terms(model, tokenizer, args.fit_text, args.blocks))
        fitted = perplexity(terms, scale, shift, *caches)
        print(f"gate scaled by {scale:.3f} and shifted by {shift:+.3f} on {args.fit_text}: {fitted:.2f}")


if __name__ == "__main__":
    main()
