#!/bin/bash
# The neural-mixture runs of BEYOND_COUNTING.md: warm start + 300 steps of configs/brown.yaml from scratch.
# usage (from the repository root): benchmarks/beyond/mixture_run.sh NAME [extra flags...]
# BROWN: the folder of the benchmark's split (default ../shared/data/brown); RUNS: where NAME/ and NAME.log go
# (default /tmp/mix).
name=$1; shift
BROWN=${BROWN:-../shared/data/brown}
RUNS=${RUNS:-/tmp/mix}
mkdir -p "$RUNS"
hf-saffu train configs/brown.yaml --train_files "$BROWN/train.txt" --validation_files "$BROWN/validation.txt" \
  --test_files "$BROWN/test.txt" --output_dir "$RUNS/$name" --disable_tqdm true --save_strategy no "$@" \
  > "$RUNS/$name.log" 2>&1
