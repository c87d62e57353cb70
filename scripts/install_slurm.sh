#!/usr/bin/env bash
# Install and start a one-node SLURM cluster on this machine, for the tests that submit real jobs
# (tests/integration/test_slurm*.py). Idempotent: a second run finds the cluster up and does
# nothing; a run after a reboot (or after the daemons died) starts them again.
#
#   sudo bash scripts/install_slurm.sh        # scripts/test.sh runs it in CI (as root)
#
# What it sets up (Debian's slurm-wlm + munge, as observed in jobs/README.md's notes; and
# Debian's shellcheck, which lints the project's shell scripts and the job script):
# - slurmctld and slurmd on this host, running as root, state/spool/log/pid files under
#   $RESUMABLE_SLURM_DIR (default /var/tmp/resumable-slurm); the config in /etc/slurm/, where
#   every SLURM command looks for it;
# - partitions `low` (Default, PriorityTier=1, PreemptMode=REQUEUE, GraceTime=30) and `high`
#   (PriorityTier=10, PreemptMode=OFF) with PreemptType=preempt/partition_prio: a job in `high`
#   preempts (SIGTERM, GraceTime, SIGKILL, requeue) the `low` jobs whose CPUs it needs;
# - the node declares RESUMABLE_SLURM_CPUS CPUs (default 8, whatever the machine has:
#   SlurmdParameters=config_overrides), so that a sweep's array tasks, Dask workers and a
#   preempting job fit on one small machine at once. The test jobs mostly sleep.
#
# It exits 0 without installing anything where it cannot (not root, no apt-get): the SLURM
# tests then skip, saying why. Any other failure (apt, a daemon that does not come up) fails.
set -euo pipefail

state=${RESUMABLE_SLURM_DIR:-/var/tmp/resumable-slurm}
cpus=${RESUMABLE_SLURM_CPUS:-8}
conf_dir=/etc/slurm
log() { echo "install_slurm: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "not root: SLURM not installed (the SLURM tests will skip)"
  exit 0
fi

node_idle() {
  command -v sinfo >/dev/null 2>&1 &&
    timeout 10 sinfo -h -N -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'
}

need=()
for cmd in slurmctld slurmd sinfo sbatch munged mungekey; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
# Debian's shellcheck lints the shell scripts and the sbatch script (tests/test_shell_scripts.py,
# tests/test_jobs.py); it comes with the SLURM packages when those are needed, else on its own.
pkgs=(shellcheck)
command -v shellcheck >/dev/null 2>&1 && pkgs=()
if ((${#need[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get: SLURM not installed (the SLURM tests will skip)"
    exit 0
  fi
  log "installing slurm-wlm and munge (missing: ${need[*]})"
  pkgs+=(slurm-wlm munge)
fi
if ((${#pkgs[@]})) && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

mkdir -p "$state"/{ctld,spool,log,run} "$conf_dir" /etc/munge /run/munge /var/log/munge \
  /var/lib/munge
host=$(hostname -s)
mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)

conf=$(
  cat <<EOF
# Written by resumable's scripts/install_slurm.sh: a one-node test cluster.
ClusterName=resumable
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
KillWait=30
MinJobAge=3600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=low Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
PartitionName=high Nodes=$host MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
)
cgroup_conf=$'CgroupPlugin=cgroup/v1\nCgroupAutomount=no'

changed=""
if [[ ! -f $conf_dir/slurm.conf || $(cat "$conf_dir/slurm.conf") != "$conf" ]]; then
  printf '%s\n' "$conf" >"$conf_dir/slurm.conf"
  changed=1
fi
if [[ ! -f $conf_dir/cgroup.conf || $(cat "$conf_dir/cgroup.conf") != "$cgroup_conf" ]]; then
  printf '%s\n' "$cgroup_conf" >"$conf_dir/cgroup.conf"
  changed=1
fi

if [[ -z $changed ]] && node_idle; then
  log "SLURM already up: $(sinfo -h -o '%P %a %D %t' | tr '\n' ' ')"
  exit 0
fi

# munge: a key once, then the daemon (it refuses to start twice; --force tolerates a stale
# socket from an earlier run).
if [[ ! -s /etc/munge/munge.key ]]; then
  mungekey -c -f -k /etc/munge/munge.key >/dev/null 2>&1 ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- munged --force 2>/dev/null || munged --force
fi
for _ in $(seq 50); do
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
  sleep 0.2
done

# Restart the SLURM daemons we started earlier (by their pid files) when the config changed.
for d in slurmd slurmctld; do
  pidfile=$state/run/$d.pid
  if [[ -n $changed && -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.2; done
  fi
done
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
running "$state/run/slurmctld.pid" || slurmctld
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
running "$state/run/slurmd.pid" || slurmd

for _ in $(seq 120); do
  if node_idle; then
    log "SLURM up: $(sinfo -h -o '%P %a %D %t' | tr '\n' ' ')"
    exit 0
  fi
  state_now=$(sinfo -h -N -o '%t' 2>/dev/null || true)
  if [[ $state_now == drain* || $state_now == down* ]]; then
    scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
  fi
  sleep 0.5
done
log "the node did not become idle within 60 s; sinfo says:"
sinfo -N -l >&2 || true
tail -n 20 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
exit 1
