#!/usr/bin/env bash
# Every GPU bench of issue #16 in one go, on one GPU, in under five minutes; the log goes to
# outputs/gpu_check.log (and to $OUT/ when that is set, as on the device machine).
#
#   bash scripts/gpu_check.sh --prepare   # here, with the network: the wheels the GPU machine lacks (trl, datasets,
#                                         # dill, multiprocess), into .whl/ (the tokenizer ships in caikit/data/)
#   bash scripts/gpu_check.sh             # on the GPU machine, with .whl carried along
#   bash scripts/gpu_check.sh --smoke     # anywhere: the same steps on a tiny model, to check the script itself
#
# Each bench runs under its own time limit (seconds below; together 295, the issue's five minutes); one
# that runs out is logged as such and the next one starts. Benches build random-init models
# (--random-init), so no weights are needed.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
PY=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
    mkdir -p "$WHEELS"
    platforms=""
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        platforms="$platforms --platform $p"
    done
    # versions as in the development virtualenv; the GPU image has torch, transformers, accelerate and peft
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
        -d "$WHEELS" trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 || exit 1
    du -sh "$WHEELS"
    echo "now: run 'bash scripts/gpu_check.sh' on the GPU machine with carry [\".whl\"]"
    exit 0
fi

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p outputs
LOG=outputs/gpu_check.log

bench() {  # bench NAME SECONDS COMMAND...
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    timeout "$limit" "$@"
    local rc=$?
    [ $rc -eq 124 ] && echo "=== $name: TIMED OUT after ${limit}s" || echo "=== $name: exit $rc after $((SECONDS - started))s"
}

if [ $SMOKE = 1 ]; then
    MODEL=tiny; GEN="--smoke"; GEN256="--smoke --batch-sizes 16 --rows plain,static,rollout,local"; PPO="--steps 2 --rollout-batch-size 4 --response-length 16"
    TRAIN="--smoke"; LONG=128
    ONLINE="--steps 2 --prompts-per-step 2 --num-generations 4 --response-length 16 --dpo-steps 2"
else
    MODEL=0.48b; GEN="--batch-sizes 64"; GEN256="--batch-sizes 256 --rows plain,static,rollout,local"
    PPO="--steps 3 --rollout-batch-size 64 --response-length 128 --num-generations 8 --ppo-epochs 1 --bf16"
    TRAIN="--bf16 --batch-size 8 --steps 10 --warmup 3"; LONG=1024
    ONLINE="--steps 3 --prompts-per-step 8 --num-generations 8 --response-length 128 --dpo-steps 8 --dpo-batch-size 8 --bf16"
fi
{
    echo "gpu_check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'| transformers', transformers.__version__, '| accelerate', accelerate.__version__)"
    $PY -c "import trl; print('trl', trl.__version__)" 2>/dev/null || echo "trl: not importable"
    bench generate-64 70 $PY scripts/bench_generate_local.py --random-init $MODEL $GEN
    bench generate-256 45 $PY scripts/bench_generate_local.py --random-init $MODEL $GEN256
    bench ppo-grpo 55 $PY scripts/bench_ppo.py --random-init $MODEL $PPO
    bench online-rlaif 40 $PY scripts/bench_online.py --random-init $MODEL $ONLINE
    bench train 50 $PY scripts/bench_train.py --random-init $MODEL --compare-trl $TRAIN
    bench train-1024 35 $PY scripts/bench_train.py --random-init $MODEL --compare-trl $TRAIN --synthetic --max-length $LONG
    echo "gpu_check done in ${SECONDS}s"
} 2>&1 | grep --line-buffered -v -E "Loading weights|Writing model shards" | tee "$LOG"
[ -n "${OUT:-}" ] && cp "$LOG" "$OUT/"
exit 0
