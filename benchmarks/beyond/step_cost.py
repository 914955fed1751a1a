"""What a training step of the SAFFU with the neural mixture costs, part by part (issue 24's CPU budgets).

usage: python benchmarks/beyond/step_cost.py MODEL_DIR [--steps 4] [--threads 1]

MODEL_DIR: a saved SaffuForCausalLM with a neural mixture (e.g. the output of benchmarks/beyond/mixture_run.sh).
Process CPU seconds of one AdamW step (forward + backward + update) on batches of 32 x 128 random token ids (the cost
of the dense products does not depend on which tokens), after two untimed steps, for: the counted parts alone
(the mixture removed), the shipped mixture (its loss from the V-wide ln p, and at the targets only: `skip_logits`,
which ExplicitTrainer uses), D frozen (both ways), D reading only [v_t, v_{t-1}] (trained, then frozen), and W
frozen as well. No leave-one-out hooks (the trainer's cost of those is in BEYOND_COUNTING.md's Cost section).
"""

import argparse
import time
import types

import torch

from hf_saffu import SaffuForCausalLM


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SaffuForCausalLM.from_pretrained(args.model_dir).train()
    mixture = model.neural_mixture
    if mixture is None:
        raise SystemExit(f"{args.model_dir}: the model has no neural mixture (neural_mixture_dim 0)")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2 + args.steps, 32, 128), generator=generator)
    batches = [{"input_ids": block, "labels": block} for block in ids]
    rows = {}
    model.neural_mixture = None
    rows["counted parts alone (no mixture)"] = cost_per_step(model, batches, args.steps)
    model.neural_mixture = mixture
    rows["shipped mixture (D on [H_t, v_t, v_{t-1}])"] = cost_per_step(model, batches, args.steps)
    rows["shipped mixture, loss at the targets only (skip_logits, as ExplicitTrainer trains)"] = cost_per_step(
        model, batches, args.steps, skip_logits=True
    )
    mixture.direct_weight.requires_grad_(False)
    rows["D frozen"] = cost_per_step(model, batches, args.steps)
    rows["D frozen, skip_logits"] = cost_per_step(model, batches, args.steps, skip_logits=True)
    hidden = model.model.num_contexts * model.config.hidden_bits
    codes = mixture.direct_weight.detach()[hidden:].clone()
    mixture.direct_weight = torch.nn.Parameter(codes)
    mixture.direct_inputs = types.MethodType(lambda self, inputs: inputs[..., hidden : hidden + len(codes)], mixture)
    rows["D on [v_t, v_{t-1}] only, trained"] = cost_per_step(model, batches, args.steps)
    mixture.direct_weight.requires_grad_(False)
    rows["D on [v_t, v_{t-1}] only, frozen"] = cost_per_step(model, batches, args.steps)
    mixture.word_weight.requires_grad_(False)
    rows["... and W frozen"] = cost_per_step(model, batches, args.steps)
    print(f"| step ({args.threads} torch thread(s), batch 32 x 128) | CPU-s / step |\n|---|---:|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
