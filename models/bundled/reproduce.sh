#!/usr/bin/env bash
# Retrain the bundled shapes models on CPU with `curation finetune`, as they were trained.
# Usage: models/bundled/reproduce.sh [OUT_DIR]   (default: models/bundled)
# About 45 minutes on 2 CPU cores. Intermediate stages and training data go to a temp folder.
set -euo pipefail
out=${1:-models/bundled}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -c "
from curation.shapes import make_clean_split
make_clean_split(40000, 1, '$work/shapes-train.parquet')
make_clean_split(40000, 2, '$work/shapes-train-2.parquet')
"
common=(--batch-size 64 --group-column scene --holdout 0.02 --save-dtype fp16 --device cpu --threads 2)

# Captioner: the mini preset from random weights, then a second split at a lower rate.
curation finetune captioner --train "$work/shapes-train.parquet" --out "$work/captioner-1" \
  --base mini --lr 1e-3 --epochs 10 --max-steps 6000 "${common[@]}"
curation finetune captioner --train "$work/shapes-train-2.parquet" --out "$out/captioner" \
  --base "$work/captioner-1" --lr 2e-4 --epochs 4 --max-steps 2400 "${common[@]}"

# Filter: starts from the captioner (shared vision and text weights), then a second split.
curation finetune filter --train "$work/shapes-train.parquet" --out "$work/filter-1" \
  --base "$out/captioner" --lr 5e-4 --epochs 4 --max-steps 2000 "${common[@]}"
curation finetune filter --train "$work/shapes-train-2.parquet" --out "$out/filter" \
  --base "$work/filter-1" --lr 2e-4 --epochs 4 --max-steps 2000 "${common[@]}"
