#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the cluster-profile tests.
#   slurm-local.sh install        apt-get the Debian packages (root, or sudo; ~5 s)
#   slurm-local.sh start STATE    write /etc/slurm/slurm.conf (state, logs and pid files under
#                                 STATE), start munged (own socket), slurmctld, slurmd
#   slurm-local.sh stop STATE     stop exactly the daemons started by `start STATE`, and wait
# A fake GPU GRES (File=/dev/null) lets `--gpus=1` requests schedule on a CPU-only node.
# Pitfall: without a Slurm database sacct fails, so job status is read with squeue.
set -euo pipefail
cmd=${1:?usage: slurm-local.sh install|start STATE|stop STATE}
MUNGE_DIR=/run/munge

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"  # the daemons run as root: CI runs this as root
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {  # $1 = state dir
  local s=$1 host cpus mem
  host=$(hostname -s); cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$s"/{spool,state,log} /etc/slurm
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=mltfrtest
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$MUNGE_DIR/slurm-local.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$s/state
SlurmdSpoolDir=$s/spool
SlurmctldPidFile=$s/slurmctld.pid
SlurmdPidFile=$s/slurmd.pid
SlurmctldLogFile=$s/log/slurmctld.log
SlurmdLogFile=$s/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  echo "NodeName=$host Name=gpu File=/dev/null" > /etc/slurm/gres.conf
}

alive() {  # running, not a zombie (a container's pid 1 may never reap the daemons)
  [ -r "/proc/$1/stat" ] && ! awk '{exit ($3 == "Z") ? 0 : 1}' "/proc/$1/stat" 2>/dev/null
}

start() {
  local s=${1:?state dir} d pid
  for d in slurmctld slurmd; do  # one Slurm per machine: slurm.conf and the ports are global
    for pid in $(pgrep -x "$d"); do
      if alive "$pid"; then
        echo "slurm-local: $d is already running (pid $pid); stop it first" >&2
        return 1
      fi
    done
  done
  rm -f "$s"/{munged,slurmctld,slurmd}.pid  # a reused state dir must not name old processes
  write_conf "$s"
  # munged: its own socket, pid and log files (munge checks the path is munge-owned and not
  # open to others, which a 0700 pytest temp dir is not), so a system munged is left alone.
  mkdir -p "$MUNGE_DIR" && chown munge:munge "$MUNGE_DIR"
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_DIR/slurm-local.socket" \
    --pid-file="$MUNGE_DIR/slurm-local.pid" --log-file="$MUNGE_DIR/slurm-local.log"
  cp "$MUNGE_DIR/slurm-local.pid" "$s/munged.pid"
  slurmctld && slurmd
  for _ in $(seq 60); do
    [ "$(sinfo -h -o %T 2>/dev/null | head -n1)" = idle ] && return 0
    sleep 0.5
  done
  echo "slurm-local: node did not become idle; see $s/log" >&2
  return 1
}

stop() {
  local s=${1:?state dir} f pid
  for f in slurmd slurmctld munged; do
    [ -f "$s/$f.pid" ] || continue
    pid=$(cat "$s/$f.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do  # wait, so that a following start finds the ports and socket free
      alive "$pid" || break
      sleep 0.25
    done
    rm -f "$s/$f.pid"
  done
}

case $cmd in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
