#!/usr/bin/env bash
# `make bench-network`: DDP, ZeRO-3 and local SGD across two network-namespace hosts
# (cluster/netns/harness.sh, one rank each) with each host's link unlimited, capped at
# 1 Gbit/s and at 100 Mbit/s (tc tbf), for the `small` and `gpt2` shapes. Prints bench's table
# per run and appends every result to bench/network.jsonl with the link speed.
# Needs root (network namespaces); run `make build` first.
set -euo pipefail
cd "$(dirname "$0")/.."
harness=cluster/netns/harness.sh
configs="${BENCH_NETWORK_CONFIGS:-small gpt2}"
rates="${BENCH_NETWORK_RATES:-unlimited 1gbit 100mbit}"
out=bench/network.jsonl
mkdir -p bench; rm -f "$out"
trap '$harness down' EXIT
$harness up 2
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; 2 namespace hosts × 1 rank"
for rate in $rates; do
  for k in 1 2; do
    if [ "$rate" = unlimited ]; then $harness unlimit $k; else $harness limit $k "$rate"; fi
  done
  for config in $configs; do
    # Few timed steps where each one moves hundreds of MB over a slow link; local SGD times
    # whole rounds (H inner steps and their synchronisation).
    case "$config" in gpt2) steps=2; h=5 ;; *) steps=5; h=5 ;; esac
    for mode in "--zero 0" "--zero 3" "--sync-every $h"; do
      case "$mode" in --sync-every*) w="--warmup $h --steps $((2 * h))" ;; *) w="--warmup 1 --steps $steps" ;; esac
      echo "--- link $rate, $config, ${mode}"
      tmp=$(mktemp)
      # One thread per rank: the two "hosts" share this machine's 2 cores.
      $harness run -n 2 -- bench --config "$config" $mode $w --threads 1 --json "$tmp" | tail -n 2
      sed "s/^{/{\"link\":\"$rate\",/" "$tmp" >> "$out"; rm -f "$tmp"
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\nlink       config  mode              tokens/s   ms/step   comm ms  sent MB/step")
for r in rows:
    mode = f"local SGD H={r['syncEvery']}" if r.get("syncEvery") else ("DDP" if r["zero"] == 0 else f"ZeRO-{r['zero']}")
    print(f"{r['link']:<10} {r['config']:<7} {mode:<16} {r['tokensPerSecond']:9.0f} {r['msPerStep']:9.1f} {r['msCommWait']:9.1f} {r['sentBytesPerStep']/1e6:12.2f}")
PY
