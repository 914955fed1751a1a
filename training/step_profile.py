"""Where a SAFFU training step's CPU time goes, and what the frozen-embedding phase saves.

One run, one process, the same Brown batches (batch 32 x 128 tokens by default) and AdamW steps of the SAFFU
of a training config (default configs/brown.yaml), timed in process CPU seconds per step:

- unfrozen: the embeddings train;
- frozen: detached embeddings, similarities recomputed every step;
- frozen + cached: the trainer's frozen phase (`FrozenInputCache`, every block seen once before);
- output layer alone: forward + backward of ln H O + b, the pivot's channel and the cross-entropy on fixed inputs;
- with a pivot head: the head as one dense product v_t Q instead of once per distinct pivot token.

Then the ten costliest operators of an unfrozen step (torch.profiler).

    python -m training.step_profile [--steps 5] [--batch-size 32]

Writes benchmarks/STEP_PROFILE.md and step_profile.json.
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from hf_saffu.frozen_phase import FrozenInputCache
from hf_saffu.modeling_saffu import previous_tokens

from . import harness


def seconds_per_step(step, batches, steps: int) -> float:
    """Mean process CPU seconds of `step(batch)` over `steps` batches, after one untimed step per batch."""
    for batch in batches[:steps]:
        step(batch)
    start = time.process_time()
    for batch in batches[:steps]:
        step(batch)
    return (time.process_time() - start) / steps


def training_step(model, optimizer):
    def step(batch):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def output_layer_step(model, optimizer):
    """Forward + backward of the head only: logits from fixed ln H_t (the warm-started model's) and pivots."""
    hidden = {}

    def step(batch):
        key = id(batch)
        if key not in hidden:
            with torch.no_grad():
                hidden[key] = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        previous = previous_tokens(batch["input_ids"], batch["attention_mask"], None)
        logits = model.output_logits(hidden[key], batch["input_ids"], previous)
        model.causal_lm_loss(logits, batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(model, batches, steps: int) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    step = training_step(model, optimizer)
    model.train()
    rows = {"unfrozen": seconds_per_step(step, batches, steps)}
    model.model.embeddings.weight.requires_grad_(False)
    rows["frozen"] = seconds_per_step(step, batches, steps)
    model.model.frozen_inputs = FrozenInputCache()  # the untimed first pass over the batches fills it
    rows["frozen + cached"] = seconds_per_step(step, batches, steps)
    rows["output layer alone (frozen)"] = seconds_per_step(output_layer_step(model, optimizer), batches, steps)
    model.model.frozen_inputs = None
    model.model.embeddings.weight.requires_grad_(True)
    if model.pivot_head is not None:
        # shadows the method: the dense product v_t Q
        model.pivot_logits = lambda pivots, previous=None, logits=0: (
            logits + model.pivot_head(model.model.embeddings(pivots))
        )
        rows["unfrozen, dense pivot head"] = seconds_per_step(step, batches, steps)
        del model.pivot_logits
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for batch in batches[:steps]:
            step(batch)
    total = sum(event.self_cpu_time_total for event in profiler.key_averages())
    operators = sorted(profiler.key_averages(), key=lambda event: -event.self_cpu_time_total)[:10]
    return {
        "seconds_per_step": rows,
        "operators": [{"name": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in operators],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    recipe = harness.read_config(args.config)
    tokenizer, data = harness.load_data(harness.data_dir_or_exit(args.data_dir), recipe.vocab_size, recipe.block_size)
    torch.manual_seed(recipe.seed)
    model = harness.saffu_model(tokenizer, recipe.model)
    harness.warm_start(model, data["train"])
    train = data["train"].shuffle(seed=recipe.seed)
    batches = [train[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.steps)]
    distinct = sum(batch["input_ids"].unique().numel() for batch in batches) / len(batches)
    result = measure(model, batches, args.steps)
    unfrozen = result["seconds_per_step"]["unfrozen"]
    lines = [
        f"- SAFFU: `{args.config.name}` model `{recipe.model}`, vocabulary {len(tokenizer)}, warm-started",
        f"- {args.steps} Brown training batches of {args.batch_size} x {recipe.block_size} tokens "
        f"({distinct:.0f} distinct tokens a batch on average), AdamW; torch threads {args.threads}",
        "",
        *harness.markdown_table(
            ["step", "CPU s / step", "steps / CPU-s", "speed vs unfrozen"],
            [
                [name, f"{seconds:.3f}", f"{1 / seconds:.3f}", f"{unfrozen / seconds:.2f}x"]
                for name, seconds in result["seconds_per_step"].items()
            ],
        ),
        "",
        "Costliest operators of an unfrozen step (self CPU time):",
        "",
        *harness.markdown_table(
            ["operator", "share", "calls"],
            [[o["name"], f"{o['share']:.1%}", o["calls"]] for o in result["operators"]],
        ),
    ]
    payload = {"model": recipe.model, "distinct_tokens_per_batch": distinct, **vars(args), **result}
    out = args.output_dir
    harness.write_results(
        out / "STEP_PROFILE.md", out / "step_profile.json", "SAFFU training step profile", lines, payload
    )
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
