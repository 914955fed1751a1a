"""Long-budget Brown benchmark: SAFFU and GPT-2 trained towards convergence, with early stopping.

Arms, all on one BPE and the same packed blocks: the count-based n-grams (additive bigram, Kneser-Ney of
orders 2-4); the SAFFU of the training config (default configs/brown.yaml) after the explicit warm start and
then backprop as the config trains (its learning rates per part, leave-one-out, and its frozen phase as a fraction
of the steps: embeddings frozen and their similarities cached, then trained; `--set frozen_fraction=0.5` for another);
the same SAFFU by backprop only; GPT-2 2x128; a GPT-2 of about the SAFFU's parameter count; GPT-2 2x128
interpolated with the Kneser-Ney trigram (gpt2-kn3: the GPT-2 trained again, the mixture
p = lam p_GPT-2 + (1 - lam) p_KN3 scored at every budget point, lam chosen on the curve subset).
Each backprop arm trains (AdamW, cosine over the budget) until validation
perplexity (first --curve-blocks blocks, every --eval-every CPU-s) has not improved for --patience points, or
the --budget-cpu-seconds cap is spent; its best weights are scored on the full validation and test splits
and on out-of-domain text it never saw (--ood-file, default Tiny Shakespeare).

Every arm writes OUTPUT/long_budget/ARM.json as its curve grows, so an interrupted run keeps what it
measured; two processes can run arms side by side, one per core (torch threads 1 each):

    python -m training.long_budget --arms counts gpt2-small gpt2-equal &
    python -m training.long_budget --arms saffu-warm saffu-backprop &
    python -m training.long_budget --report      # LONG_BUDGET.md, long_budget.json, long_budget.png

The report's targets compare the SAFFU arm `--targets-arm` (default saffu-warm; a tagged run such as
saffu-warm-TAG, e.g. the run of the shipped config) with the mixture arm `--targets-mixture` (default gpt2-kn3).

Time = process CPU seconds (the warm start counts; evaluation does not).
"""

import argparse
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml
from datasets import DatasetDict, load_dataset

from hf_saffu.calibration import mean_nll
from hf_saffu.data import DataArguments, tokenize_and_pack
from hf_saffu.modeling_saffu import SaffuTokenCache, previous_tokens, recent_tokens
from hf_saffu.train import config_parameters

from . import harness
from .benchmark import KNESER_NEY_ORDERS
from .kneser_ney import KneserNeyLM

MIXTURE = "gpt2-kn3"
ARMS = ("counts", "saffu-warm", "saffu-backprop", "gpt2-small", "gpt2-equal", MIXTURE)
ARM_NAMES = {
    "saffu-warm": "SAFFU warm start + backprop (staged)",
    "saffu-backprop": "SAFFU backprop only",
    "gpt2-small": "GPT-2 2x128",
    "gpt2-equal": "GPT-2 of equal size",
    MIXTURE: "GPT-2 2x128 + Kneser-Ney 3-gram",
}
BUDGET_POINTS = (300.0, 600.0, 1200.0, 2400.0)
SCORED = ("validation", "test", "ood")  # the splits each arm's best checkpoint is scored on at its end
DEFAULT_OOD_FILE = harness.REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


@dataclass(frozen=True)
class Settings:
    """What a run depends on besides the training config (written into every arm's results)."""

    budget_cpu_seconds: float = 2400.0  # cap per backprop arm, warm start included
    eval_every: float = 150.0
    patience: int = 4  # early stopping: no new best for 4 x eval_every = 600 CPU-s
    curve_blocks: int = 256
    batch_size: int = 32
    backprop_only_learning_rate: float = 1e-3
    gpt2_learning_rate: float = 1e-3
    gpt2_equal_layers: int = 4
    gpt2_equal_dims: int = 320
    gpt2_equal_heads: int = 5

    def budget(self, seed: int) -> harness.Budget:
        points = tuple(p for p in BUDGET_POINTS if p <= self.budget_cpu_seconds)
        return harness.Budget(
            self.budget_cpu_seconds, points, self.batch_size, self.curve_blocks, seed, self.eval_every, self.patience
        )


def ood_blocks(path: Path, tokenizer, block_size: int):
    """The non-blank lines of `path` (one document each), packed into blocks with the benchmark's tokenizer."""
    text = load_dataset("text", data_files=str(path))["train"].filter(lambda row: bool(row["text"].strip()))
    args = DataArguments(train_files=[str(path)], block_size=block_size)
    return tokenize_and_pack(DatasetDict({"train": text}), tokenizer, args)["train"].with_format("torch")


