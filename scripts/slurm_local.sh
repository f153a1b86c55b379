#!/usr/bin/env bash
# A single-node Slurm on localhost from Debian's packages, for tests and CI (run as root):
#   eval "$(scripts/slurm_local.sh start)"   # installs what is missing, starts munge, MariaDB, slurmdbd,
#                                             # slurmctld, slurmd; prints `export SLURM_CONF=...`
#   scripts/slurm_local.sh status
#   scripts/slurm_local.sh stop               # cancels every job of this cluster, stops the daemons
# Everything lives in $RLVR_SLURM_DIR (default /tmp/rlvr-slurm): config, state, logs (log/), database.
# A fresh start wipes it. Not for a machine that runs its own Slurm, munge or MariaDB on the default ports.
set -euo pipefail

DIR=${RLVR_SLURM_DIR:-/tmp/rlvr-slurm}
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket.2
DB_PORT=${RLVR_SLURM_DB_PORT:-3306}
HOST=$(hostname -s)
export SLURM_CONF=$CONF

say() { echo "slurm_local: $*" >&2; }
die() { say "error: $*"; exit 1; }

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
wait_for() {
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$((seconds * 2))"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "$what did not come up within ${seconds}s (logs: $DIR/log/)"
}

install_packages() {
    local missing=()
    for cmd in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; install them as root: apt-get install slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
    say "installing Slurm, munge and MariaDB (missing: ${missing[*]})"
    # The packages' scripts would start their services: refuse that for the install (keep a policy already there).
    local policy=/usr/sbin/policy-rc.d ours=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
    fi
    local rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client slurmdbd munge mariadb-server; } >&2 || rc=$?
    [[ $ours -eq 1 ]] && rm -f "$policy"
    [[ $rc -eq 0 ]] || die "apt-get install failed (exit $rc)"
}

write_configs() {
    local cpus mem_mib password
    cpus=$(nproc)
    mem_mib=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # leave 1 GiB to the system
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    echo "$password" >"$DIR/db_password" && chmod 600 "$DIR/db_password"

    cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: one node (this host), one partition; no cgroups.
ClusterName=rlvr
SlurmctldHost=$HOST(127.0.0.1)
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mib State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
# array tasks start at once, not one every ~2.5 s
SchedulerParameters=batch_sched_delay=0,sched_interval=5
ReturnToService=2
MailProg=/bin/true
# a job past its time limit is killed 5 s after SIGTERM (default 30)
KillWait=5
# slurmctld ignores AuthInfo when it talks to slurmdbd: it takes the munge socket from here
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/linux
EOF

    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/slurmdbd.conf"  # slurmdbd refuses a readable one
}

start_munge() {
    mkdir -p "$DIR/munge"
    chmod 755 "$DIR" "$DIR/munge"  # munged refuses a socket directory other users cannot reach
    mungekey -c -k "$DIR/munge/munge.key" >&2
    chmod 400 "$DIR/munge/munge.key"
    munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for 10 munged munge --socket="$MUNGE_SOCKET" -n
}

start_mariadb() {
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=socket \
        --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $DIR/log/mariadb-install.log"
    setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$DIR/mysql.sock" \
        --pid-file="$DIR/run/mariadb.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --log-error="$DIR/log/mariadb.log" --skip-log-bin </dev/null >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb-admin --socket="$DIR/mysql.sock" ping
    # slurmdbd connects by TCP; a user for both names 127.0.0.1 may resolve to
    local password; password=$(cat "$DIR/db_password")
    mariadb --socket="$DIR/mysql.sock" <<EOF
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

node_idle() { [[ $(sinfo -h -n "$HOST" -o %T 2>/dev/null) == idle ]]; }

start() {
    if alive "$DIR/run/slurmctld.pid"; then
        say "already running ($DIR)"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    install_packages
    local t0=$SECONDS
    stop_daemons quiet  # leftovers of an earlier start whose controller died
    rm -rf "$DIR"
    mkdir -p "$DIR"/{run,log,state,spool}
    write_configs
    start_munge
    start_mariadb
    slurmdbd  # daemonises; reads slurmdbd.conf beside $SLURM_CONF
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster rlvr >/dev/null
    slurmctld -c  # -c: no state from an earlier run
    wait_for 30 slurmctld scontrol ping
    slurmd
    wait_for 60 "node $HOST (idle)" node_idle
    say "up in $((SECONDS - t0))s: $(sinfo -h -o '%P %D %c CPUs %m MiB %T')"
    echo "export SLURM_CONF=$CONF"
}

# stop_daemons [quiet]: cancel this cluster's jobs, then stop every daemon by its pid file
stop_daemons() {
    if alive "$DIR/run/slurmctld.pid"; then
        local jobs; jobs=$(squeue -h -o %A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            [[ ${1:-} == quiet ]] || say "cancelling jobs: $(echo $jobs)"
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 60); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.5; done
        fi
    fi
    local name pid
    for name in slurmd slurmctld slurmdbd mariadb munged; do
        alive "$DIR/run/$name.pid" || continue
        pid=$(cat "$DIR/run/$name.pid")
        kill "$pid"
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then say "$name ($pid) ignored SIGTERM for 30 s: SIGKILL"; kill -9 "$pid"; fi
        [[ ${1:-} == quiet ]] || say "stopped $name ($pid)"
    done
}

status() {
    local name state rc=0
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        if alive "$DIR/run/$name.pid"; then state="running ($(cat "$DIR/run/$name.pid"))"; else state="stopped"; rc=1; fi
        echo "$name: $state"
    done
    [[ $rc -eq 0 ]] && sinfo && squeue
    return $rc
}

case ${1:-} in
    start) start ;;
    stop) stop_daemons ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status   (state and logs in \$RLVR_SLURM_DIR, default /tmp/rlvr-slurm)" >&2; exit 2 ;;
esac
