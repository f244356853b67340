#!/usr/bin/env bash
# mpirun's remote agent for the netns harness, used in place of ssh: `agent.sh HOST CMD...`
# runs CMD inside the namespace that owns HOST's address.
set -euo pipefail
prefix="${TSR_NETNS_PREFIX:-tsr}"
while [[ "${1:-}" == -* ]]; do shift; done   # ssh-style options mpirun may pass
host="$1"; shift
k="${host##*.}"
exec ip netns exec "${prefix}-h${k}" /bin/sh -c "$*"
