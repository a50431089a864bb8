#!/usr/bin/env bash
# Retrain the bundled shapes models on CPU with `curation finetune`, as they were trained.
# Usage: models/bundled/reproduce.sh [OUT_DIR]   (default: models/bundled)
# About two hours on 2 CPU cores (see models/bundled/README.md for the time of each
# stage). Intermediate stages and training data go to a temp folder.
set -euo pipefail
out=${1:-models/bundled}
if [ -d .venv/bin ]; then PATH="$PWD/.venv/bin:$PATH"; fi  # the venv of `make setup`
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -c "
from curation.shapes import make_clean_split
for seed in range(1, 12):
    name = 'shapes-train' + ('' if seed == 1 else f'-{seed}')
    make_clean_split(40000, seed, f'$work/{name}.parquet')
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
curation finetune filter --train "$work/shapes-train-3.parquet" --out "$work/filter-3" \
  --base "$work/filter-2" --lr 2e-4 --epochs 5 --max-steps 2000 --truncated-negatives 0.25 \
  --threads 2 "${common[@]}"

# Composition: texts whose words all belong to the image but bind wrongly as negatives
# (exact exchanges between objects, checked with the shapes parser), partial but true texts
# and reworded texts as positives (from stage 6 on, unreadable texts as negatives). Stages 4
# and 5 kept fp32 weights between stages. One epoch of 39,200 pairs is 612 steps.
composition=(--composition-negatives 1.0 --truncated-negatives 0.25 --text-domain shapes)
curation finetune filter --train "$work/shapes-train-4.parquet" --out "$work/filter-4" \
  --base "$work/filter-3" --lr 2e-4 --epochs 1 --max-steps 300 --seed 1 \
  --partial-positives 0.25 --threads 1 "${composition[@]}" "${common[@]}" --save-dtype fp32
curation finetune filter --train "$work/shapes-train-5.parquet" --out "$work/filter-5" \
  --base "$work/filter-4" --lr 3e-4 --epochs 1 --max-steps 600 --seed 2 \
  --partial-positives 0.5 --reworded-positives 0.5 --threads 1 "${composition[@]}" \
  "${common[@]}" --save-dtype fp32
curation finetune filter --train "$work/shapes-train-6.parquet" --out "$work/filter-6" \
  --base "$work/filter-5" --lr 3e-4 --epochs 1 --max-steps 800 --seed 3 \
  --partial-positives 0.5 --reworded-positives 0.5 --unreadable-negatives 0.5 --threads 1 \
  "${composition[@]}" "${common[@]}"
curation finetune filter --train "$work/shapes-train-7.parquet" --out "$work/filter-7" \
  --base "$work/filter-6" --lr 3e-4 --epochs 1 --max-steps 800 --seed 4 \
  --partial-positives 0.5 --reworded-positives 0.5 --unreadable-negatives 0.5 --threads 1 \
  "${composition[@]}" "${common[@]}"
curation finetune filter --train "$work/shapes-train-8.parquet" --out "$work/filter-8" \
  --base "$work/filter-7" --lr 2e-4 --epochs 1 --max-steps 800 --seed 5 \
  --partial-positives 0.5 --reworded-positives 1.0 --unreadable-negatives 0.5 --threads 1 \
  "${composition[@]}" "${common[@]}"

# Three stages with every extra text: partial texts, rewordings and rephrasings as positives
# (the extra negatives reworded and rephrased as often), scrambled unreadable texts as
# negatives, at lower learning rates.
every=(--reworded-positives 1.0 --unreadable-negatives 1.0 --threads 1 --seed 7)
curation finetune filter --train "$work/shapes-train-9.parquet" --out "$work/filter-9" \
  --base "$work/filter-8" --lr 1e-4 --epochs 1 --max-steps 500 --partial-positives 0.5 \
  --rephrased-positives 0.25 "${every[@]}" "${composition[@]}" "${common[@]}"
curation finetune filter --train "$work/shapes-train-10.parquet" --out "$work/filter-10" \
  --base "$work/filter-9" --lr 5e-5 --epochs 1 --max-steps 300 --partial-positives 1.0 \
  --rephrased-positives 0.5 "${every[@]}" "${composition[@]}" "${common[@]}"
curation finetune filter --train "$work/shapes-train-11.parquet" --out "$out/filter" \
  --base "$work/filter-10" --lr 5e-5 --epochs 1 --max-steps 300 --partial-positives 1.0 \
  --rephrased-positives 1.0 "${every[@]}" "${composition[@]}" "${common[@]}"
