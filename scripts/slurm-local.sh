#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the cluster-profile tests.
#   slurm-local.sh install        apt-get the Debian packages (root; ~5 s)
#   slurm-local.sh start STATE    write slurm.conf under STATE, start munged/slurmctld/slurmd
#   slurm-local.sh stop STATE     stop exactly the daemons started by `start STATE`
# A fake GPU GRES (File=/dev/null) lets `--gpus=1` requests schedule on a CPU-only node.
set -euo pipefail
cmd=${1:?usage: slurm-local.sh install|start STATE|stop STATE}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
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

start() {
  local s=${1:?state dir}
  write_conf "$s"
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  runuser -u munge -- /usr/sbin/munged --pid-file="$s/munged.pid" 2>/dev/null \
    || runuser -u munge -- /usr/sbin/munged
  [ -f "$s/munged.pid" ] || pgrep -u munge -n munged > "$s/munged.pid"
  slurmctld && slurmd
  for _ in $(seq 60); do
    [ "$(sinfo -h -o %T 2>/dev/null | head -n1)" = idle ] && return 0
    sleep 0.5
  done
  echo "slurm-local: node did not become idle; see $s/log" >&2
  return 1
}

stop() {
  local s=${1:?state dir} f
  for f in slurmd slurmctld munged; do
    [ -f "$s/$f.pid" ] && kill "$(cat "$s/$f.pid")" 2>/dev/null || true
  done
}

case $cmd in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