class ArmWriter:
    """Writes an arm's results file after every curve point (partial) and at the end (complete)."""

    def __init__(self, path: Path, head: dict):
        self.path, self.head = path, head
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, result: dict, complete: bool) -> None:
        payload = {"run": harness.run_metadata(), **self.head, **result, "complete": complete}
        self.path.write_text(json.dumps(payload, indent=1, default=str))

    def on_point(self, callback: harness.CpuBudget, model=None) -> None:
        partial = {"curve": callback.curve, "best_point": callback.best}
        self.write({**partial, "steps_per_cpu_second": callback.steps_per_cpu_second()}, complete=False)


# -- GPT-2 + Kneser-Ney trigram, interpolated -------------------------------------------------------

LAMBDAS = tuple(i / 20 for i in range(21))  # the weight of the neural model, chosen on the curve subset
MIXTURE_ORDER = 3
CACHE_WINDOW = 128  # the mixture's cache variants: configs/brown.yaml's neural_mixture_cache_window
CACHE_ORDERS = (1, 2)  # a variant with the cache of order 1, and one with those of orders 1 and 2
CACHE_WEIGHTS = (tuple(i / 100 for i in range(21)), tuple(i / 50 for i in range(16)))  # kappa_1, kappa_2 grids


def token_log_probs(model, dataset, batch_size: int = 64) -> torch.Tensor:
    """ln p(x_t | x_<t) of every predicted token of the packed blocks (labels[t] != -100, t >= 1), row by row:
    the tokens `harness.perplexity` scores, one by one (float64)."""
    was_training, chunks = model.training, []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = dataset[start : start + batch_size]
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            targets = batch["labels"][:, 1:]
            log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            picked = log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            chunks.append(picked[targets != -100].double())
    model.train(was_training)
    return torch.cat(chunks)


def cache_log_probs(dataset, window: int, order: int = 1) -> torch.Tensor:
    """ln p_Kn(x_t) of every predicted token of the packed blocks (`token_log_probs`'s tokens, in its order) from the
    SAFFU's cache of `order` n over the block's last `window` tokens before it (`SaffuTokenCache` with uniform
    recency, beta = 0): -inf where x_t is not a candidate, NaN where the cache has no evidence (as `gate_terms`)."""
    cache, chunks = SaffuTokenCache(window, order), []
    with torch.no_grad():
        for start in range(0, len(dataset), 64):
            batch = dataset[start : start + 64]
            ids, mask = batch["input_ids"], batch["attention_mask"]
            pivots = torch.where(mask.bool(), ids, -1)
            windows = recent_tokens(pivots, previous_tokens(ids, mask, None, window - 1))  # x_t, ..., x_{t-W+1}
            targets = batch["labels"][:, 1:]
            picked, matched = cache.target_log_probs(windows[:, :-1], targets)
            chunks.append(picked.masked_fill(~matched, float("nan"))[targets != -100].double())
    return torch.cat(chunks)


def cached_mixture_nll(neural, counts, caches, weight: float, cache_weights) -> torch.Tensor:
    """-mean ln p of the mixture lam p_neural + (1 - lam) p_counts mixed in turn with each cache, p^n = (1 - kappa_n)
    p^{n-1} + kappa_n p_Kn (`caches`: `cache_log_probs` of orders 1 ... N; constant weights): the SAFFU's nested
    mixture (`hf_saffu.calibration.mean_nll`) with constant gates."""
    zeros = torch.zeros_like(neural)
    terms = torch.stack([zeros, counts, neural, *(column for cache in caches for column in (zeros, cache))], -1)
    gates = [0.0, logit(weight)]
    for kappa in cache_weights:
        gates += [0.0, logit(kappa)]
    return mean_nll(terms, *gates)


def logit(p: float) -> float:
    return math.inf if p == 1 else -math.inf if p == 0 else math.log(p / (1 - p))


def mixture_perplexity(neural: torch.Tensor, counts: torch.Tensor, weight: float) -> float:
    """exp(-mean_t ln(weight p_neural(t) + (1 - weight) p_counts(t))) from the two models' per-token log-probs."""
    if neural.shape != counts.shape:
        raise ValueError(f"the mixture needs the same tokens from both models, got {neural.shape} and {counts.shape}")
    return math.exp(-mixture_log_probs(neural, counts, weight).mean().item())


def mixture_log_probs(neural: torch.Tensor, counts: torch.Tensor, weight: float) -> torch.Tensor:
    """ln(weight p_neural(t) + (1 - weight) p_counts(t)) per token."""
    weight = torch.tensor(weight, dtype=torch.float64)
    return torch.logaddexp(neural + weight.log(), counts + torch.log1p(-weight))


