#!/usr/bin/env bash
# Start a tessera job on this machine: launch/local.sh -n N -- <tessera args>
#
# Wraps mpirun with what a single host (often a container, often as root) needs, so users
# never have to remember it: permission to run as root, oversubscription when N exceeds the
# cores, the shared-memory transport without the cross-memory-attach copy that containers
# forbid, and one BLAS thread share per rank (tessera reads OMPI_COMM_WORLD_LOCAL_SIZE).
set -euo pipefail
usage() { echo "usage: launch/local.sh -n RANKS [--bin PATH] -- <tessera arguments>" >&2; exit 64; }

ranks=""
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${TESSERA_BIN:-$here/.build/release/tessera}"
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--ranks) ranks="${2:-}"; shift 2 ;;
    --bin) bin="${2:-}"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "error: unknown option $1 (launch/local.sh): put tessera's own arguments after --" >&2; exit 64 ;;
  esac
done
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "error: -n needs a positive rank count (launch/local.sh): e.g. -n 2" >&2; exit 64; }
[ -x "$bin" ] || { echo "error: $bin not found (launch/local.sh): run 'make build' first" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "error: mpirun not found (launch/local.sh): run 'make setup'" >&2; exit 2; }

cores=$(nproc)
args=(-np "$ranks" --oversubscribe --mca btl_vader_single_copy_mechanism none --mca btl self,vader)
if [ "$ranks" -le "$cores" ]; then
  args+=(--bind-to core)
else
  # More ranks than cores: do not pin, and let waiting ranks yield the CPU.
  args+=(--bind-to none --mca mpi_yield_when_idle 1)
fi
. "$here/launch/lib.sh"
allow_root
run_forwarding_stop mpirun "${args[@]}" "$bin" "$@"
