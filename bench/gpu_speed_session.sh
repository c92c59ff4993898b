#!/usr/bin/env bash
# The issue-#8 speed table in one device call (<= ~9 min on an H100), written under $1:
#   fla's Triton kernels compile + autotune in the background on cores 8-15 (their first use takes
#   minutes), while our eager steps are timed alone on cores 0-7; then fla is timed from its caches,
#   then a few compiled (static-shape) rows. Every timed run is --jobs 1: nothing else on the GPU.
# Each part has its own time limit so the CSVs are always copied out. Needs fla on PYTHONPATH for the fla rows (bench/crosscheck_fla.py says how).
set -u
OUT=${1:?usage: gpu_speed_session.sh OUT_DIR}
export TRITON_CACHE_AUTOTUNING=1 PYTHONUNBUFFERED=1
W=/tmp/bench_gpu; mkdir -p $W
B="python3 bench/bench_gpu.py --jobs 1 --min-time 1 --out $W"
timeout 270 taskset -c 8-15 python3 bench/bench_gpu.py --archs gla delta_net --variants fla --warm-only --jobs 2 \
  --out /tmp/bench_gpu_warm --tag warm >>"$OUT/session.log" 2>&1 &
timeout 250 taskset -c 0-7 $B --archs delta_net gated_delta_net gated_delta_product gla mamba2 transformer --variants eager \
  --time-limit 200 --tag gpu_eager >>"$OUT/session.log" 2>&1
timeout 90 taskset -c 0-7 $B --archs mamba --variants eager --feats 256 512 --time-limit 40 --tag gpu_mamba >>"$OUT/session.log" 2>&1
wait
timeout 150 $B --archs gla delta_net --variants fla --time-limit 90 --tag gpu_fla >>"$OUT/session.log" 2>&1
timeout 100 $B --archs gla mamba2 delta_net transformer --variants compiled --feats 256 --lengths 1300 --time-limit 40 \
  --tag gpu_compiled >>"$OUT/session.log" 2>&1
cp $W/*.csv "$OUT"/
python3 bench/bench_gpu.py --merge $W/*.csv --out "$OUT" --tag gpu
tail -n 5 "$OUT/session.log"
