#!/usr/bin/env bash
# The GPU measurements of issue 16 (speed), prepared for a session that has a GPU; ~9 minutes on an H100/H200.
#
#   benchmarks/gpu_check.sh prepare     # on the development machine: the wheels the GPU image lacks, into .whl/
#   benchmarks/gpu_check.sh run         # on the GPU machine (device tool: carry [".whl"], timeout_s 600)
#
# Steps, most important first; each has its own time limit and the whole script stops starting new steps after
# BUDGET seconds (default 540), so a slow step never costs the results of the earlier ones:
#   A. resnet32x4->resnet8x4 KD under `fast`: kdbench step vs teacher cache vs CE (benchmarks.speed train)
#   B. the same run for 2 whole epochs + evaluation after a warm-up epoch, extrapolated to 240 epochs
#   C. the same pair under `full` (fp32 eager) against the references' loop (DataLoader + PIL, per-step .item())
#   D. K = 1/2/4/8 concurrent resnet56->resnet20 KD runs on the one GPU (benchmarks.speed concurrent), fp32 eager
#   E. no host sync in any method's training step under torch.cuda.set_sync_debug_mode("error")
#   F. nvJPEG decoding (the ImageNet gpu_decode backend) against libjpeg
#   G. the GPU calibration of the dry-run cost model (benchmarks.cost calibrate-gpu)
#   H. (if time is left) resnet56->resnet20 KD and resnet32x4->ShuffleV2 KD under `fast`, 2 epochs each
# Everything lands in results/gpu_check/ and is packed into $OUT/gpu_check.tgz (+ $OUT/gpu_check.log) at the end,
# also when a step fails or the time runs out.  Afterwards, on the development machine:
#   tar xzf <files_at>/gpu_check.tgz -C results && cp results/gpu_check/gpu_calibration.json benchmarks/results/
#   cp results/gpu_check/*.md benchmarks/results/      # the measured tables, committable
set -u
MODE=${1:-run}
WHEELS="jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0"

if [ "$MODE" = prepare ]; then
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS
    exit $?
fi

START=$(date +%s)
BUDGET=${BUDGET:-540}
PY=${PY:-python3}
RES=results/gpu_check
OUT=${OUT:-$RES/out}
mkdir -p "$RES" "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
LOG=$OUT/gpu_check.log
exec > >(tee "$LOG") 2>&1

pack() { tar czf "$OUT/gpu_check.tgz" -C results gpu_check --exclude gpu_check/out 2>/dev/null; echo "packed $(du -h "$OUT/gpu_check.tgz" | cut -f1)"; }
trap pack EXIT
elapsed() { echo $(( $(date +%s) - START )); }
step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local left=$(( BUDGET - $(elapsed) ))
    if [ "$left" -lt 30 ]; then echo "=== $name: skipped ($(elapsed) s used of $BUDGET)"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit} s, at $(elapsed) s)"
    timeout "$limit" "$@"; local rc=$?
    echo "=== $name: exit $rc at $(elapsed) s"
}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, lightning, torchvision, jsonargparse; print('torch', torch.__version__, 'lightning', lightning.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())" || exit 1

TRAIN="$PY -m benchmarks.speed train --device cuda --data-root /nonexistent --threads 8 --workers 12"
step "A fast r32x4->r8x4 KD step" 200 $TRAIN --pair 'resnet32x4->resnet8x4' --method KD --preset fast \
    --arms kdbench,cached,ce --images 4096 --steps 150 --warmup 40 --repeats 3 --out $RES/speed_gpu_fast_r32x4_r8x4_kd.md
step "B fast r32x4->r8x4 KD 2 epochs" 150 $TRAIN --pair 'resnet32x4->resnet8x4' --method KD --preset fast \
    --arms kdbench --epochs 2 --images 50000 --eval-images 10000 --out $RES/epochs_gpu_fast_r32x4_r8x4_kd.md
step "C full r32x4->r8x4 KD vs reference" 120 $TRAIN --pair 'resnet32x4->resnet8x4' --method KD --preset full \
    --arms kdbench,reference,ce --images 4096 --steps 100 --warmup 20 --repeats 3 --out $RES/speed_gpu_full_r32x4_r8x4_kd.md
step "D K runs per GPU" 150 $PY -m benchmarks.speed concurrent --device cuda --data-root /nonexistent --threads 16 \
    --pair 'resnet56->resnet20' --method KD --preset full --k 1 2 4 8 --images 4096 --steps 300 --warmup 30 \
    --out $RES/concurrent_gpu_full_r56_r20_kd.md
step "E host syncs (CUDA sync debug mode)" 150 env KDBENCH_SYNC_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider \
    tests/kd_modules/test_host_sync.py -k "not LetKD and not QuEST" -x --junitxml=$RES/host_sync_cuda.xml
step "F nvJPEG decode" 60 $PY -m pytest -q -p no:cacheprovider tests/datamodules/test_gpu_decode.py
step "G calibrate the cost model" 60 $PY -m benchmarks.cost calibrate-gpu $RES/speed_gpu_*.json --out $RES/gpu_calibration.json
step "H fast r56->r20 KD 2 epochs" 90 $TRAIN --pair 'resnet56->resnet20' --method KD --preset fast \
    --arms kdbench --epochs 2 --images 50000 --eval-images 10000 --out $RES/epochs_gpu_fast_r56_r20_kd.md
step "H fast r32x4->ShuffleV2 KD 2 epochs" 90 $TRAIN --table table2 --pair 'resnet32x4->ShuffleV2' --method KD \
    --preset fast --arms kdbench --epochs 2 --images 50000 --eval-images 10000 --out $RES/epochs_gpu_fast_r32x4_sv2_kd.md
echo "done in $(elapsed) s"
