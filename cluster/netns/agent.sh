#!/usr/bin/env bash
# mpirun's remote agent for the netns harness, used in place of ssh: `agent.sh HOST CMD...`
# runs CMD inside the namespace that owns HOST's address, under that host's own name (a UTS
# namespace: Open MPI tells nodes apart by hostname, e.g. for MPI_COMM_TYPE_SHARED).
set -euo pipefail
prefix="${TSR_NETNS_PREFIX:-tsr}"
while [[ "${1:-}" == -* ]]; do shift; done   # ssh-style options mpirun may pass
host="$1"; shift
k="${host##*.}"
exec ip netns exec "${prefix}-h${k}" unshare --uts "$(dirname "$0")/named.sh" "${prefix}-h${k}" /bin/sh -c "$*"
