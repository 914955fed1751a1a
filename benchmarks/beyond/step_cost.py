"""What a training step of the SAFFU with the neural mixture costs, part by part (issue 24's CPU budgets).

usage: python benchmarks/beyond/step_cost.py MODEL_DIR [MODEL_DIR ...] [--steps 4] [--threads 1] [--text FILE]

MODEL_DIR: a saved SaffuForCausalLM with a neural mixture (e.g. the output of benchmarks/beyond/mixture_run.sh).
Process CPU seconds of one AdamW step (forward + backward + update) on batches of 32 x 128 random token ids (the cost
of the dense products does not depend on which tokens), or of the first tokens of --text (the class-factored
loss's cost does: it follows the target classes' sizes), after two untimed steps, for: the counted parts alone
(the mixture removed), the mixture (its loss from the V-wide ln p, and at the targets only: `skip_logits`, which
ExplicitTrainer uses), with classes the counted parts frozen (`freeze_counted_parts`) without and with their caches
filled, and for a model with a word-level output (no classes): D frozen (both ways), D reading only
[v_t, v_{t-1}] (trained, then frozen), and W frozen as well. No leave-one-out hooks (the trainer's cost of those is
in BEYOND_COUNTING.md's Cost section).
"""

import argparse
import time
import types

import torch
from transformers import AutoTokenizer

from hf_saffu import SaffuForCausalLM
from hf_saffu.frozen_phase import FrozenInputCache
from hf_saffu.trainer import freeze_counted_parts


def cost_per_step(model: SaffuForCausalLM, batches: list[dict], steps: int, skip_logits: bool = False) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(batch):
        model(**batch, skip_logits=skip_logits).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:2]:
        step(batch)
    start = time.process_time()
    for batch in batches[2 : 2 + steps]:
        step(batch)
    return (time.process_time() - start) / steps


def batches_for(model: SaffuForCausalLM, model_dir: str, text: str | None, count: int) -> list[dict]:
    """`count` batches of 32 x 128 tokens: the first tokens of `text` (a file, read with the model's tokenizer), or
    random ids (the dense products' cost does not depend on which tokens; the class-factored loss's does)."""
    if text is None:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (count, 32, 128), generator=generator)
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        with open(text, encoding="utf-8") as handle:
            tokens = tokenizer(handle.read(4_000_000))["input_ids"]
        if len(tokens) < count * 32 * 128:
            raise SystemExit(f"{text}: {len(tokens)} tokens, fewer than the {count * 32 * 128} of {count} batches")
        ids = torch.tensor(tokens[: count * 32 * 128]).view(count, 32, 128)
    return [{"input_ids": block, "labels": block} for block in ids]


def step_costs(model_dir: str, steps: int, text: str | None) -> dict[str, float]:
    model = SaffuForCausalLM.from_pretrained(model_dir).train()
    mixture = model.neural_mixture
    if mixture is None:
        raise SystemExit(f"{model_dir}: the model has no neural mixture (neural_mixture_dim 0)")
    batches = batches_for(model, model_dir, text, 2 + steps)
    output = f"output over {mixture.num_classes} classes" if mixture.num_classes else "output over the vocabulary"
    rows = {}
    model.neural_mixture = None
    rows["counted parts alone (no mixture)"] = cost_per_step(model, batches, steps)
    model.neural_mixture = mixture
    rows[f"mixture, {output} (D on [H_t, v_t, v_{{t-1}}])"] = cost_per_step(model, batches, steps)
    rows[f"mixture, {output}, loss at the targets only (skip_logits, as ExplicitTrainer trains)"] = cost_per_step(
        model, batches, steps, skip_logits=True
    )
    if mixture.num_classes:
        freeze_counted_parts(model)
        rows["skip_logits, the counted parts frozen (freeze_counted_parts)"] = cost_per_step(
            model, batches, steps, skip_logits=True
        )
        model.frozen_counted, model.model.frozen_inputs = FrozenInputCache(), FrozenInputCache()
        cost_per_step(model, batches, steps, skip_logits=True)  # fills the caches, as a first epoch does
        rows["... and their ln p at the targets and s_t cached (ExplicitTrainer's later epochs)"] = cost_per_step(
            model, batches, steps, skip_logits=True
        )
        return rows
    mixture.direct_weight.requires_grad_(False)
    rows["D frozen"] = cost_per_step(model, batches, steps)
    rows["D frozen, skip_logits"] = cost_per_step(model, batches, steps, skip_logits=True)
    hidden = model.model.num_contexts * model.config.hidden_bits
    codes = mixture.direct_weight.detach()[hidden:].clone()
    mixture.direct_weight = torch.nn.Parameter(codes)
    mixture.direct_inputs = types.MethodType(lambda self, inputs: inputs[..., hidden : hidden + len(codes)], mixture)
    rows["D on [v_t, v_{t-1}] only, trained"] = cost_per_step(model, batches, steps)
    mixture.direct_weight.requires_grad_(False)
    rows["D on [v_t, v_{t-1}] only, frozen"] = cost_per_step(model, batches, steps)
    mixture.word_weight.requires_grad_(False)
    rows["... and W frozen"] = cost_per_step(model, batches, steps)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--text", help="a text file whose first tokens make the batches (default: random ids)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = f"batch 32 x 128 of {'the start of ' + args.text if args.text else 'random ids'}"
    print(f"| model | step ({args.threads} torch thread(s), {batches}) | CPU-s / step |\n|---|---|---:|")
    for model_dir in args.model_dirs:
        for name, seconds in step_costs(model_dir, args.steps, args.text).items():
            print(f"| {model_dir} | {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
