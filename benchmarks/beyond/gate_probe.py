"""Is the neural mixture's gate well placed on unseen text? (issue 24, BEYOND_COUNTING.md, eleventh session)

usage: python benchmarks/beyond/gate_probe.py MODEL_DIR --text FILE [--blocks 256] [--fit-text FILE2]

MODEL_DIR: a saved SaffuForCausalLM with a neural mixture (`long_budget --save-models`, `mixture_run.sh`). The first
--blocks blocks of FILE (one document a line, packed as `hf-saffu train` packs them, 128-token blocks) are scored
once; at every target the gate's logit s_t = g_t w + c, the counted parts' ln p_C(y_t) and the neural part's
ln p_N(y_t) are kept, and the mixture is re-scored offline,

    p(y_t) = (1 - sigmoid(a s_t + delta)) p_C(y_t) + sigmoid(a s_t + delta) p_N(y_t),

for a shift delta (a = 1), a scale and a shift, and a fixed lambda in place of the gate, each chosen on these very
blocks (an upper bound on what fitting the gate on held-out text could gain). Prints the perplexities of the mixture,
the counted parts alone, p_N alone, and of each re-fitted gate. With --fit-text, the scale and shift are also chosen
on FILE2's first --blocks blocks and applied to FILE's (held-out calibration, as deleted interpolation fits its
weights: e.g. fitted on the validation split, scored on the test split and on out-of-domain text).
"""

import argparse
import math
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: training/
from hf_saffu import SaffuForCausalLM
from hf_saffu.modeling_saffu import SaffuNeuralMixture
from training.long_budget import ood_blocks

BLOCK_SIZE = 128  # DataArguments' default: the blocks `hf-saffu train` packs


def target_terms(model: SaffuForCausalLM, data, batch_size: int = 32) -> tuple[torch.Tensor, ...]:
    """(s_t, ln p_C(y_t), ln p_N(y_t)) at every target of `data`, float64, from the model's own loss path
    (`skip_logits`): `SaffuNeuralMixture.features` and `target_log_probs`, wrapped on this instance to keep the gate's
    logits and their inputs."""
    mixture, gates, kept = model.neural_mixture, [], []
    features, scores = mixture.features, mixture.target_log_probs

    def keep_gate(inputs):
        gate, direct, hidden = features(inputs)
        gates.append(gate.squeeze(-1))
        return gate, direct, hidden

    def keep(counted, inputs, targets, changes=None):
        mixed, neural = scores(counted, inputs, targets, changes)
        known = targets != -100
        kept.append(torch.stack([gates.pop()[known], counted[known], neural[known]]).double())
        return mixed, neural

    mixture.features, mixture.target_log_probs = keep_gate, keep
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            model(**data[start : start + batch_size], skip_logits=True)
    return tuple(torch.cat(kept, dim=1))


def perplexity(gate: torch.Tensor, counted: torch.Tensor, neural: torch.Tensor) -> float:
    return math.exp(-float(SaffuNeuralMixture.mix(gate, counted, neural).mean()))


def file_terms(model: SaffuForCausalLM, tokenizer, path: str, blocks: int) -> tuple[torch.Tensor, ...]:
    """`target_terms` of the first `blocks` blocks of the text file `path` (packed as the long-budget benchmark packs
    its out-of-domain text, `ood_blocks`)."""
    packed = ood_blocks(Path(path), tokenizer, BLOCK_SIZE)
    return target_terms(model, packed.select(range(min(blocks, len(packed)))))


def scale_and_shift(gate: torch.Tensor, counted: torch.Tensor, neural: torch.Tensor) -> tuple[float, float, float]:
    """The perplexity, scale a and shift d of the best gate a s_t + d on a grid."""
    return min(
        (perplexity(a * gate + d / 5, counted, neural), a, d / 5)
        for a in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
        for d in range(-15, 16)
    )


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
    gate, counted, neural = file_terms(model, tokenizer, args.text, args.blocks)
    alone = {"counted parts": counted, "p_N": neural}
    print(
        f"{gate.numel()} targets: mixture {perplexity(gate, counted, neural):.2f}, mean lambda_t "
        f"{float(torch.sigmoid(gate).mean()):.3f}"
    )
    print(", ".join(f"{name} alone {math.exp(-float(values.mean())):.2f}" for name, values in alone.items()))
    shift = min((perplexity(gate + d / 10, counted, neural), d / 10) for d in range(-30, 31))
    print(f"gate shifted by {shift[1]:+.1f}: {shift[0]:.2f}")
    scaled = scale_and_shift(gate, counted, neural)
    print(f"gate scaled by {scaled[1]} and shifted by {scaled[2]:+.1f}: {scaled[0]:.2f}")
    fixed = min(
        (perplexity(torch.full_like(gate, math.log(k / (100 - k))), counted, neural), k / 100) for k in range(1, 100)
    )
    print(f"fixed lambda {fixed[1]:.2f}: {fixed[0]:.2f}")
    if args.fit_text:
        _, a, d = scale_and_shift(*file_terms(model, tokenizer, args.fit_text, args.blocks))
        fitted = perplexity(a * gate + d, counted, neural)
        print(f"gate scaled by {a} and shifted by {d:+.1f} on {args.fit_text}: {fitted:.2f}")


if __name__ == "__main__":
    main()