class KneserNeyMixture:
    """p = lam p_neural + (1 - lam) p_KN3 per token (linear interpolation, Jelinek & Mercer 1980), the KN3 the
    counts arm's interpolated modified Kneser-Ney trigram (training/kneser_ney.py) fitted on the same train
    blocks. At the first curve point at or after each budget point (as `value_at` reads curves), lam is chosen
    on the curve subset (LAMBDAS; 0 and 1 included, so the mixture is never worse there than either model) and
    the mixture is scored at that lam on the curve subset, the full validation and test splits and each
    extra evaluation set (out of domain). Beside it (`with_cache`), the same mixture mixed in turn with the caches of
    orders 1 ... N (N in CACHE_ORDERS) of the block's last CACHE_WINDOW tokens, as the SAFFU mixes its caches
    (`neural_mixture_cache_window`, `neural_mixture_cache_order`; `cached_mixture_nll`), lam and the kappas chosen
    together on the curve subset (grids): what the SAFFU's caches would give this mixture."""

    def __init__(self, data, extra_eval: dict, vocab_size: int, curve_blocks: int, points: tuple[float, ...]):
        train = data["train"][:]
        start = time.process_time()
        model = KneserNeyLM(MIXTURE_ORDER, vocab_size).fit(train["input_ids"], train["attention_mask"])
        seconds = time.process_time() - start
        curve = data["validation"].select(range(min(curve_blocks, len(data["validation"]))))
        self.splits = {"curve": curve, "validation": data["validation"], "test": data["test"], **extra_eval}
        self.counts = {
            name: model.token_log_probs(split[:]["input_ids"], split[:]["attention_mask"])
            for name, split in self.splits.items()
        }
        self.caches = {
            name: [cache_log_probs(split, CACHE_WINDOW, order) for order in range(1, max(CACHE_ORDERS) + 1)]
            for name, split in self.splits.items()
        }
        self.pending = sorted(points)
        self.points: list[dict] = []
        self.kneser_ney = {
            "arm": f"Kneser-Ney {MIXTURE_ORDER}-gram",
            "discounting": "interpolated modified Kneser-Ney, D1 D2 D3+ from each order's count-of-counts",
            "parameters": sum(len(level.keys) for level in model.levels),
            "cpu_seconds": seconds,
            **{f"{name}_perplexity": math.exp(-lp.mean().item()) for name, lp in self.counts.items()},
        }

    def evaluate(self, model) -> dict:
        """lam on the curve subset; the mixture's and the neural model's perplexities on every split."""
        neural = {name: token_log_probs(model, split) for name, split in self.splits.items()}
        scores = {lam: mixture_perplexity(neural["curve"], self.counts["curve"], lam) for lam in LAMBDAS}
        weight = min(scores, key=scores.get)
        return {
            "lambda": weight,
            **{f"{name}_perplexity": mixture_perplexity(lp, self.counts[name], weight) for name, lp in neural.items()},
            "neural": {f"{name}_perplexity": math.exp(-lp.mean().item()) for name, lp in neural.items()},
            "curve_by_lambda": scores,
            "with_cache": [self.with_caches(neural, orders) for orders in CACHE_ORDERS],
        }

    def with_caches(self, neural: dict, orders: int) -> dict:
        """lam and kappa_1 ... kappa_N chosen together on the curve subset, and the perplexities at them."""
        grids = itertools.product(LAMBDAS, *CACHE_WEIGHTS[:orders])
        nll = {
            (lam, *kappas): float(
                cached_mixture_nll(neural["curve"], self.counts["curve"], self.caches["curve"][:orders], lam, kappas)
            )
            for lam, *kappas in grids
        }
        lam, *kappas = min(nll, key=nll.get)
        return {
            "orders": orders,
            "window": CACHE_WINDOW,
            "lambda": lam,
            "cache_weights": kappas,
            **{
                f"{name}_perplexity": math.exp(
                    float(cached_mixture_nll(lp, self.counts[name], self.caches[name][:orders], lam, kappas))
                )
                for name, lp in neural.items()
            },
        }

    def on_point(self, callback: harness.CpuBudget, model) -> None:
        """The mixture at every budget point the curve's newest point reaches."""
        point = callback.curve[-1]
        reached = [p for p in self.pending if point["cpu_seconds"] >= p]
        if reached:
            mixed = self.evaluate(model)
            for seconds in reached:
                self.points.append({"budget_cpu_seconds": seconds, "cpu_seconds": point["cpu_seconds"], **mixed})
                self.pending.remove(seconds)


