"""Ratios of `make bench`: tessera's 1 rank × 2 threads results against PyTorch's best run of
each configuration (runs interleaved with tessera's, so a slow period of a shared machine
does not flatter tessera). Reads bench/results.jsonl and bench/reference.jsonl."""
import json
import sys


def load(path):
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def main(results, reference):
    ours = {}
    for r in load(results):
        if r.get("ranks") == 1 and r.get("threadsPerRank") == 2 and r.get("recompute", "none") == "none" \
                and r.get("attention", "fused") == "fused":
            ours.setdefault((r["config"], r["precision"]), r)
    theirs = {}
    for r in load(reference):
        theirs.setdefault((r["config"], r["precision"]), []).append(r["tokensPerSecond"])
    print("config   prec  tessera tok/s  PyTorch tok/s (runs: best, others)   tessera ÷ PyTorch's best")
    for key in sorted(ours, key=lambda k: (list(dict.fromkeys(c for c, _ in ours)).index(k[0]), k[1] != "fp32")):
        t = ours[key]["tokensPerSecond"]
        runs = sorted(theirs.get(key, []), reverse=True)
        if not runs:
            continue
        others = ", ".join(f"{x:.0f}" for x in runs[1:])
        print(f"{key[0]:8} {key[1]:4}  {t:13.0f}  {runs[0]:13.0f} ({others or '-'})".ljust(70) + f"{t / runs[0]:.2f}×")


if __name__ == "__main__":
    main(*(sys.argv[1:3] if len(sys.argv) > 2 else ("bench/results.jsonl", "bench/reference.jsonl")))
