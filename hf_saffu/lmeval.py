"""`python -m hf_saffu.lmeval ARGS`: lm-evaluation-harness's `lm_eval` command (the `lmeval` extra), run in a
process where `import hf_saffu` has registered the SAFFU classes with the Auto classes, so that

    python -m hf_saffu.lmeval --model hf --model_args pretrained=MODEL_DIR,backend=causal --tasks TASKS

loads a saved SAFFU without `trust_remote_code=True` (which would run the code stored in MODEL_DIR instead of
the installed package's). `backend=causal` tells lm-eval the kind of model its name table does not list. In
Python, `import hf_saffu` before `lm_eval.simple_evaluate(model="hf", ...)` does the same.
"""

import sys

import hf_saffu  # noqa: F401  (registers "saffu" with AutoConfig, AutoModel and AutoModelForCausalLM)


def main(argv: list[str] | None = None) -> None:
    """Run lm_eval's command line with `argv` (default: this process's arguments)."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
