#!/usr/bin/env bash
# CI: rlvr on a real Slurm. Starts a single-node Slurm on localhost (slurmctld, slurmd, munge, slurmdbd + MariaDB;
# installs the Debian packages if missing: needs root and the package registries), runs tests/test_slurm.py
# against it (they must run: RLVR_REQUIRE_SLURM=1 turns a skip into a failure), stops it. Run after .ci/run
# (its .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f .venv/bin/activate ]] || { echo ".ci/slurm.sh: no .venv here: run .ci/run first (it installs rlvr)" >&2; exit 1; }
. .venv/bin/activate
start=$SECONDS
eval "$(scripts/slurm_local.sh start)"
finish() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then  # the daemons' view, for a failure that is Slurm's
        tail -n 20 "${RLVR_SLURM_DIR:-/tmp/rlvr-slurm}"/log/{slurmctld,slurmd,slurmdbd}.log >&2 || true
    fi
    scripts/slurm_local.sh stop
    echo ".ci/slurm.sh: $((SECONDS - start)) s, exit $rc" >&2
}
trap finish EXIT
RLVR_REQUIRE_SLURM=1 pytest tests/test_slurm.py -q --durations=0
