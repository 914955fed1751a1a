#!/bin/bash
# run.sh from scratch: the warm start and 300 steps of configs/brown.yaml, with WARM's tokenizer (the residual
# path's row of BEYOND_COUNTING.md). usage (from the repository root): benchmarks/beyond/run_res.sh NAME [flags...]
# BROWN, WARM, RUNS: as in run.sh.
name=$1; shift
BROWN=${BROWN:-../shared/data/brown}
WARM=${WARM:-/tmp/beyond/warm}
RUNS=${RUNS:-/tmp/beyond}
mkdir -p "$RUNS"
{ time hf-saffu train configs/brown.yaml --tokenizer_name_or_path "$WARM" \
  --train_files "$BROWN/train.txt" --validation_files "$BROWN/validation.txt" --test_files "$BROWN/test.txt" \
  --output_dir "$RUNS/$name" --disable_tqdm true "$@"; } > "$RUNS/$name.log" 2>&1
