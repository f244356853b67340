#!/usr/bin/env python3
"""Reads a tessera run's TensorBoard events with TensorBoard's own reader and compares every
scalar with RUN/metrics.jsonl (not needed by CI, which parses the files with tessera's reader).

    pip install tensorboard
    python3 Tests/CLITests/Fixtures/check_tensorboard.py runs/demo
"""
import json
import math
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator

TAGS = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm", "val/loss": "val_loss",
        "perf/tokens_per_s": "tokens_per_s", "perf/ms_per_step": "ms_per_step", "perf/mfu": "mfu",
        "perf/ms_comm_wait": "ms_comm_wait", "memory/peak_rss_mb": "peak_rss_mb", "train/loss_scale": "loss_scale"}


def as_float32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def main(run):
    acc = event_accumulator.EventAccumulator(run + "/tb", size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    metrics = [json.loads(line) for line in open(run + "/metrics.jsonl")]
    checked = 0
    for tag in sorted(tags):
        events = {e.step: e.value for e in acc.Scalars(tag)}
        key = TAGS.get(tag)
        if key is None:
            print(f"{tag}: {len(events)} points (no metrics.jsonl key to compare)")
            continue
        expected = {m["step"]: m[key] for m in metrics if m.get(key) is not None}
        assert set(events) == set(expected), f"{tag}: steps {sorted(set(events) ^ set(expected))[:10]} differ"
        for step, value in expected.items():
            v = as_float32(float(value))
            assert events[step] == v or (math.isnan(v) and math.isnan(events[step])), f"{tag} step {step}: {events[step]} != {v}"
        checked += len(expected)
        first, last = min(events), max(events)
        print(f"{tag}: {len(events)} points, step {first}: {events[first]:.6g} ... step {last}: {events[last]:.6g}")
    print(f"tensorboard {__import__('tensorboard').__version__}: {len(tags)} tags, {checked} values equal to metrics.jsonl")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
