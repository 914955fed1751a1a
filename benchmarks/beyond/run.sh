#!/bin/bash
# The backprop runs of BEYOND_COUNTING.md: 300 steps of configs/brown.yaml from the warm-started model WARM.
# usage (from the repository root): benchmarks/beyond/run.sh NAME [extra flags...]
# BROWN: the folder of the benchmark's split (default ../shared/data/brown); WARM: the warm start's output_dir
# (default /tmp/beyond/warm); RUNS: where NAME/ and NAME.log go (default /tmp/beyond). The log ends with the
# run's CPU time (bash's `time`: user and sys).
name=$1; shift
BROWN=${BROWN:-../shared/data/brown}
WARM=${WARM:-/tmp/beyond/warm}
RUNS=${RUNS:-/tmp/beyond}
mkdir -p "$RUNS"
{ time hf-saffu train configs/brown.yaml --model_name_or_path "$WARM" --tokenizer_name_or_path "$WARM" \
  --train_files "$BROWN/train.txt" --validation_files "$BROWN/validation.txt" --test_files "$BROWN/test.txt" \
  --output_dir "$RUNS/$name" --disable_tqdm true "$@"; } > "$RUNS/$name.log" 2>&1
