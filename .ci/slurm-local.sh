#!/usr/bin/env bash
# slurm-local.sh — a REAL single-node SLURM cluster for CI (Debian's slurmctld/slurmd + munge,
# no cgroups, no accounting, fake GPUs), so the pipeline's `snakemake --profile slurm` is tested
# against the same sbatch/squeue/srun it meets on a GPU cluster.
#
#   .ci/slurm-local.sh start    # install packages if missing, write config, start, wait for idle
#   .ci/slurm-local.sh stop     # cancel every job, then stop the daemons (by PID file)
#   .ci/slurm-local.sh status   # daemons + sinfo + squeue
#
# Needs root (writes /etc/slurm, starts daemons). Everything talks over 127.0.0.1 only
# (ports 6817/6818). Verified on Debian 12 (slurm 22.05.8, munge 0.5.15) under gVisor.
#
# Knobs (environment):
#   SLURM_FAKE_GPUS=1   fake GPUs on the node (gres/gpu; each a symlink to /dev/null)
#   SLURM_CPUS          CPUs of the node (default: what `slurmd -C` reports); more than the host
#                       has oversubscribes its cores (SlurmdParameters=config_overrides)
#   SLURM_MEM_MB        RealMemory of the node (default: min(20000, 90% of the detected memory))
#   SLURM_WAIT_S=60     how long `start` waits for the node to become idle
#
# Partitions: `debug` (default) is preemptable (PreemptMode=REQUEUE): a job submitted to
# `urgent` that needs its resources makes SLURM stop the debug job (SIGTERM, then SIGKILL after
# KillWait) and put it back in the queue — the way GPU clusters preempt.
set -euo pipefail

ACTION="${1:-start}"
H="$(hostname -s)"
GPUS="${SLURM_FAKE_GPUS:-1}"
WAIT_S="${SLURM_WAIT_S:-60}"
CONF_DIR=/etc/slurm
T0=$(date +%s.%N)

log() { awk -v t0="$T0" -v now="$(date +%s.%N)" -v msg="$*" 'BEGIN { printf "[slurm-local %5.1fs] %s\n", now - t0, msg }'; }

# pid_alive PIDFILE COMM: the process named in PIDFILE runs and is COMM (never trust a stale file)
pid_alive() {
  local f="$1" comm="$2" p
  [ -s "$f" ] || return 1
  p="$(cat "$f")"
  [ -d "/proc/$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$comm" ]
}

stop_one() { # PIDFILE COMM: SIGTERM, wait up to 15 s, then SIGKILL
  local f="$1" comm="$2" p i
  if pid_alive "$f" "$comm"; then
    p="$(cat "$f")"
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 75); do [ -d "/proc/$p" ] || break; sleep 0.2; done
    if [ -d "/proc/$p" ]; then kill -9 "$p" 2>/dev/null || true; fi
    log "stopped $comm (pid $p)"
  fi
  rm -f "$f"
}

cancel_all_jobs() {
  # Running job steps live in slurmstepd processes that survive slurmd: end them through SLURM.
  pid_alive /run/slurmctld.pid slurmctld || return 0
  local ids i
  ids="$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)"
  [ -n "${ids// /}" ] || return 0
  log "cancelling jobs: $ids"
  timeout 10 scancel $ids 2>/dev/null || true
  for i in $(seq 1 60); do
    [ -z "$(timeout 10 squeue -h -t running,completing -o %i 2>/dev/null)" ] && return 0
    sleep 0.5
  done
  log "warning: jobs still running after 30 s: $(squeue -h -o '%i %T' 2>/dev/null | tr '\n' ' ')"
}

do_stop() {
  cancel_all_jobs
  stop_one /run/slurmd.pid slurmd
  stop_one /run/slurmctld.pid slurmctld
  stop_one /run/munge/munged.pid munged
}

do_status() {
  local d
  for d in "/run/munge/munged.pid munged" "/run/slurmctld.pid slurmctld" "/run/slurmd.pid slurmd"; do
    set -- $d
    if pid_alive "$1" "$2"; then echo "$2: running (pid $(cat "$1"))"; else echo "$2: not running"; fi
  done
  sinfo 2>&1 || true
  squeue 2>&1 || true
}

case "$ACTION" in
  stop) do_stop; exit 0 ;;
  status) do_status; exit 0 ;;
  start) ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "slurm-local.sh: must run as root (writes /etc/slurm, starts daemons)" >&2; exit 1; }

# ------------------------------------------------------------------------------------ packages
PKGS="munge slurmctld slurmd slurm-client"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  timeout 120 apt-get update -qq
  # without systemd (or with policy-rc.d) the postinst starts nothing; we start the daemons below
  timeout 300 apt-get install -y -qq --no-install-recommends $missing >/dev/null
  log "packages installed"
fi
# where systemd is PID 1 the packages' units may have started with an empty config (untested here)
if [ -d /run/systemd/system ]; then systemctl stop slurmd slurmctld 2>/dev/null || true; fi

# ------------------------------------------------------------------------------------ config
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
HW="$(slurmd -C 2>/dev/null | head -1)"   # NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105
MEM="${SLURM_MEM_MB:-}"
if [ -z "$MEM" ]; then
  MEM="$(echo "$HW" | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p')"
  MEM=$(( MEM * 9 / 10 )); [ "$MEM" -gt 20000 ] && MEM=20000
fi
OVERRIDES=""
if [ -n "${SLURM_CPUS:-}" ]; then
  NODE_HW="CPUs=${SLURM_CPUS}"
  OVERRIDES="SlurmdParameters=config_overrides"   # trust slurm.conf, not the hardware
else  # copy the topology, else slurmd logs "Node reconfigured socket/core boundaries"
  NODE_HW="$(echo "$HW" | sed -E 's/^NodeName=[^ ]+ //; s/ ?RealMemory=[0-9]+//; s/ ?UpTime=.*//')"