def run_arm(
    arm: str,
    settings: Settings,
    recipe: harness.SaffuRecipe,
    tokenizer,
    data,
    extra_eval,
    out: Path,
    tag: str = "",
    save_models: Path | None = None,
):
    """One arm; `tag` names a variant (an ablation: its results file is ARM-TAG.json). With `save_models` a
    backprop arm's model as scored (its best weights) and the tokenizer are saved to SAVE_MODELS/ARM-TAG."""
    key = f"{arm}-{tag}" if tag else arm
    name = ARM_NAMES.get(arm, arm) + (f" [{tag}]" if tag else "")
    head = {"arm": name, "key": key, "base": arm, "settings": asdict(settings), "recipe": asdict(recipe)}
    head["train_blocks"] = len(data["train"])
    writer = ArmWriter(out / "long_budget" / f"{key}.json", head)
    if arm == "counts":
        results = [harness.bigram_arm(data, len(tokenizer))]
        results += [harness.kneser_ney_arm(data, len(tokenizer), order) for order in KNESER_NEY_ORDERS]
        writer.write({"results": results}, complete=True)
        return
    budget = settings.budget(recipe.seed)
    torch.manual_seed(recipe.seed)
    saffu = harness.saffu_model(tokenizer, recipe.model)
    head["parameters"] = harness.count_parameters(saffu)
    positions = data["train"][0]["input_ids"].shape[0]
    scoring = {"extra_eval": extra_eval, "on_point": writer.on_point}
    if arm == "saffu-warm":
        head["warm_start"] = harness.warm_start_arm(saffu, data, recipe, budget)
        head["parameters"] = head["warm_start"]["parameters"]  # the tables as the warm start sized them
        result = harness.train_warm_saffu(
            saffu,
            data,
            budget,
            recipe,
            head["warm_start"]["cpu_seconds"],
            **scoring,
        )
    elif arm == "saffu-backprop":
        result = harness.train_with_budget(saffu, data, budget, settings.backprop_only_learning_rate, **scoring)
    else:
        shape = (
            (2, 128, 4)
            if arm in ("gpt2-small", MIXTURE)
            else (settings.gpt2_equal_layers, settings.gpt2_equal_dims, settings.gpt2_equal_heads)
        )
        gpt2 = harness.gpt2_model(tokenizer, positions, *shape)
        head["saffu_parameters"] = harness.count_parameters(saffu)
        head["parameters"] = harness.count_parameters(gpt2)
        if arm == MIXTURE:
            mixture = KneserNeyMixture(data, extra_eval, len(tokenizer), settings.curve_blocks, budget.checkpoints)
            head["kneser_ney"], head["mixture"] = mixture.kneser_ney, mixture.points  # written at every point

            def on_point(callback, model):
                mixture.on_point(callback, model)
                writer.on_point(callback, model)

            scoring["on_point"] = on_point
        result = harness.train_with_budget(gpt2, data, budget, settings.gpt2_learning_rate, **scoring)
        if arm == MIXTURE:  # the best weights, restored by early stopping
            result["mixture_final"] = mixture.evaluate(gpt2)
    writer.write(result, complete=True)
    if save_models is not None:
        trained = saffu if arm.startswith("saffu") else gpt2
        trained.save_pretrained(save_models / key)
        tokenizer.save_pretrained(save_models / key)


# -- the report ---------------------------------------------------------------------------------------


def value_at(result: dict, seconds: float) -> tuple[float, str]:
    """Validation perplexity (curve subset) of the arm at `seconds` CPU-s: the first curve point at or after it;
    an arm that stopped earlier keeps its best point (early stopping restored those weights)."""
    for point in result["curve"]:
        if point["cpu_seconds"] >= seconds:
            return point["validation_perplexity"], ""
    if result.get("complete"):
        return result["best_point"]["validation_perplexity"], " (stopped)"
    return float("nan"), " (not reached)"


def first_reaching(result: dict, perplexity: float) -> float | None:
    return next((p["cpu_seconds"] for p in result["curve"] if p["validation_perplexity"] <= perplexity), None)


def final_perplexity(result: dict) -> tuple[float, str]:
    """The best checkpoint's full-validation perplexity; for an arm stopped before its end (partial file), the
    best curve-subset value it reached."""
    if "validation_perplexity" in result:
        return result["validation_perplexity"], ""
    return result["best_point"]["validation_perplexity"], " (partial: best curve point)"


def target(name: str, met: bool | None, numbers: str) -> dict:
    """A target row; `met` None when the run did not measure it."""
    return {"target": name, "met": met, "numbers": numbers}


