#!/usr/bin/env bash
# The issue-#8 speed table in device calls of < 10 minutes, on ONE warm machine:
#
#   bash bench/gpu_speed_session.sh warm  OUT [SECONDS]   # call 1: fill the compile caches, time nothing
#   bash bench/gpu_speed_session.sh time  OUT [SECONDS]   # call 2 (within 30 s): fla + ours eager, alone on the GPU
#   bash bench/gpu_speed_session.sh time2 OUT [SECONDS]   # call 3: ours compiled, training path, GPU memory
#   bash bench/gpu_speed_session.sh all   OUT [SECONDS]   # or one call: warm WARM_S seconds, then time
#
# Carry [".whl"] (fla 0.6.0 + einops wheels). fla's Triton kernels take minutes to compile and
# autotune on first use (72-365 s per layer measured), torch.compile as long for ours: timed next
# to such work, eager steps ran 2-5x slow. So `warm` compiles everything in parallel processes
# without timing; the caches live in the ignored .cache/ of the working tree, which a warm
# machine keeps between calls (TRITON_CACHE_AUTOTUNING=1 keeps fla's autotune choices), and
# `time`/`time2` time one process at a time. Every part has its own time limit, rows stream to
# CSVs, and the CSVs + a log are copied to OUT whatever happens.
set -u
PHASE=${1:?usage: gpu_speed_session.sh warm|time|time2|all OUT [SECONDS]}
OUT=${2:?usage: gpu_speed_session.sh warm|time|time2|all OUT [SECONDS]}
BUDGET=${3:-540}
START=$(date +%s)
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$OUT" .cache && OUT=$(cd "$OUT" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fla \
  .whl/fla_core-*.whl .whl/flash_linear_attention-*.whl .whl/einops-*.whl || echo "no fla wheels: fla rows stay empty"
export PYTHONPATH="/tmp/fla:$PWD/src" PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1 \
  TRITON_CACHE_DIR="$PWD/.cache/triton" TORCHINDUCTOR_CACHE_DIR="$PWD/.cache/inductor"
W=/tmp/bench_gpu_$PHASE; rm -rf $W; mkdir -p $W
LOG="$OUT/$PHASE.log"
left() { echo $(( START + BUDGET - 25 - $(date +%s) )); }    # seconds to the deadline, 25 s kept to pack
B() { local lim=${KILL_AT:-$(left)}; [ "$lim" -gt 10 ] && timeout "$lim" python3 bench/bench_gpu.py --out $W --min-time 1 "$@" >>"$LOG" 2>&1; }
# what to run (environment overrides; space-separated lists)
FLA_ARCHS=(${FLA_ARCHS:-gla delta_net})            # fla's layers that train on Triton 3.6 / Hopper
FLA_FEATS=(${FLA_FEATS:-256 512 1024})              # each head size autotunes anew (~200 s per layer)
OURS=(${OURS:-delta_net gla gated_delta_net gated_delta_product mamba2 transformer})
EAGER_ARCHS=(${EAGER_ARCHS:-${OURS[*]}})
COMPILED=(--feats ${COMPILED_FEATS:-256 1024} --lengths ${COMPILED_LENGTHS:-400 1300})  # tracing unrolls the chunk loops
WARM_S=${WARM_S:-240}                               # phase all: seconds of warming before timing
COMPILE_VARIANTS=(${COMPILE_VARIANTS:-mixers})      # mixers (what `compile: true` trains), compiled (the whole step)
echo "[$PHASE] $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)" | tee -a "$LOG"

warm() {  # fla and our compiled variants compile side by side; GPU shared, nothing timed. Killed after
  # $1 s: --time-limit only stops new shapes, and one shape compiling for minutes once ate a whole call
  KILL_AT=$1 B --archs "${FLA_ARCHS[@]}" --variants fla --feats "${FLA_FEATS[@]}" --warm-only --jobs 2 --tag warm_fla \
    --time-limit "$1" &
  KILL_AT=$1 B --archs "${OURS[@]}" --variants "${COMPILE_VARIANTS[@]}" "${COMPILED[@]}" --warm-only --jobs "${WARM_JOBS:-6}" \
    --tag warm_compiled --time-limit "$1" &
  wait
}
time_fla() { B --archs "${FLA_ARCHS[@]}" --variants fla --feats "${FLA_FEATS[@]}" --jobs 1 --tag gpu_fla --time-limit "$1"; }
time_compiled() { B --archs "${OURS[@]}" --variants "${COMPILE_VARIANTS[@]}" "${COMPILED[@]}" --jobs 1 --tag gpu_compiled --time-limit "$1"; }
time_eager() { B --archs "${EAGER_ARCHS[@]}" --variants eager --jobs 1 --tag gpu_eager --time-limit "$1"; }

case $PHASE in
warm) warm $(( $(left) - 60 )) ;;
time)   # everything alone on the GPU: fla rows first (their caches are warm), then ours eager
  time_fla 150
  time_eager $(( $(left) - 70 ))
  B --archs mamba --variants eager --jobs 1 --tag gpu_mamba --time-limit 20 ;;
all)    # one call: warm for WARM_S, then fla, compiled and eager timed alone
  warm "$WARM_S"
  time_fla 100
  time_compiled $(( $(left) - 90 ))
  time_eager $(( $(left) - 40 )) ;;
time2)  # ours compiled from the warm caches, the GPU memory of a Task-2 step, the training path compiled
  time_compiled 230
  l=$(left); [ "$l" -gt 30 ] && timeout $(( l < 200 ? l : 200 )) python3 bench/bench_memory.py --device cuda \
    --archs gated_delta_product delta_net gated_delta_net gla mamba2 transformer mamba --out $W/memory_cuda.md >>"$LOG" 2>&1
  for c in "" --compile; do
    l=$(left); [ "$l" -gt 30 ] && timeout "$l" python3 bench/bench_train.py --device cuda --tasks task1 \
      --archs delta_net gla --updates 6 $c --out $W >>"$LOG" 2>&1
  done ;;
*) echo "unknown phase $PHASE"; exit 2 ;;
esac
cp $W/*.csv $W/*.md "$OUT"/ 2>/dev/null
echo "[$PHASE] done after $(( $(date +%s) - START )) s; cache $(du -sh .cache | cut -f1)" | tee -a "$LOG"
grep -h '^{' "$LOG" | tail -n 60
