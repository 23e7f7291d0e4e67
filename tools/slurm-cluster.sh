#!/usr/bin/env bash
# A single-node SLURM cluster of this host for tests: munged, slurmctld and slurmd with
# their keys, state, logs and slurm.conf in DIR (0700), nothing installed or changed
# outside it.
#   tools/slurm-cluster.sh start DIR   # then: SLURM_CONF=DIR/slurm.conf sbatch ...
#   tools/slurm-cluster.sh stop DIR    # cancels the jobs, stops the daemons by their pids
# On failure, the last line on stderr says what could not run.
set -euo pipefail

command=${1:?usage: slurm-cluster.sh start|stop DIR}
dir=${2:?usage: slurm-cluster.sh start|stop DIR}
sbin=/usr/sbin

fail() { echo "$*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop() {
    [ -d "$dir" ] || return 0
    if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ]; then
        SLURM_CONF="$dir/slurm.conf" scancel --quiet --full "--user=$(id -un)" 2>/dev/null || true
        for _ in $(seq 1 30); do
            [ -z "$(SLURM_CONF="$dir/slurm.conf" squeue --noheader 2>/dev/null)" ] && break
            sleep 1
        done
    fi
    for pidfile in slurmd.pid slurmctld.pid munge/munged.pid; do
        if [ -f "$dir/$pidfile" ]; then
            pid=$(cat "$dir/$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/$pidfile"
        fi
    done
}

start() {
    for daemon in munged slurmctld slurmd; do
        [ -x "$sbin/$daemon" ] || fail "$sbin/$daemon is missing (tools/setup-system.sh installs SLURM)"
    done
    mkdir -p "$dir"
    chmod 700 "$dir"
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
    chmod 700 "$dir/munge"
    mungekey --create --keyfile="$dir/munge/munge.key" >/dev/null 2>&1 \
        || fail "mungekey could not create a key"
    "$sbin/munged" --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed" 2>"$dir/log/munged.err" \
        || fail "munged did not start: $(tail -1 "$dir/log/munged.err")"
    host=$(hostname -s)
    cpus=$(nproc)
    memory_mib=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
    user=$(id -un)
    cat >"$dir/slurm.conf" <<CONF
ClusterName=vmfault-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
SlurmUser=$user
SlurmdUser=$user
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mib State=UNKNOWN
PartitionName=vmfault Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
    export SLURM_CONF="$dir/slurm.conf"
    "$sbin/slurmctld" -f "$SLURM_CONF" 2>"$dir/log/slurmctld.err" \
        || fail "slurmctld did not start: $(tail -1 "$dir/log/slurmctld.err")"
    "$sbin/slurmd" -f "$SLURM_CONF" 2>"$dir/log/slurmd.err" \
        || fail "slurmd did not start: $(tail -1 "$dir/log/slurmd.err")"
    for _ in $(seq 1 30); do
        if sinfo --noheader --nodes="$host" -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            return 0
        fi
        sleep 1
    done
    reason=$(grep -h -i error "$dir/log/slurmd.log" "$dir/log/slurmctld.log" 2>/dev/null | tail -1)
    fail "the SLURM node did not come up: ${reason:-$(sinfo --noheader 2>&1 | tail -1)}"
}

case "$command" in
    start)
        if ! start; then
            stop
            exit 1
        fi
        ;;
    stop) stop ;;
    *) fail "usage: slurm-cluster.sh start|stop DIR" ;;
esac
