"""Experiments on SAFFU, each one script run from the repository root as `python -m training.NAME`:

    benchmark             the Brown arms (n-grams, SAFFU warm start / backprop / both, GPT-2) under a CPU budget
    data_efficiency       warm start + backprop vs backprop only on growing shares of the training data
    ablate                a grid of SAFFU configurations around the config's model section (resumable)
    generation_benchmark  decoding state size and tokens/s: SAFFU vs GPT-2's KV cache
    explicit_digits       explicit softmax classifiers on digits vs gradient descent
    cogo_experiment       closed-form CoGO constructions vs what gradient descent finds
    forward_throughput    parameters and forward tokens/s of a SAFFU configuration

`harness` holds what they share (data, config, run metadata, CPU budgets, perplexity, baselines, tables);
`kneser_ney` the count-based n-gram arms. Results files go to benchmarks/ (Markdown + JSON).
"""