def check_targets(saffu: dict, arms: dict, counts: dict, variants: dict) -> list[dict]:
    """The first session's targets for the SAFFU arm `saffu` against the GPT-2 arms and the counts."""
    gpt2 = [arms[k] for k in ("gpt2-small", "gpt2-equal") if k in arms]
    rows = []
    for seconds in BUDGET_POINTS:
        ours, note = value_at(saffu, seconds)
        theirs = [(value, g["arm"] + n) for g in gpt2 for value, n in [value_at(g, seconds)] if value == value]
        best, name = min(theirs) if theirs else (float("nan"), "")
        measured = ours == ours and best == best
        rows.append(
            target(
                f"SAFFU warm start + backprop <= 0.8x the better GPT-2 at {seconds:.0f} CPU-s",
                ours <= 0.8 * best if measured else None,
                f"{ours:.1f}{note} vs 0.8 x {best:.1f} = {0.8 * best:.1f} ({name})",
            )
        )
    ours, note = final_perplexity(saffu)
    best, name = min((final_perplexity(g)[0], g["arm"] + final_perplexity(g)[1]) for g in gpt2)
    rows.append(
        target(
            "SAFFU warm start + backprop <= 0.8x the better GPT-2 at the end (best checkpoints)",
            ours <= 0.8 * best,
            f"{ours:.1f}{note} vs 0.8 x {best:.1f} = {0.8 * best:.1f} ({name})",
        )
    )
    trigram = counts["Kneser-Ney 3-gram"]["validation_perplexity"]
    rows.append(
        target(
            "SAFFU warm start + backprop (best checkpoint) beats the Kneser-Ney trigram",
            ours < trigram,
            f"{ours:.1f}{note} vs {trigram:.1f}",
        )
    )
    best_gpt2 = min(gpt2, key=lambda g: g["best_point"]["validation_perplexity"])
    goal, when = best_gpt2["best_point"]["validation_perplexity"], best_gpt2["best_point"]["cpu_seconds"]
    reached = first_reaching(saffu, goal)
    rows.append(
        target(
            f"SAFFU reaches the best GPT-2 arm's final validation ppl ({best_gpt2['arm']}) >= 3x sooner",
            reached is not None and 3 * reached <= when,
            f"GPT-2 {goal:.1f} (curve subset) at {when:.0f} CPU-s; SAFFU "
            + (f"at {reached:.0f} CPU-s" if reached is not None else "never"),
        )
    )
    timed = [
        r for r in (saffu, *variants.values()) if {"frozen", "unfrozen"} <= r.get("steps_per_cpu_second", {}).keys()
    ]
    if timed:
        speed = timed[0]["steps_per_cpu_second"]
        rows.append(
            target(
                "frozen+cached steps >= 2x as fast as unfrozen steps (same run)",
                speed["frozen"] >= 2 * speed["unfrozen"],
                f"{speed['frozen']:.3f} vs {speed['unfrozen']:.3f} steps/CPU-s "
                f"({speed['frozen'] / speed['unfrozen']:.2f}x, {timed[0]['arm']})",
            )
        )
    return rows


def mixture_at(mixture: dict, seconds: float) -> tuple[dict | None, str]:
    """The mixture's scores at a budget point (`KneserNeyMixture`); for a complete run that stopped before it,
    its best checkpoint's (as `value_at`)."""
    for point in mixture.get("mixture", []):
        if point["budget_cpu_seconds"] == seconds:
            return point, ""
    if mixture.get("complete"):
        return mixture["mixture_final"], " (stopped)"
    return None, " (not reached)"


def mixture_final(mixture: dict) -> tuple[dict | None, str]:
    """The mixture of the best checkpoint; of a partial file, its newest budget point."""
    if "mixture_final" in mixture:
        return mixture["mixture_final"], ""
    points = mixture.get("mixture", [])
    return (points[-1], f" (partial: at {points[-1]['cpu_seconds']:.0f} CPU-s)") if points else (None, "")


def mixture_targets(saffu: dict, mixture: dict) -> list[dict]:
    """The SAFFU (curve subset) below the GPT-2 + KN3 mixture (curve subset, lam chosen there) at each budget point."""
    rows = []
    for seconds in BUDGET_POINTS:
        ours, note = value_at(saffu, seconds)
        theirs, their_note = mixture_at(mixture, seconds)
        measured = ours == ours and theirs is not None
        numbers = f"{ours:.1f}{note} vs " + (
            f"{theirs['curve_perplexity']:.1f}{their_note} (lam {theirs['lambda']:.2f} on GPT-2)"
            if theirs is not None
            else f"nothing{their_note}"
        )
        rows.append(
            target(
                f"SAFFU warm start + backprop below the GPT-2 2x128 + Kneser-Ney 3-gram mixture at {seconds:.0f} CPU-s",
                ours < theirs["curve_perplexity"] if measured else None,
                numbers,
            )
        )
    return rows


