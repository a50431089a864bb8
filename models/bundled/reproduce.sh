#!/usr/bin/env bash
# Retrain the bundled shapes models on CPU with `curation finetune`, as they were trained.
# Usage: models/bundled/reproduce.sh [OUT_DIR]   (default: models/bundled)
# Under an hour on 2 CPU cores (about 55 min). Intermediate stages and training data go to a temp folder.
set -euo pipefail
out=${1:-models/bundled}
if [ -d .venv/bin ]; then PATH="$PWD/.venv/bin:$PATH"; fi  # the venv of `make setup`
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -c "
from curation.shapes import make_clean_split
make_clean_split(40000, 1, '$work/shapes-train.parquet')
make_clean_split(40000, 2, '$work/shapes-train-2.parquet')
make_clean_split(40000, 3, '$work/shapes-train-3.parquet')
"
# Thread counts are those the bundled models were trained with; they change speed and
# floating-point rounding, not the recipe.
common=(--batch-size 64 --group-column scene --holdout 0.02 --save-dtype fp16 --device cpu)

# Captioner: the mini preset from random weights, then a second split at a lower rate.
curation finetune captioner --train "$work/shapes-train.parquet" --out "$work/captioner-1" \
  --base mini --lr 1e-3 --epochs 10 --max-steps 6000 --threads 1 "${common[@]}"
curation finetune captioner --train "$work/shapes-train-2.parquet" --out "$out/captioner" \
  --base "$work/captioner-1" --lr 2e-4 --epochs 4 --max-steps 2400 --threads 2 "${common[@]}"

# Filter: starts from the captioner (shared vision and text weights), continues on a second
# split, then on a third with truncated texts as extra ITM negatives.
curation finetune filter --train "$work/shapes-train.parquet" --out "$work/filter-1" \
  --base "$out/captioner" --lr 5e-4 --epochs 5 --max-steps 3000 --threads 2 "${common[@]}"
curation finetune filter --train "$work/shapes-train-2.parquet" --out "$work/filter-2" \
  --base "$work/filter-1" --lr 2e-4 --epochs 5 --max-steps 2500 --threads 2 "${common[@]}"
curation finetune filter --train "$work/shapes-train-3.parquet" --out "$out/filter" \
  --base "$work/filter-2" --lr 2e-4 --epochs 5 --max-steps 2000 --truncated-negatives 0.25 \
  --threads 2 "${common[@]}"
