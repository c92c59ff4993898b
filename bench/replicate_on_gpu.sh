#!/usr/bin/env bash
# One chunk of the reduced-scale replication (issue 9) on a lent GPU machine that keeps nothing.
#
#   bash bench/replicate_on_gpu.sh OUT_DIR [SECONDS]      # device call, carry: [".whl"]
#
# 1. installs snakemake 9.27.1 from the carried wheels (.whl/: it and all its dependencies) under
#    /tmp/site, only the packages the machine lacks (--prefix keeps the installed ones: torch's
#    own dependencies are not shadowed); nothing else (torch, pandas, seaborn are there; our
#    package via PYTHONPATH=src);
# 2. `prepare`: Task-2 runs committed without all their Task-4 tests are trained again (their
#    checkpoints did not come back), see src/selectivbench/analysis/replication.py;
# 3. runs the pipeline (config/replication.yaml) for the missing metrics.json files only (finished
#    runs stay out of the DAG), GPU_JOBS jobs sharing the GPU within GPU_MEM_MB of declared GPU
#    memory, until SECONDS (default 520) minus the time to pack; then SIGTERM to the whole job
#    group: trainings checkpoint and exit 75 (redone from scratch next chunk);
# 4. packs the small files of every finished job + the aggregated rows into
#    OUT_DIR/replication_<UTC time>.tar.gz (no checkpoint, no dataset) and copies the logs.
#
# Then, in the repository root here: `tar -xzf <tarball>` and commit results/replication/.
# Environment: CONFIG (config/replication.yaml; several files, space-separated, merge in order),
# GPU_JOBS (7), GPU_MEM_MB (72000), RETRY_FAILED=1 (also redo runs recorded as failed),
# DRY=1 (plan only: snakemake -n), SKIP=<extended regex> (leave out the matching targets: runs that
# cannot finish within one call and would only hold GPU slots until the deadline), ONLY=<extended
# regex> (keep only the matching targets, e.g. such a run alone with GPU_JOBS=2 so it finishes).
set -uo pipefail
OUT=${1:?usage: bash bench/replicate_on_gpu.sh OUT_DIR [SECONDS]}
BUDGET=${2:-520}
CONFIG=${CONFIG:-config/replication.yaml}
GPU_JOBS=${GPU_JOBS:-7}
GPU_MEM_MB=${GPU_MEM_MB:-72000}
PACK_S=35     # stop this many seconds before the budget: SIGTERM grace + aggregation + tarball
START=$(date +%s)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 1
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

mkdir -p /tmp/site && python3 -m pip install -q --no-index --find-links .whl --no-compile --no-cache-dir --prefix /tmp/site snakemake==9.27.1 || exit 1
SITE=$(find /tmp/site -type d \( -name site-packages -o -name dist-packages \) | paste -sd: -)  # lib/, lib64/ ...
export PYTHONPATH="$SITE:$PWD/src" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True   # less fragmentation with jobs side by side
# the rules call `python`: a wrapper of python3 (not a symlink: a venv's
# interpreter finds its packages from the path it was called by)
mkdir -p /tmp/bin && rm -f /tmp/bin/python && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" >/tmp/bin/python && chmod +x /tmp/bin/python
export PATH="/tmp/bin:$PATH"
python3 -m snakemake --version >/dev/null || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "[replicate] setup took $(( $(date +%s) - START )) s"
rep() { python3 -m selectivbench.analysis.replication "$1" --configfile $CONFIG "${@:2}"; }
RESULTS=$(rep root) || exit 1
LOG="$RESULTS/logs/snakemake_$STAMP.log"   # packed with the results
mkdir -p "$RESULTS/logs"

rep prepare ${RETRY_FAILED:+--retry-failed} || exit 1
mapfile -t TARGETS < <(rep targets | grep -E "${ONLY:-.}" | { if [ -n "${SKIP:-}" ]; then grep -Ev "$SKIP"; else cat; fi; })
echo "[replicate] ${#TARGETS[@]} metrics.json file(s) to make"

SMK=(python3 -m snakemake --configfile $CONFIG --cores "$(nproc)" --resources gpu="$GPU_JOBS" gpu_mem_mb="$GPU_MEM_MB"
     --keep-going --scheduler greedy --printshellcmds "${TARGETS[@]}")
if [ -n "${DRY:-}" ]; then "${SMK[@]}" -n --quiet rules 2>&1 | tail -40; exit 0; fi

DEADLINE=$(( START + BUDGET - PACK_S ))
# own session: the jobs share Snakemake's process group, which is stopped as one at the deadline
if [ "${#TARGETS[@]}" -gt 0 ]; then setsid "${SMK[@]}" >"$LOG" 2>&1 & else echo "nothing to do" >"$LOG"; sleep 1 & fi
PID=$!
NEXT=0
while kill -0 "$PID" 2>/dev/null && [ "$(date +%s)" -lt "$DEADLINE" ]; do
  if [ "$(date +%s)" -ge "$NEXT" ]; then  # a progress line a minute
    echo "[replicate] $(( $(date +%s) - START )) s: $(grep -c '^Finished job' "$LOG") jobs finished;" \
      "GPU $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)"
    NEXT=$(( $(date +%s) + 60 ))
  fi
  sleep 2
done
if kill -0 "$PID" 2>/dev/null; then
  echo "[replicate] deadline: SIGTERM to the job group $PID (trainings checkpoint and exit 75)"
  kill -TERM -- -"$PID" 2>/dev/null
  for _ in $(seq 20); do kill -0 "$PID" 2>/dev/null || break; sleep 1; done
  kill -KILL -- -"$PID" 2>/dev/null
fi
wait "$PID" 2>/dev/null
echo "[replicate] snakemake stopped after $(( $(date +%s) - START )) s"
grep -E "^(Error in rule|Finished job|[0-9]+ of [0-9]+ steps)" "$LOG" | tail -5

rep pack --out "$OUT/replication_$STAMP.tar.gz" --extra "$LOG"
cp "$LOG" "$OUT/"
echo "[replicate] done after $(( $(date +%s) - START )) s; unpack with: tar -xzf replication_$STAMP.tar.gz (repository root)"