def mixture_lines(mixture: dict, tag: str = "") -> list[str]:
    """The mixture at every budget point: lam, and the GPT-2 alone and the mixture on every split (`tag`: a tagged
    run's, shown in the heading)."""
    kn = mixture["kneser_ney"]
    splits = ("curve", *SCORED)
    rows = []
    labelled = [(f"{s:.0f}", *mixture_at(mixture, s)) for s in BUDGET_POINTS] + [
        ("best checkpoint", *mixture_final(mixture))
    ]
    cache_rows = []
    for label, point, note in labelled:
        if point is None:
            rows.append([label + note, *[""] * (2 + 2 * len(splits))])
            continue
        seconds = point.get("cpu_seconds", (mixture.get("best_point") or {}).get("cpu_seconds"))  # final: the best's
        when = f"{seconds:.0f}" if seconds is not None else ""
        rows.append(
            [
                label + note,
                when,
                f"{point['lambda']:.2f}",
                *(f"{point['neural'][f'{split}_perplexity']:.1f}" for split in splits),
                *(f"{point[f'{split}_perplexity']:.1f}" for split in splits),
            ]
        )
        for cache in point.get("with_cache", []):
            kappas = " / ".join(f"{kappa:.2f}" for kappa in cache["cache_weights"])
            cache_rows.append(
                [
                    label + note,
                    "1" if cache["orders"] == 1 else f"1-{cache['orders']}",
                    f"{cache['lambda']:.2f} / {kappas}",
                ]
                + [f"{cache[f'{split}_perplexity']:.1f}" for split in splits]
            )
    names = {"curve": "curve subset", "validation": "validation", "test": "test", "ood": "out-of-domain"}
    header = [
        "budget (CPU-s)",
        "at CPU-s",
        "lam (GPT-2)",
        *(f"GPT-2: {names[s]}" for s in splits),
        *(f"mixture: {names[s]}" for s in splits),
    ]
    return [
        "",
        f"## GPT-2 2x128 + Kneser-Ney 3-gram, interpolated{f' [{tag}]' if tag else ''}",
        "",
        "- p = lam p_GPT-2 + (1 - lam) p_KN3 per token; lam on a grid of 0.05 steps, chosen on the curve subset at "
        "each budget point (the first curve point at or after it; evaluation not counted), then scored at that lam; "
        "the GPT-2 2x128 trained again for this arm (the same recipe and seed as the GPT-2 2x128 arm)",
        f"- KN3: {kn['discounting']}, fitted on the same train blocks ({kn['parameters']:,} n-grams, "
        f"{kn['cpu_seconds']:.1f} CPU-s); alone: curve subset {kn['curve_perplexity']:.1f}, validation "
        f"{kn['validation_perplexity']:.1f}, test {kn['test_perplexity']:.1f}, "
        f"out-of-domain {kn['ood_perplexity']:.1f}",
        "",
        *harness.markdown_table(header, rows),
        *(
            [
                "",
                "With caches: p^n = (1 - kappa_n) p^(n-1) + kappa_n p_Kn, the caches of orders 1 ... N over the "
                f"block's last {CACHE_WINDOW} tokens (the SAFFU's `neural_mixture_cache_window` and "
                "`neural_mixture_cache_order`, uniform recency), lam and the kappas chosen together on the curve "
                "subset:",
                "",
                *harness.markdown_table(
                    [
                        "budget (CPU-s)",
                        "cache orders",
                        "lam / kappas",
                        *(f"mixture + caches: {names[s]}" for s in splits),
                    ],
                    cache_rows,
                ),
            ]
            if cache_rows
            else []
        ),
    ]


def ablation_lines(variants: dict, arms: dict) -> list[str]:
    """Each variant (ARM-TAG) beside its base arm: curve values at the budget points it reached, and its best."""
    if not variants:
        return []
    rows = []
    for _, variant in sorted(variants.items()):
        base = arms.get(variant.get("base"))
        points = [p for p in BUDGET_POINTS if p <= variant["settings"]["budget_cpu_seconds"]]
        for result in (base, variant):
            if result is not None:
                values = (value_at(result, p) for p in points)
                best = result.get("best_point") or {}
                rows.append(
                    [
                        result["arm"],
                        f"{result['parameters']:,}" if "parameters" in result else "",
                        "; ".join(f"{p:.0f} s: {v:.1f}{note}" for p, (v, note) in zip(points, values, strict=True)),
                        f"{best.get('validation_perplexity', float('nan')):.1f}",
                    ]
                )
    return [
        "",
        "## Ablations (one part changed; validation ppl of the curve subset)",
        "",
        *harness.markdown_table(["arm", "parameters", "at CPU-s", "best"], rows, "lrlr"),
    ]


def calibration_lines(files: dict) -> list[str]:
    """The arms whose gate was fitted on the validation split after training (`calibrate_gate`): the fit, and
    their best weights' scores before it beside the main table's (after it)."""
    rows = [
        [
            r["arm"],
            f"{r['gate_calibration']['gate_scale']:.3f}",
            f"{r['gate_calibration']['gate_shift']:+.3f}",
            *(
                f"{r['uncalibrated'][f'{split}_perplexity']:.2f} -> {r[f'{split}_perplexity']:.2f}"
                for split in SCORED
                if f"{split}_perplexity" in r
            ),
        ]
        for r in files.values()
        if "gate_calibration" in r
    ]
    if not rows:
        return []
    return [
        "",
        "## Gate calibration",
        "",
        "- the best weights' gate lambda_t = sigmoid(a s_t + d), a and d fitted on the full validation split "
        "(`calibrate_gate`, hf_saffu.calibration; not counted in the CPU budget); the curve is the gate as trained",
        "",
        *harness.markdown_table(["arm", "a", "d", *(f"{split}: before -> after" for split in SCORED)], rows),
    ]


