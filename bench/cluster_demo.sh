#!/usr/bin/env bash
# The steps of `make demo` as separate jobs against one Spark master, with the wall time of each:
# prepare ml-latest-small, train 2TS, train 2TS-Plus on 2TS's stage 1, register, validate, promote.
#
#   bench/cluster_demo.sh spark://127.0.0.1:7077 /abs/out   # a standalone cluster (make cluster-up): ranks on executors
#   bench/cluster_demo.sh 'local[2]' /abs/out               # the same steps in local mode, for comparison
#
# Each step is its own spark-submit (its own JVM start and Delta JAR resolution), as a scheduled job would run them.
set -euo pipefail
MASTER=${1:?usage: bench/cluster_demo.sh MASTER OUTPUT [DATA]}
OUT=${2:?usage: bench/cluster_demo.sh MASTER OUTPUT [DATA]}
DATA=${3:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/ml-latest-small}
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
export PATH="$VENV/bin:$PATH" SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1} PYSPARK_PYTHON=$VENV/bin/python \
    PYSPARK_DRIVER_PYTHON=$VENV/bin/python PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
LOCAL_MODE=true
[[ $MASTER == spark://* ]] && LOCAL_MODE=false
case $OUT in /*) ;; *) echo "OUTPUT must be an absolute path (every executor resolves it)"; exit 2;; esac
rm -rf "$OUT" && mkdir -p "$OUT"
TRACKING="sqlite:///$OUT/mlflow.db"
declare -a TIMES

step() {  # step NAME JOB ARGS...
    local name=$1; shift
    local started=$SECONDS
    if ! spark-submit --master "$MASTER" --conf spark.ui.enabled=false --conf spark.executorEnv.PYTHONPATH="$PYTHONPATH" \
            "$REPO/jobs/$1" "${@:2}" >"$OUT/$name.log" 2>&1
    then
        tail -20 "$OUT/$name.log"; echo "step $name failed; see $OUT/$name.log"; exit 1
    fi
    grep -E '^\{|^test: MRR|^validate:|^promote:|^register:' "$OUT/$name.log" || true
    TIMES+=("$name $((SECONDS - started))")
}
run_id() { grep -o '"run_id": "[^"]*"' "$OUT/$1.log" | tail -1 | cut -d'"' -f4; }

started=$SECONDS
step prepare prepare.py --source movielens --input "$DATA" --output "$OUT/data"
step train-2ts train.py --data "$OUT/data" --model 2ts --local-mode $LOCAL_MODE --tracking-uri "$TRACKING"
step train-2ts-plus train.py --data "$OUT/data" --model 2ts-plus --local-mode $LOCAL_MODE --tracking-uri "$TRACKING" \
    --stage1-model "$OUT/data/runs/2ts/stage1.pt"
step train-2ts-oos train.py --data "$OUT/data" --model 2ts-oos --local-mode $LOCAL_MODE --tracking-uri "$TRACKING"
step register register.py --data "$OUT/data" --tracking-uri "$TRACKING" --run-id "$(run_id train-2ts-oos)"
step validate validate.py --data "$OUT/data" --tracking-uri "$TRACKING"
step promote promote.py --data "$OUT/data" --tracking-uri "$TRACKING"
echo "master $MASTER (local_mode $LOCAL_MODE), system load (1, 5, 15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "${TIMES[@]}" "total $((SECONDS - started))" | column -t
