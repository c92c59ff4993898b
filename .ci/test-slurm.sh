#!/usr/bin/env bash
# test-slurm.sh — the pipeline on a REAL SLURM, the way users run it: `snakemake --profile slurm`.
#
#   .ci/test-slurm.sh            # as root; ~4-5 min on 2 cores; exit 0 = every check passed
#
# 1. starts a single-node SLURM with 3 fake GPUs (.ci/slurm-local.sh; installs Debian packages),
# 2. copies the working tree (tracked + untracked, not ignored files: what a fresh clone holds)
#    to a scratch directory and runs, from its root,
#      snakemake --profile slurm --configfile config/ci-slurm.yaml
#    while it runs, stops two training jobs the two ways a cluster does:
#      - preemption: a job in the high-priority `urgent` partition takes every GPU, SLURM sends
#        the running training SIGTERM and requeues it (same job id);
#      - cancellation: `scancel` (SIGTERM, job CANCELLED), which Snakemake retries as attempt 2;
# 3. checks: outputs complete (a second dry-run has nothing to do), every run completed, GPU jobs
#    were given a GPU by SLURM and their tasks saw CUDA_VISIBLE_DEVICES while CPU jobs saw none,
#    evaluations ran grouped in one SLURM job, both stopped runs resumed from their checkpoint
#    (no update lost or repeated), the retried job asked for more memory and time;
# 4. stops the daemons (also on failure or Ctrl-C: trap).
# Every step runs under `timeout`, so the script cannot hang CI.
#
# Environment: SLURM_TEST_DIR (scratch directory; default: a new one under /tmp, removed on
# success), SLURM_TEST_KEEP=1 (keep the daemons running afterwards, for debugging).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
T0=$(date +%s)
log() { echo "[test-slurm $(( $(date +%s) - T0 ))s] $*"; }
fail() { echo "[test-slurm $(( $(date +%s) - T0 ))s] FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (starts SLURM daemons, writes /etc/slurm)"
if [ -x "$REPO/.venv/bin/snakemake" ]; then export PATH="$REPO/.venv/bin:$PATH"; fi
command -v snakemake >/dev/null || fail "snakemake not found (pip install -e . in a venv at .venv)"
python -c "import snakemake_executor_plugin_slurm" 2>/dev/null || fail "snakemake-executor-plugin-slurm is not installed"

WORK="${SLURM_TEST_DIR:-$(mktemp -d /tmp/selectivbench-slurm.XXXXXX)}"
RUN="$WORK/repo"
SNAKE_PID=""
stop_snakemake() {  # SNAKE_PID is `timeout`; snakemake is its child
  [ -n "$SNAKE_PID" ] && kill -0 "$SNAKE_PID" 2>/dev/null || return 0
  local child i
  child="$(pgrep -P "$SNAKE_PID" || true)"
  kill -INT $child 2>/dev/null || true   # on SIGINT snakemake cancels its SLURM jobs and exits
  for i in $(seq 1 30); do kill -0 "$SNAKE_PID" 2>/dev/null || return 0; sleep 1; done
  kill -KILL $child "$SNAKE_PID" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop_snakemake
  if [ "$rc" != 0 ] && [ -f "$RUN/snakemake.log" ]; then
    echo "---- last lines of $RUN/snakemake.log" >&2; tail -n 40 "$RUN/snakemake.log" >&2
  fi
  if [ "${SLURM_TEST_KEEP:-0}" != 1 ]; then timeout 120 bash "$REPO/.ci/slurm-local.sh" stop || true; fi
  if [ "$rc" = 0 ] && [ -z "${SLURM_TEST_DIR:-}" ]; then rm -rf "$WORK"; fi
  log "exit $rc (scratch: $([ -d "$WORK" ] && echo "$WORK" || echo removed))"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------ 1. SLURM
# 3 fake GPUs and 4 CPUs (on however many cores): the 3 trainings of the tiny config run at once
GPUS=3
SLURM_FAKE_GPUS=$GPUS SLURM_CPUS=4 timeout 300 bash "$REPO/.ci/slurm-local.sh" start
: > /var/log/slurm/task-gpus.log   # the TaskProlog's record of what each task saw
log "SLURM up"

# ------------------------------------------------------------------------------ 2. fresh tree
mkdir -p "$RUN"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$REPO" ls-files -z --cached --others --exclude-standard | (cd "$REPO" && tar --null -T - -cf -) | tar -C "$RUN" -xf -
else
  tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=.snakemake --exclude=results --exclude=logs -cf - . | tar -C "$RUN" -xf -
fi
cd "$RUN"
[ -f slurm/profile.yaml ] || fail "slurm/profile.yaml missing: \`snakemake --profile slurm\` cannot work from the repository root"

RUN1=results/runs/task1/gla/feat16_amb8_lr0.002_wu1_seed1   # preempted (requeued by SLURM)
RUN3=results/runs/task3/gla/feat16_amb8_lr0.002_wu1_seed1   # cancelled (retried by Snakemake)
# the SLURM job running the training of task $1 (its --comment names rule and wildcards)
train_job() { timeout 10 squeue -h -t running -O "JobID:20,Comment:200" | awk -v t="_$1_" '$2 ~ /^rule_train_run/ && index($2, t) {print $1; exit}'; }
# 0 once the training loop of run dir $1 has started (train.log holds the start line)
started() { grep -q "parameters |" "$1/train.log" 2>/dev/null; }

# ------------------------------------------------------------------------------ 3. the run
# The CI-only flags: the first status check after 2 s instead of 40 s, and keep the SLURM logs.
log "snakemake --profile slurm --configfile config/ci-slurm.yaml"
timeout -k 15 600 snakemake --profile slurm --configfile config/ci-slurm.yaml \
  --slurm-init-seconds-before-status-checks 2 --slurm-keep-successful-logs > snakemake.log 2>&1 &
SNAKE_PID=$!

# stop each long training as soon as its training loop runs (the other may still be starting)
cancelled="" preempted=""
deadline=$(( $(date +%s) + 360 ))
while [ -z "$cancelled" ] || [ -z "$preempted" ]; do
  kill -0 "$SNAKE_PID" 2>/dev/null || fail "snakemake ended before both long trainings were stopped (log: $RUN/snakemake.log)"
  [ "$(date +%s)" -lt "$deadline" ] || fail "the long trainings did not start within 6 min"
  if [ -z "$cancelled" ] && started "$RUN3" && job=$(train_job task3) && [ -n "$job" ]; then
    log "scancel $job (task3 training: SIGTERM, job CANCELLED; Snakemake must retry it)"
    timeout 10 scancel "$job"; cancelled=$job
  fi
  if [ -z "$preempted" ] && started "$RUN1" && job=$(train_job task1) && [ -n "$job" ]; then
    log "preempting $job (task1 training) by a job in partition urgent that needs all $GPUS GPUs"
    timeout 10 sbatch -Q -p urgent --gpus=$GPUS -c 1 --mem 100 -t 1 -J urgent -o /dev/null --wrap 'sleep 2'
    preempted=$job
  fi
  sleep 0.5
done

wait "$SNAKE_PID" && rc=0 || rc=$?
SNAKE_PID=""
[ "$rc" = 0 ] || fail "snakemake --profile slurm exited $rc (log: $RUN/snakemake.log)"
log "snakemake finished"

# ------------------------------------------------------------------------------ 4. checks
# outputs: complete and up to date (the dry-run also proves Snakemake's metadata is consistent)
timeout 120 snakemake --profile slurm --configfile config/ci-slurm.yaml -n > dryrun.log 2>&1 || fail "dry-run after the run failed"
grep -q "Nothing to be done" dryrun.log || fail "outputs incomplete after the run: $(grep -A12 'Job stats' dryrun.log)"
for f in results/runs.csv results/tables/selection.csv results/figures/task4_gap_generalization.pdf; do
  [ -s "$f" ] || fail "missing output $f"
done
python - <<'EOF' || fail "a run did not complete"
import glob, json
runs = sorted(glob.glob("results/runs/*/*/*/metrics.json"))
assert len(runs) == 3, runs
for path in runs:
    m = json.load(open(path))
    assert m.get("status") == "completed", (path, m.get("status"), m.get("error"))
    assert m["updates"] == m["total_updates"], (path, m["updates"], m["total_updates"])
print(f"3 runs completed: {[p.split('/')[2] for p in runs]}")
EOF

# SLURM's view of every job of this run (kept MinJobAge = 30 min; all named by the run's ID):
# id comment gres state memory time-limit
run_id=$(sed -n 's/^SLURM run ID: //p' snakemake.log | head -1)
[ -n "$run_id" ] || fail "no 'SLURM run ID' in snakemake.log"
timeout 10 squeue -h -t all -n "$run_id" -O "JobID:12,Comment:200,tres-per-job:20,State:14,MinMemory:10,TimeLimit:12" > jobs.txt
cat jobs.txt
awk '$2 ~ /^rule_(train_run|evaluate)/ && $3 != "gres:gpu:1" {bad=1; print "no GPU:", $0} END {exit bad}' jobs.txt \
  || fail "a training/evaluation job was not given a GPU"
awk '$2 ~ /^rule_(sample_grammar|materialize_dataset)/ && $3 != "N/A" {bad=1; print "GPU for a data job:", $0} END {exit bad}' jobs.txt \
  || fail "a data job was given a GPU"
n_eval_jobs=$(awk '$2 ~ /^rule_evaluate/' jobs.txt | wc -l)
[ "$n_eval_jobs" = 1 ] || fail "the 2 evaluations ran in $n_eval_jobs SLURM jobs, expected 1 group job"
# what the tasks saw (TaskProlog): every srun step of a GPU job had CUDA_VISIBLE_DEVICES, no data job had
gpu_jobs=$(awk '$2 ~ /^rule_(train_run|evaluate)/ {print $1}' jobs.txt)
cpu_jobs=$(awk '$2 ~ /^rule_(sample_grammar|materialize_dataset)/ {print $1}' jobs.txt)
for j in $gpu_jobs; do
  grep -q "^job=$j step=[0-9]" /var/log/slurm/task-gpus.log || fail "no task of GPU job $j was recorded"
  if grep "^job=$j step=[0-9]" /var/log/slurm/task-gpus.log | grep -q "cuda_visible_devices=none"; then fail "a task of GPU job $j saw no GPU"; fi
done
for j in $cpu_jobs; do
  if grep "^job=$j " /var/log/slurm/task-gpus.log | grep -vq "cuda_visible_devices=none"; then fail "data job $j saw a GPU"; fi
done
log "GPU jobs: $(echo $gpu_jobs) got gres:gpu:1 and CUDA_VISIBLE_DEVICES; data jobs: $(echo $cpu_jobs) got none"

# preemption: requeued by SLURM (same job id, Restarts=1), resumed where the checkpoint was
timeout 10 scontrol show job "$preempted" | grep -q "Restarts=1" || fail "job $preempted was not requeued"
# cancellation: CANCELLED, then a second SLURM job (attempt 2) with twice the memory and time
awk -v j="$cancelled" '$1 == j && $4 == "CANCELLED" {ok=1} END {exit !ok}' jobs.txt || fail "job $cancelled is not CANCELLED"
comment=$(awk -v j="$cancelled" '$1 == j {print $2}' jobs.txt)
first=$(awk -v j="$cancelled" '$1 == j {print $5, $6}' jobs.txt)
retry=$(awk -v j="$cancelled" -v c="$comment" '$2 == c && $1 != j && $4 == "COMPLETED" {print $5, $6}' jobs.txt)
[ -n "$retry" ] || fail "no completed retry of the cancelled job $cancelled"
[ "$first" = "1500M 10:00" ] && [ "$retry" = "3000M 20:00" ] || fail "retry of $cancelled asked for '$retry' (attempt 1: '$first'), expected 3000M 20:00"
for run in "$RUN1" "$RUN3"; do
  python - "$run" <<'EOF' || fail "$run did not resume from its checkpoint"
import json, re, sys
run = sys.argv[1]
log = open(f"{run}/train.log").read()
stopped = [int(n) for n in re.findall(r"stopped at update (\d+)", log)]
resumed = [int(n) for n in re.findall(r"resuming at update (\d+)", log)]
m = json.load(open(f"{run}/metrics.json"))
assert stopped and resumed == stopped, f"stopped at {stopped}, resumed at {resumed}"
assert 0 < stopped[0] < m["total_updates"], f"stopped at {stopped[0]} of {m['total_updates']}"
# one session per start: a run can be stopped twice (the preempting job takes every GPU)
assert m["sessions"] == len(stopped) + 1 and m["updates"] == m["total_updates"], (m["sessions"], m["updates"])
print(f"{run}: stopped at update(s) {stopped}, resumed there, completed {m['updates']} updates in {m['sessions']} sessions")
EOF
done

log "PASSED (wall time $(( $(date +%s) - T0 )) s)"