def arm_row(r: dict) -> list[str]:
    """A backprop arm's row of the report's main table."""
    speed = r.get("steps_per_cpu_second", {})
    return [
        r["arm"] + ("" if r.get("complete") else " (stopped before its end)"),
        f"{r['parameters']:,}" if "parameters" in r else "",
        f"{r['epochs']:.2f}" if "epochs" in r else f"step {r['curve'][-1]['step']}",
        f"{r['best_point']['cpu_seconds']:.0f}" if r.get("best_point") else "",
        *(f"{r[f'{split}_perplexity']:.1f}" if f"{split}_perplexity" in r else "" for split in SCORED),
        ", ".join(f"{phase} {value:.3f}" for phase, value in speed.items()),
    ]


def report(out: Path, targets_arm: str = "saffu-warm", targets_mixture: str = MIXTURE) -> dict:
    """LONG_BUDGET.md, long_budget.json and long_budget.png from the arms' files in out/long_budget; the targets
    are those of the SAFFU file `targets_arm` (ARM or ARM-TAG) against the mixture file `targets_mixture`."""
    files = {path.stem: json.loads(path.read_text()) for path in sorted((out / "long_budget").glob("*.json"))}
    chosen = (("--targets-arm", targets_arm, "saffu-warm"), ("--targets-mixture", targets_mixture, MIXTURE))
    for flag, key, base in chosen:
        if key != base and key not in files:  # a default may not have run yet
            raise SystemExit(f"error: {flag} {key}: no results file {out / 'long_budget' / key}.json")
        if key in files and files[key].get("base") != base:
            raise SystemExit(f"error: {flag} {key}: a {files[key].get('base')} run, not a {base} run")
    saffu = files.get(targets_arm)
    counts = {r["arm"]: r for r in files.pop("counts", {}).get("results", [])}
    target_mixture = files.get(targets_mixture)
    mixture = files.pop(MIXTURE, None)
    arms = {key: files[key] for key in ARMS if key in files}
    tagged_mixtures = {key.removeprefix(f"{MIXTURE}-"): r for key, r in files.items() if key.startswith(f"{MIXTURE}-")}
    variants = {key: r for key, r in files.items() if key not in arms and not key.startswith(f"{MIXTURE}-")}
    rows = [arm_row(r) for r in arms.values()]
    if mixture is not None:
        alone = {**mixture, "arm": "GPT-2 2x128 (alone, the mixture's run)"}
        mixed, note = mixture_final(mixture)
        rows.append(arm_row(alone))
        if mixed is not None:
            row = arm_row({**alone, **{f"{s}_perplexity": mixed[f"{s}_perplexity"] for s in SCORED}})
            row[0] = f"{mixture['arm']} (lam {mixed['lambda']:.2f} on GPT-2){note}"
            row[1] += f" + {mixture['kneser_ney']['parameters']:,} n-grams"
            rows.append(row)
    for name, r in counts.items():
        rows.append(
            [
                name,
                f"{r['parameters']:,}",
                "1 pass",
                f"{r['cpu_seconds']:.1f}",
                f"{r['validation_perplexity']:.1f}",
                f"{r['test_perplexity']:.1f}",
                "",
                "",
            ]
        )
    header = [
        "arm",
        "parameters",
        "epochs",
        "CPU-s at best",
        "validation ppl",
        "test ppl",
        "out-of-domain ppl",
        "steps / CPU-s",
    ]
    points = [*BUDGET_POINTS]
    curve_rows = [
        [r["arm"], *(f"{v:.1f}{note}" for v, note in (value_at(r, s) for s in points))] for r in arms.values()
    ]
    mixture_curve = []
    if mixture is not None:
        curve_rows.append([alone["arm"], *(f"{v:.1f}{note}" for v, note in (value_at(mixture, s) for s in points))])
        at = [mixture_at(mixture, s) for s in points]
        curve_rows.append(
            [mixture["arm"], *(f"{p['curve_perplexity']:.1f}{note}" if p else note.strip() for p, note in at)]
        )
        mixture_curve = [
            {"cpu_seconds": p["cpu_seconds"], "validation_perplexity": p["curve_perplexity"]}
            for p in mixture["mixture"]
        ]
    complete = saffu is not None and any(k in arms for k in ("gpt2-small", "gpt2-equal")) and counts
    targets = check_targets(saffu, arms, counts, variants) if complete else []
    if target_mixture is not None and saffu is not None:
        targets += mixture_targets(saffu, target_mixture)
    any_arm = next(iter(files.values()), {})
    lines = [
        "- every arm's own command and commit are in its file under long_budget/; this report: "
        f"`python -m training.long_budget --report --targets-arm {targets_arm} --targets-mixture {targets_mixture}`",
        f"- settings: `{any_arm.get('settings')}`",
        "- time = process CPU seconds (warm start included, evaluation excluded); arms run as separate processes, "
        "torch threads 1 each, often more processes than cores (each arm's clock counts its own CPU time, but "
        "sharing the cores slows a CPU-second somewhat)",
        "- perplexities of each arm's best checkpoint (early stopping on the curve subset); out-of-domain = "
        "Tiny Shakespeare with the Brown tokenizer",
        "",
        *harness.markdown_table(header, rows),
        "",
        "## Validation perplexity (curve subset) at fixed CPU budgets",
        "",
        *harness.markdown_table(["arm", *(f"{p:.0f} CPU-s" for p in points)], curve_rows),
        "",
        "## Targets",
        "",
        f"Of {saffu['arm'] if saffu else targets_arm} against the other arms and {targets_mixture}.",
        "",
        *(harness.targets_table(targets) if targets else ["(not all arms have run yet)"]),
        *(mixture_lines(mixture) if mixture is not None else []),
        *(line for tag in sorted(tagged_mixtures) for line in mixture_lines(tagged_mixtures[tag], tag)),
        *ablation_lines(variants, arms),
        *calibration_lines({**arms, **variants}),
        "",
        "![curves](long_budget.png)",
    ]
    payload = {"arms": arms, "counts": counts, "mixture": mixture, "targets": targets}
    harness.write_results(
        out / "LONG_BUDGET.md", out / "long_budget.json", "Brown long-budget benchmark", lines, payload
    )
    plot = [*arms.values(), *({**r, "count_based": True} for r in counts.values())]
    if mixture_curve:
        plot.append({"arm": f"{mixture['arm']} (lam on the curve subset)", "curve": mixture_curve})
    harness.plot_curves(plot, out / "long_budget.png", "Brown, towards convergence")
    for t in targets:
        print(f"{ {True: 'met', False: 'MISSED', None: 'not measured'}[t['met']]:12} {t['target']}: {t['numbers']}")
    return payload


