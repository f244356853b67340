#!/usr/bin/env bash
# Start a tessera job across hosts over TCP:
#   launch/multinode.sh --hostfile FILE -n RANKS [--if CIDR] [--agent CMD] -- <tessera args>
#
# Every host needs the same tessera binary path, the data and a shared (or per-host)
# --out directory. --if limits MPI's TCP traffic to one network (e.g. 192.168.1.0/24);
# --agent replaces ssh for starting remote daemons (the netns harness uses `ip netns exec`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$here/launch/lib.sh"
hostfile="" ranks="" iface="" agent=""
bin="${TESSERA_BIN:-$here/.build/release/tessera}"
while [ $# -gt 0 ]; do
  case "$1" in
    --hostfile) hostfile="${2:-}"; shift 2 ;;
    -n|--ranks) ranks="${2:-}"; shift 2 ;;
    --if) iface="${2:-}"; shift 2 ;;
    --agent) agent="${2:-}"; shift 2 ;;
    --bin) bin="${2:-}"; shift 2 ;;
    --) shift; break ;;
    *) die_usage "unknown option $1" "launch/multinode.sh" "put tessera's own arguments after --" ;;
  esac
done
[ -f "$hostfile" ] || die_usage "--hostfile '$hostfile' not found" "launch/multinode.sh" "pass a file of 'HOST slots=N' lines (see cluster/hostfile.example)"
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || die_usage "-n needs a positive rank count" "launch/multinode.sh" "e.g. -n 4"
allow_root
args=(--hostfile "$hostfile" -np "$ranks" --bind-to none --mca btl tcp,self --mca btl_tcp_links 1)
# A lost host must end the job, not hang it: TCP keepalive on mpirun's links to its
# daemons notices an unreachable host within 15-20 s (the default waits 5 minutes). The
# probes alone take 10 s, so a rank's watchdog with a short --comm-timeout (5 s) reports the
# stalled collective first, naming it, instead of Open MPI's generic lost-daemon message.
args+=(--mca oob_tcp_keepalive_time 5 --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes 5)
if [ -n "$iface" ]; then args+=(--mca btl_tcp_if_include "$iface" --mca oob_tcp_if_include "$iface"); fi
if [ -n "$agent" ]; then args+=(--mca plm_rsh_agent "$agent"); fi
# Remote ranks need the same environment switches.
for v in OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; do
  if [ -n "${!v:-}" ]; then args+=(-x "$v"); fi
done
run_forwarding_stop mpirun "${args[@]}" "$bin" "$@"
