#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests (Debian's slurm-wlm and munge, run as root).
#
#   scripts/local-slurm.sh start DIR   start munged, slurmctld and slurmd with all their state in DIR; the last
#                                      line on stdout is `export SLURM_CONF=DIR/slurm.conf`
#   scripts/local-slurm.sh stop DIR    cancel the cluster's jobs and stop its daemons, by the pid files in DIR
#
# Nothing outside DIR is used: munged has its own key and socket (DIR/munge/munge.socket, never the system's
# /run/munge), the daemons listen on free ports picked at start, and `stop` ends only the processes whose pids
# DIR records. munged refuses a socket directory that every user cannot traverse, and as the munge user it
# needs a directory of its own, hence DIR/munge (owned by munge) and DIR made world-traversable (0755).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$2
wait_s=${LOCAL_SLURM_WAIT_S:-30}

log() { echo "local-slurm: $*" >&2; }

# The pid in a pid file, if that process is alive.
live_pid() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(tr -dc '0-9' <"$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# TERM the processes of these pid files together (each takes ~2 s to shut down), wait up to 10 s, then KILL
# what is left. Missing files and dead processes are fine.
stop_pidfiles() {
  local file pid i left
  local -a pids=()
  for file in "$@"; do
    if pid=$(live_pid "$file"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for ((i = 0; i < 100; i++)); do
    left=()
    for pid in "${pids[@]}"; do
      ! kill -0 "$pid" 2>/dev/null || left+=("$pid")
    done
    [ ${#left[@]} -gt 0 ] || break
    sleep 0.1
  done
  for pid in "${left[@]}"; do
    log "pid $pid ignored TERM for 10 s: KILL"
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$@"
}

stop_cluster() {
  local conf=$dir/slurm.conf jobs pids i
  if [ -f "$conf" ] && live_pid "$dir/slurmctld.pid" >/dev/null; then
    # The cluster's own jobs first, so that no slurmstepd or job process outlives the daemons.
    jobs=$(SLURM_CONF=$conf timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      SLURM_CONF=$conf timeout 10 scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        [ -z "$(SLURM_CONF=$conf timeout 10 squeue -h -o %i 2>/dev/null || true)" ] && break
        sleep 0.2
      done
    fi
  fi
  if [ -f "$conf" ] && live_pid "$dir/slurmd.pid" >/dev/null; then
    # Whatever job processes this node's slurmd still knows of (by pid), and the slurmstepd above them.
    pids=$(SLURM_CONF=$conf timeout 10 scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}' || true)
    local pid ppid steps=""
    for pid in $pids; do
      ppid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || true)
      if [ -n "$ppid" ] && [ "$(cat "/proc/$ppid/comm" 2>/dev/null || true)" = slurmstepd ]; then
        steps="$steps $ppid"
      fi
    done
    # shellcheck disable=SC2086
    [ -z "$pids$steps" ] || kill -KILL $steps $pids 2>/dev/null || true
  fi
  stop_pidfiles "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"
}

# Two distinct free TCP ports (slurmctld, slurmd), so that this cluster never collides with another one.
free_ports() {
  python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

start_munge() {
  local m=$dir/munge as_munge=0
  mkdir -p "$m"
  if id munge >/dev/null 2>&1 && chown munge:munge "$m" && runuser -u munge -- test -w "$m" 2>/dev/null; then
    as_munge=1
  fi
  chmod 0755 "$m"
  if [ ! -s "$m/munge.key" ]; then
    mungekey -c -k "$m/munge.key"
  fi
  if [ "$as_munge" = 1 ]; then
    chown munge:munge "$m/munge.key"
  else
    chown root:root "$m" "$m/munge.key"
  fi
  chmod 0400 "$m/munge.key"
  local args=(--socket="$m/munge.socket" --key-file="$m/munge.key" --pid-file="$m/munged.pid"
    --log-file="$m/munged.log" --seed-file="$m/munged.seed")
  if [ "$as_munge" = 1 ]; then
    runuser -u munge -- munged "${args[@]}"
  else
    # The munge user cannot reach DIR (a parent directory closed to others): run it as root instead.
    log "the munge user cannot write $m: running munged as root"
    munged --force "${args[@]}"
  fi
  if ! munge -n -S "$m/munge.socket" | unmunge -S "$m/munge.socket" >/dev/null; then
    log "munge/unmunge through $m/munge.socket failed; munged.log:"
    tail -n 20 "$m/munged.log" >&2 || true
    return 1
  fi
}

write_conf() {
  local host cpus mem_mb ports ctld_port slurmd_port
  host=$(hostname -s)
  cpus=$(nproc)
  # A bit under the memory free for new work now (slurmd drains a node whose RealMemory exceeds what it finds).
  mem_mb=$(awk '/^MemAvailable:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  ports=$(free_ports)
  read -r ctld_port slurmd_port <<<"$ports"
  [ -n "$slurmd_port" ] || return 1
  mkdir -p "$dir/state" "$dir/spool"
  cat >"$dir/slurm.conf" <<EOF
# One-node test cluster written by scripts/local-slurm.sh; all its state lives in $dir.
ClusterName=cnnlab
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job waits this long (+1 s) before it may start again (default 120 s).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ReturnToService=2
JobRequeue=1
MinJobAge=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MailProg=/bin/true
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

fail_start() {
  log "start failed: $*"
  for f in slurmctld.log slurmd.log; do
    if [ -s "$dir/$f" ]; then
      log "last lines of $dir/$f:"
      tail -n 15 "$dir/$f" >&2
    fi
  done
  stop_cluster
  exit 1
}

start_cluster() {
  local cmd state i
  for cmd in munged mungekey munge unmunge slurmctld slurmd sinfo sbatch scontrol; do
    command -v "$cmd" >/dev/null || { log "$cmd not found: apt-get install slurm-wlm munge"; exit 1; }
  done
  [ "$(id -u)" = 0 ] || { log "must run as root (slurmd and munged need it)"; exit 1; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  if [ ${#dir} -gt 80 ]; then
    log "DIR is too long for unix socket paths (${#dir} > 80 chars): $dir"
    exit 1
  fi
  if live_pid "$dir/slurmctld.pid" >/dev/null || live_pid "$dir/slurmd.pid" >/dev/null; then
    log "a cluster is already running in $dir (stop it first)"
    exit 1
  fi
  chmod 0755 "$dir"
  stop_pidfiles "$dir/munge/munged.pid"
  start_munge || fail_start "munged"
  write_conf || fail_start "writing $dir/slurm.conf (free ports: python3 needed)"
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$SLURM_CONF" || fail_start "slurmctld -f $SLURM_CONF"
  slurmd -f "$SLURM_CONF" || fail_start "slurmd -f $SLURM_CONF"
  state=
  for ((i = 0; i < wait_s * 5; i++)); do
    state=$(timeout 5 sinfo -h -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.2
  done
  [ "$state" = idle ] || fail_start "node not idle after ${wait_s} s (sinfo: '${state:-no answer}')"
  log "cluster cnnlab up in $dir"
  echo "export SLURM_CONF=$SLURM_CONF"
}

case $action in
  start) start_cluster ;;
  stop)
    if [ -d "$dir" ]; then
      dir=$(cd "$dir" && pwd -P)
      stop_cluster
    fi
    ;;
  *) usage ;;
esac