def parse_setting(item: str) -> tuple[str, object]:
    """ "hidden_bits=256" -> ("hidden_bits", 256) (the value read as YAML)."""
    key, separator, value = item.partition("=")
    if not separator:
        raise SystemExit(f"error: --set takes KEY=VALUE, got {item!r}")
    return key, yaml.safe_load(value)


def with_settings(recipe: harness.SaffuRecipe, settings: dict) -> harness.SaffuRecipe:
    """The recipe with `settings` applied: a recipe field (a learning rate) or else a model config key (the warm
    start's fields among them, `SaffuRecipe.warm_start_recipe`); any other key is an error naming it."""
    recipe_fields = set(harness.SaffuRecipe.__dataclass_fields__) - {"model"}
    model_keys = {name for name, *_ in config_parameters()}
    unknown = sorted(set(settings) - recipe_fields - model_keys)
    if unknown:
        raise SystemExit(
            f"error: --set {unknown[0]}: neither a SaffuConfig field nor one of the recipe's "
            f"({', '.join(sorted(recipe_fields))})"
        )
    fields = {key: value for key, value in settings.items() if key in recipe_fields}
    model = {key: value for key, value in settings.items() if key not in fields}
    return replace(recipe, **fields, model={**recipe.model, **model})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--report", action="store_true", help="only write the report from the arms' files")
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="override a SAFFU model config key or a recipe field such as learning_rate (ablations); repeatable: "
        "--set a=1 b=2 and --set a=1 --set b=2 are the same",
    )
    parser.add_argument("--targets-arm", default="saffu-warm", help="the report's SAFFU file for the targets (ARM-TAG)")
    parser.add_argument("--targets-mixture", default=MIXTURE, help="the report's mixture file for the targets")
    parser.add_argument("--tag", default="", help="name of a variant: its results go to ARM-TAG.json")
    parser.add_argument(
        "--ood-file", type=Path, default=DEFAULT_OOD_FILE, help="out-of-domain text, one document a line"
    )
    parser.add_argument(
        "--save-models", type=Path, help="save each backprop arm's scored model and the tokenizer to DIR/ARM-TAG"
    )
    defaults = Settings()
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    harness.start_run(args, argv, __name__)
    if args.report:
        report(args.output_dir, args.targets_arm, args.targets_mixture)
        return
    settings = Settings(**{name: getattr(args, name) for name in asdict(defaults)})
    if not args.ood_file.is_file():
        raise SystemExit(f"error: no out-of-domain file {args.ood_file}: pass --ood-file FILE")
    recipe = harness.read_config(args.config)
    if args.set:
        recipe = with_settings(recipe, dict(parse_setting(item) for item in args.set))
    tokenizer, data = harness.load_data(harness.data_dir_or_exit(args.data_dir), recipe.vocab_size, recipe.block_size)
    extra_eval = {"ood": ood_blocks(args.ood_file, tokenizer, recipe.block_size)}
    for arm in args.arms:
        run_arm(arm, settings, recipe, tokenizer, data, extra_eval, args.output_dir, args.tag, args.save_models)


if __name__ == "__main__":
    main()