fi
GRES_TYPES=""; NODE_GRES=""
if [ "$GPUS" -gt 0 ]; then GRES_TYPES="GresTypes=gpu"; NODE_GRES=" Gres=gpu:${GPUS}"; fi

NEW_CONF="$(cat <<EOF
# Written by .ci/slurm-local.sh: single-node CI cluster, no cgroups, no accounting.
ClusterName=localci
SlurmctldHost=${H}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
# a requeued (preempted) job may start again only cred_expire+1 s later (default 120 s)
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MpiDefault=none
# pgid, not linuxproc: linuxproc follows parent links, so a process whose parent died first
# (the batch shell on SIGTERM) escapes the final SIGKILL and lives on after the job
ProctrackType=proctrack/pgid
TaskPlugin=task/none
ReturnToService=2
${OVERRIDES}
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job with no --mem gets the whole node and everything runs one at a time
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
${GRES_TYPES}
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# squeue (the profile's status command) must still list a finished job when snakemake looks:
# >= 3 x slurm-init-seconds-before-status-checks, else the executor falls back to sacct. 30 min,
# so the CI test can still read every job's resources and state from squeue at the end.
MinJobAge=1800
# grace between SIGTERM and SIGKILL when a job is preempted, requeued or over its time:
# the training code writes its checkpoint in that window
KillWait=30
Waittime=0
# records what every task saw (the CI test checks that GPU jobs got CUDA_VISIBLE_DEVICES)
TaskProlog=${CONF_DIR}/task-prolog.sh
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=${H} NodeAddr=127.0.0.1 ${NODE_HW} RealMemory=${MEM}${NODE_GRES} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=urgent Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
)"
# File= is required: slurmd drops "file-less" GPUs and refuses the same file twice, so each
# fake GPU is its own symlink to /dev/null (no cgroup device checks here).
NEW_GRES="AutoDetect=off"
if [ "$GPUS" -gt 0 ]; then
  mkdir -p /var/lib/slurm-fakegpu
  for i in $(seq 0 $((GPUS - 1))); do ln -sfn /dev/null "/var/lib/slurm-fakegpu/gpu$i"; done
  if [ "$GPUS" = 1 ]; then GFILE=/var/lib/slurm-fakegpu/gpu0; else GFILE="/var/lib/slurm-fakegpu/gpu[0-$((GPUS - 1))]"; fi
  NEW_GRES="$NEW_GRES
NodeName=${H} Name=gpu File=${GFILE}"
fi

# TaskProlog runs before every task of every job step, in the task's environment (after the
# gres plugin has set CUDA_VISIBLE_DEVICES); what it prints to stdout would be exported, so it
# prints nothing and appends one line per task to the log instead.
NEW_PROLOG='#!/bin/sh
echo "job=$SLURM_JOB_ID step=$SLURM_STEP_ID cuda_visible_devices=${CUDA_VISIBLE_DEVICES:-none}" >> /var/log/slurm/task-gpus.log
exit 0'
if [ "$(cat "$CONF_DIR/task-prolog.sh" 2>/dev/null)" != "$NEW_PROLOG" ]; then
  printf '%s\n' "$NEW_PROLOG" > "$CONF_DIR/task-prolog.sh"
fi
chmod 755 "$CONF_DIR/task-prolog.sh"

if [ "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" != "$NEW_CONF" ] || \
   [ "$(cat "$CONF_DIR/gres.conf" 2>/dev/null)" != "$NEW_GRES" ]; then
  do_stop   # config changed: restart from scratch
  printf '%s\n' "$NEW_CONF" > "$CONF_DIR/slurm.conf"
  printf '%s\n' "$NEW_GRES" > "$CONF_DIR/gres.conf"
  log "wrote $CONF_DIR/slurm.conf and gres.conf"
fi

# ------------------------------------------------------------------------------------ munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 755 /run/munge
if ! pid_alive /run/munge/munged.pid munged; then
  runuser -u munge -- /usr/sbin/munged
  log "started munged"
fi
for i in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || { echo "slurm-local.sh: munge does not work" >&2; exit 1; }

# ------------------------------------------------------------------------------------ slurm
if ! pid_alive /run/slurmctld.pid slurmctld; then
  # -c: forget jobs and node state of an earlier run, so every CI run starts from an empty queue
  /usr/sbin/slurmctld -c || { tail -n 20 /var/log/slurm/slurmctld.log >&2; exit 1; }
  log "started slurmctld"
fi
if ! pid_alive /run/slurmd.pid slurmd; then
  /usr/sbin/slurmd || { tail -n 20 /var/log/slurm/slurmd.log >&2; exit 1; }
  log "started slurmd"
fi

state=""; resumed=0
deadline=$(( $(date +%s) + WAIT_S ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  state="$(timeout 10 sinfo -h -n "$H" -p debug -o '%T' 2>/dev/null | head -1 || true)"
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    drained|draining|down|inval|"drained*"|"down*")   # e.g. drained by an earlier bad gres.conf
      if [ "$resumed" = 0 ]; then scontrol update nodename="$H" state=resume 2>/dev/null || true; resumed=1; fi ;;
  esac
  sleep 0.3
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) echo "slurm-local.sh: node $H did not become idle (state '$state'); see /var/log/slurm/*.log" >&2
     scontrol show node "$H" >&2 || true
     exit 1 ;;
esac
# sinfo may print the saved state before slurmd has registered: prove that a job step runs
timeout 60 srun --immediate=30 -t 1 true || { echo "slurm-local.sh: srun smoke test failed" >&2; exit 1; }
log "node $H is up ($GPUS fake GPU(s))"
sinfo
