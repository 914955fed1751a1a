"""Experimental research code, outside hf_saffu's stability promise.

The product is the SAFFU language model and its explicit warm start (`hf_saffu`, `hf-saffu train`). What
lives here reproduces results recorded in the design document and the benchmarks, and is tested, but its
names, arguments and saved formats may change or go without notice or deprecation:

- `hf_saffu.experimental.cogo`: composed global optimizers for modular addition (docs/DESIGN.md section 7);
  importing it registers "cogo" with `AutoConfig` and `AutoModel`.
- `hf_saffu.experimental.explicit_classifier`: one- and two-layer classifiers fitted by the explicit solution
  of softmax layers (benchmarks/DIGITS.md).

Importing `hf_saffu` or `hf_saffu.experimental` imports neither; import the submodule you need.
"""
