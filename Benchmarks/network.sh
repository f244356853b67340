#!/usr/bin/env bash
# `make bench-network`: DDP, ZeRO-3, local SGD and PowerSGD across two network-namespace hosts
# (cluster/netns/harness.sh, one rank each) with each host's link unlimited, capped at
# 1 Gbit/s and at 100 Mbit/s (tc tbf), for the `small` and `gpt2` shapes; then DDP, ZeRO-3
# and hybrid sharding (ZeRO-3 within each host) on 2 hosts × 2 ranks for `small`, with the
# bytes each host sent on its link per step. Prints bench's table per run and appends every
# result to bench/network.jsonl with the link speed.
# Needs root (network namespaces); run `make build` first.
set -euo pipefail
cd "$(dirname "$0")/.."
harness=cluster/netns/harness.sh
configs="${BENCH_NETWORK_CONFIGS:-small gpt2}"
hybrid_configs="${BENCH_NETWORK_HYBRID_CONFIGS:-small}"
rates="${BENCH_NETWORK_RATES:-unlimited 1gbit 100mbit}"
out="${BENCH_NETWORK_OUT:-bench/network.jsonl}"
mkdir -p bench; rm -f "$out"
trap '$harness down' EXIT
# BENCH_NETWORK_MODES (e.g. "powersgd-rank,shard-group") keeps only the modes whose flags
# contain one of its words; BENCH_NETWORK_CONFIGS / _HYBRID_CONFIGS=" " skip a section.
wanted() {
  [ -z "${BENCH_NETWORK_MODES:-}" ] && return 0
  local w; for w in ${BENCH_NETWORK_MODES//,/ }; do [[ "$1" == *"$w"* ]] && return 0; done
  return 1
}
limit_links() {
  for k in 1 2; do
    if [ "$1" = unlimited ]; then $harness unlimit $k; else $harness limit $k "$1"; fi
  done
}
# One bench run: prints its table row, appends its JSON with the link and the bytes host 1
# and host 2 sent on their links during the timed steps (start-up and warm-up traffic
# cancel: the counters are read for `--steps S` and for `--steps 2S`).
measure() {
  local rate=$1 ranks=$2 steps=$3; shift 3
  local tmp a1 a2 b1 b2 c1 c2
  tmp=$(mktemp)
  a1=$($harness txbytes 1); a2=$($harness txbytes 2)
  $harness run -n "$ranks" -- bench "$@" --steps "$steps" --threads 1 --json "$tmp" | tail -n 2
  b1=$($harness txbytes 1); b2=$($harness txbytes 2)
  $harness run -n "$ranks" -- bench "$@" --steps $((2 * steps)) --threads 1 > /dev/null
  c1=$($harness txbytes 1); c2=$($harness txbytes 2)
  local h1=$(( ((c1 - b1) - (b1 - a1)) / steps )) h2=$(( ((c2 - b2) - (b2 - a2)) / steps ))
  sed "s/^{/{\"link\":\"$rate\",\"hostBytesPerStep\":[$h1,$h2],/" "$tmp" >> "$out"; rm -f "$tmp"
}
$harness up 2
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; 2 namespace hosts × 1 rank"
for rate in $rates; do
  limit_links "$rate"
  for config in $configs; do
    # Few timed steps where each one moves hundreds of MB over a slow link; local SGD times
    # whole rounds (H inner steps and their synchronisation).
    case "$config" in gpt2) steps=2; h=5 ;; *) steps=5; h=5 ;; esac
    for mode in "--zero 0" "--zero 3" "--sync-every $h" "--powersgd-rank 4"; do
      wanted "$mode" || continue
      case "$mode" in --sync-every*) w="--warmup $h --steps $((2 * h))" ;; *) w="--warmup 1 --steps $steps" ;; esac
      echo "--- link $rate, $config, ${mode}"
      tmp=$(mktemp)
      # One thread per rank: the two "hosts" share this machine's 2 cores.
      $harness run -n 2 -- bench --config "$config" $mode $w --threads 1 --json "$tmp" | tail -n 2
      sed "s/^{/{\"link\":\"$rate\",/" "$tmp" >> "$out"; rm -f "$tmp"
    done
  done
done
# Hybrid sharding needs several ranks per host: 2 hosts × 2 ranks (4 ranks on the 2 cores).
$harness up 2 2
echo "machine: 2 namespace hosts × 2 ranks"
for rate in $rates; do
  limit_links "$rate"
  for config in $hybrid_configs; do
    for mode in "--zero 0" "--zero 3" "--zero 3 --shard-group node"; do
      wanted "$mode" || continue
      echo "--- link $rate, $config, ${mode}, 2 hosts × 2 ranks"
      measure "$rate" 4 2 --config "$config" $mode --warmup 1
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\nlink       config  ranks  mode                 tokens/s   ms/step   comm ms  sent MB/step/rank  host link MB/step")
for r in rows:
    mode = f"local SGD H={r['syncEvery']}" if r.get("syncEvery") else ("DDP" if r["zero"] == 0 else f"ZeRO-{r['zero']}")
    if r.get("powerSGDRank"): mode += f" PowerSGD r={r['powerSGDRank']}"
    if r.get("shardGroup"): mode += f" groups={r['shardGroup']}"
    host = "/".join(f"{b/1e6:.2f}" for b in r["hostBytesPerStep"]) if "hostBytesPerStep" in r else "-"
    print(f"{r['link']:<10} {r['config']:<7} {r['ranks']:>5}  {mode:<19} {r['tokensPerSecond']:9.0f} {r['msPerStep']:9.1f} {r['msCommWait']:9.1f} {r['sentBytesPerStep']/1e6:18.2f}  {host:>17}")
PY
