#!/bin/bash
# The neural-mixture runs of BEYOND_COUNTING.md: warm start + 300 steps of configs/brown.yaml from scratch.
# usage (from the repository root): benchmarks/beyond/mixture_run.sh NAME [extra flags...]
# BROWN: the folder of the benchmark's split (default ../shared/data/brown); results in /tmp/mix/NAME.
name=$1; shift
BROWN=${BROWN:-../shared/data/brown}
mkdir -p /tmp/mix
hf-saffu train configs/brown.yaml --train_files "$BROWN/train.txt" --validation_files "$BROWN/validation.txt" \
  --test_files "$BROWN/test.txt" --output_dir "/tmp/mix/$name" --disable_tqdm true --save_strategy no "$@" \
  > "/tmp/mix/$name.log" 2>&1
