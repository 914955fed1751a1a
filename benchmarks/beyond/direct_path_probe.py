"""Which inputs the neural word model's closed-form direct path should read (BEYOND_COUNTING.md).

For each subset of feature blocks (v: the pivot's code; pv, ppv, pppv: the 1st, 2nd, 3rd previous token's; z4, z16,
zdoc: the contexts' attended vectors; H: the hidden distributions), the explicit softmax solution from the
training split's co-occurrences (`solve_softmax`, discount 0.75), its validation perplexity alone and linearly
mixed, with weight lambda, with a warm-started model's distribution.

usage: python benchmarks/beyond/direct_path_probe.py WARM_MODEL_DIR BROWN_DIR v,pv v,pv,H ...
"""

import math
import sys

import torch
from transformers import AutoTokenizer

from hf_saffu.data import load_text_datasets, tokenize_and_pack
from hf_saffu.explicit import solve_softmax
from hf_saffu.modeling_saffu import SaffuForCausalLM
from hf_saffu.train import parse_arguments

WEIGHTS = (0.05, 0.1, 0.15, 0.2)


def blocks(model, ids, mask) -> dict[str, torch.Tensor]:
    codes = model.model.embeddings.weight

    def before(k: int) -> torch.Tensor:
        previous = torch.cat([torch.full((len(ids), k), -1), torch.where(mask.bool(), ids, -1)[:, :-k]], 1)
        return codes[previous.clamp_min(0)] * (previous >= 0)[..., None]

    valid = mask.bool()
    layer = model.model.layers[0]
    computed = layer.context_inputs(codes[ids], valid, model.model.document_ends(ids, valid), None)
    z4, z16, zdoc = (computed.outputs[context].vectors for context in layer.contexts)
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state.exp()
    previous = {"pv": before(1), "ppv": before(2), "pppv": before(3)}
    return {"v": codes[ids], **previous, "z4": z4, "z16": z16, "zdoc": zdoc, "H": hidden}


@torch.no_grad()
def main(model_dir: str, brown: str, subsets: list[list[str]]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = SaffuForCausalLM.from_pretrained(model_dir).eval()
    files = ["--train_files", f"{brown}/train.txt", "--validation_files", f"{brown}/validation.txt"]
    _, data_args, _ = parse_arguments(["configs/brown.yaml", "--output_dir", "/tmp/probe", *files])
    packed = tokenize_and_pack(load_text_datasets(data_args), tokenizer, data_args)
    counts, mass, rows = {}, {}, 0
    train = packed["train"].with_format("torch")[:]
    for start in range(0, len(train["input_ids"]), 128):
        ids, mask = train["input_ids"][start : start + 128], train["attention_mask"][start : start + 128]
        real = (mask[:, :-1] * mask[:, 1:]).bool()
        targets, rows = ids[:, 1:][real], rows + int(real.sum())
        for name, vectors in blocks(model, ids, mask).items():
            vectors = vectors[:, :-1][real].double()
            counts.setdefault(name, torch.zeros(len(tokenizer), vectors.shape[1], dtype=torch.float64))
            counts[name].index_add_(0, targets, vectors)
            mass[name] = mass.get(name, 0.0) + vectors.sum().item()
    validation = packed["validation"].with_format("torch")[:]
    scored, model_log_probs = [], []
    for start in range(0, len(validation["input_ids"]), 64):
        ids, mask = validation["input_ids"][start : start + 64], validation["attention_mask"][start : start + 64]
        targets = validation["labels"][start : start + 64][:, 1:]
        keep = targets != -100
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        log_probs = torch.log_softmax(logits.double(), -1)[keep]
        model_log_probs.append(log_probs.gather(1, targets[keep][:, None])[:, 0])
        scored.append(({name: x[:, :-1][keep] for name, x in blocks(model, ids, mask).items()}, targets[keep]))
    model_log_probs = torch.cat(model_log_probs)
    for subset in subsets:
        priming = sum(mass[name] for name in subset) / rows
        weight, bias = solve_softmax(torch.cat([counts[n].T for n in subset]), priming, 0.01, discount=0.75)
        neural = torch.cat(
            [
                torch.log_softmax(torch.cat([x[n] for n in subset], -1).double() @ weight + bias, -1).gather(
                    1, y[:, None]
                )[:, 0]
                for x, y in scored
            ]
        )
        mixed = {}
        for lam in WEIGHTS:
            mixture = torch.logaddexp(model_log_probs + math.log(1 - lam), neural + math.log(lam))
            mixed[lam] = round(math.exp(-mixture.mean()), 2)
        print(subset, "K", round(priming, 2), "alone", round(math.exp(-neural.mean()), 1), "mixed", mixed, flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2], [subset.split(",") for subset in sys.argv[3:]])
