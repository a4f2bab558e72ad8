#!/usr/bin/env bash
# The training stages of each model kind under plain torchrun, NCCL and one GPU per rank, on a box without Spark,
# Java, petastorm or MLflow (torch, numpy, pyarrow only). Prints the wall-time and throughput table (a row per
# model and stage, a total per model) and writes it, with the logs, under $OUT.
#
#   bench/gpu_train.sh [EXPORT_DIR [bench/train.py flags...]]   # EXPORT_DIR: made by `bin/python bench/train.py`
#                                                                 # (bench-output/train/export); e.g. --batch1 16384,
#                                                                 # --models 2ts,gru4rec,2ts-singlestage (default 2ts)
#
# Without a GPU it falls back to 2 CPU processes with gloo, which is how it is tested here.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-bench-output/train/export}
shift || true
OUT=${OUT:-bench-output/gpu}
RUNS=${RUNS:-$(mktemp -d)}   # checkpoints and models of the runs (not reported)
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
test -f "$DATA/layouts.json" || { echo "no exported data in $DATA: run bin/python bench/train.py first" >&2; exit 2; }

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 0 ]; then
    FLAGS=(--use-gpu); PROCS=(1); [ "$GPUS" -gt 1 ] && PROCS+=("$GPUS")
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
else
    FLAGS=(); PROCS=(1 2); echo "no GPU visible: CPU processes with gloo"
fi
LOGS=()
for N in "${PROCS[@]}"; do
    "$PY" -m torch.distributed.run --standalone --nproc_per_node="$N" \
        bench/train.py ranks --data "$DATA" --out "$RUNS" "${FLAGS[@]}" "$@" 2>&1 | tee "$OUT/log-$N.txt"
    LOGS+=("$OUT/log-$N.txt")
done
"$PY" bench/train.py report --out "$OUT" --logs "${LOGS[@]}"
