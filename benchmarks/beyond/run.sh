#!/bin/bash
# usage: run.sh NAME [extra flags...]
name=$1; shift
cd /work/wt-beyond
/usr/bin/time -v env PYTHONPATH=/work/wt-beyond /work/main/.venv/bin/python -m hf_saffu.cli train configs/brown.yaml \
  --model_name_or_path /tmp/beyond/warm --tokenizer_name_or_path /tmp/beyond/warm \
  --train_files /work/shared/data/brown/train.txt --validation_files /work/shared/data/brown/validation.txt \
  --test_files /work/shared/data/brown/test.txt --output_dir /tmp/beyond/$name --disable_tqdm true "$@" > /tmp/beyond/$name.log 2>&1
