#!/usr/bin/env bash
# A multi-host test bed on one machine: N network namespaces ("hosts") joined by veth links
# to a bridge in a switch namespace. Addresses exist only inside these namespaces; nothing
# here talks to any other address.
#
#   cluster/netns/harness.sh up N [SLOTS]   create tsr-h1..tsr-hN (10.213.0.1..N) + switch
#   cluster/netns/harness.sh hostfile       print the hostfile path (SLOTS ranks per host, default 1)
#   cluster/netns/harness.sh run -n N -- <tessera args>   mpirun from host 1 over TCP
#   cluster/netns/harness.sh cut K | restore K            take host K's link down / up (restore
#                                                         also ends host K's leftover processes)
#   cluster/netns/harness.sh delay K MS                   add latency on host K's link (tc netem)
#   cluster/netns/harness.sh limit K RATE | unlimit K     cap host K's sending rate (tc tbf, e.g. 100mbit)
#   cluster/netns/harness.sh txbytes K                    bytes host K has sent on its link so far
#   cluster/netns/harness.sh down           remove everything (safe to repeat)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
prefix="${TSR_NETNS_PREFIX:-tsr}"
state="/tmp/${prefix}-netns"
net="10.213.0"

sw="${prefix}-sw"
host_ns() { echo "${prefix}-h$1"; }

up() {
  local n="$1" slots="${2:-1}"
  down
  mkdir -p "$state"
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  : > "$state/hostfile"
  for k in $(seq 1 "$n"); do
    local ns; ns=$(host_ns "$k")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "${prefix}-e$k" type veth peer name "${prefix}-p$k"
    ip link set "${prefix}-e$k" netns "$ns"
    ip link set "${prefix}-p$k" netns "$sw"
    ip -n "$ns" link set "${prefix}-e$k" name eth0
    ip -n "$ns" addr add "$net.$k/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$sw" link set "${prefix}-p$k" master br0
    ip -n "$sw" link set "${prefix}-p$k" up
    echo "$net.$k slots=$slots" >> "$state/hostfile"
  done
  echo "$n" > "$state/hosts"
}

down() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}-(h[0-9]+|sw)$" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$state"
}

case "${1:-}" in
  up) up "${2:?usage: harness.sh up N [SLOTS]}" "${3:-1}" ;;
  down) down ;;
  hostfile) echo "$state/hostfile" ;;
  cut) ip -n "$sw" link set "${prefix}-p${2:?host}" down ;;
  restore)
    # A host that comes back has no processes left from before the cut (as after a reboot).
    ip netns pids "$(host_ns "${2:?host}")" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip -n "$sw" link set "${prefix}-p$2" up
    # Ready when the bridge forwards on the port again; forget neighbours that failed meanwhile.
    for _ in $(seq 1 50); do
      ip -n "$sw" -d link show "${prefix}-p$2" | grep -q "state forwarding" && break
      sleep 0.2
    done
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^${prefix}-h[0-9]+$"); do ip -n "$ns" neigh flush all 2>/dev/null || true; done ;;
  delay) ip netns exec "$(host_ns "${2:?host}")" tc qdisc replace dev eth0 root netem delay "${3:?ms}ms" ;;
  # A token bucket on the host's egress: the link's bandwidth as a 1/10 Gb Ethernet port
  # would give it (tbf works in these namespaces; netem's rate does not).
  limit) ip netns exec "$(host_ns "${2:?host}")" tc qdisc replace dev eth0 root tbf rate "${3:?rate, e.g. 100mbit}" \
           burst 256kb latency 50ms ;;
  txbytes) ip netns exec "$(host_ns "${2:?host}")" cat /sys/class/net/eth0/statistics/tx_bytes ;;
  unlimit) ip netns exec "$(host_ns "${2:?host}")" tc qdisc del dev eth0 root 2>/dev/null || true ;;
  run)
    shift
    [ "${1:-}" = "-n" ] || { echo "usage: harness.sh run -n N -- <tessera args>" >&2; exit 64; }
    n="$2"; shift 2; [ "${1:-}" = "--" ] && shift
    # Host 1 runs mpirun and its own ranks under its own hostname, as agent.sh does for the others.
    exec ip netns exec "$(host_ns 1)" unshare --uts "$here/cluster/netns/named.sh" "$(host_ns 1)" \
      "$here/launch/multinode.sh" --hostfile "$state/hostfile" -n "$n" \
      --if "$net.0/24" --agent "$here/cluster/netns/agent.sh" -- "$@" ;;
  *) sed -n '2,14p' "$0" >&2; exit 64 ;;
esac
