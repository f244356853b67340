#!/usr/bin/env python3
"""GPT-2 encoding throughput: `tessera prepare --tokenizer gpt2` against tiktoken's
`encode_ordinary_batch`, same file, same thread count, one run, side by side.

tiktoken gets the file cut into ~1 MB pieces at line breaks (its batch API parallelises over
pieces); tessera gets the file as one document and cuts it itself. Both build the GPT-2
encoder from the same encoder.json/vocab.bpe, offline. Loading the vocabulary is not timed
for tiktoken; tessera's figure is its own "encoded ... MB/s" line (reading, encoding and
writing shards, after the vocabulary is loaded).

usage: tokenize_bench.py --text FILE --gpt2 DIR [--threads 2] [--tessera .build/release/tessera]
"""
import argparse, os, re, subprocess, sys, tempfile, time

p = argparse.ArgumentParser()
p.add_argument("--text", required=True)
p.add_argument("--gpt2", required=True, help="directory with encoder.json and vocab.bpe")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--tessera", default=".build/release/tessera")
a = p.parse_args()

import tiktoken, tiktoken.load
ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(os.path.join(a.gpt2, "vocab.bpe"), os.path.join(a.gpt2, "encoder.json"))
enc = tiktoken.Encoding(name="gpt2", explicit_n_vocab=50257, mergeable_ranks=ranks,
    pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    special_tokens={"<|endoftext|>": 50256})
text = open(a.text, encoding="utf-8", newline="").read()
mb = len(text.encode()) / 1e6
pieces, lo = [], 0
cut = re.compile(r"(?<=[!-~])\n(?=\S)")
while lo < len(text):
    # Cut after a lone line break (visible ASCII before, non-space after), where a GPT-2
    # piece always starts, so the pieces encode to the same ids as the whole file.
    m = cut.search(text, lo + 1_000_000)
    hi = len(text) if m is None else m.start() + 1
    pieces.append(text[lo:hi]); lo = hi
t0 = time.perf_counter()
ids = enc.encode_ordinary_batch(pieces, num_threads=a.threads)
tt = time.perf_counter() - t0
n_tik = sum(len(x) for x in ids)
import numpy as np
reference = np.concatenate([np.asarray(x, dtype=np.uint16) for x in ids])
del ids, text, pieces

with tempfile.TemporaryDirectory() as out:
    r = subprocess.run([a.tessera, "prepare", "--input", a.text, "--out", out + "/d", "--tokenizer", "gpt2",
                        "--vocab", os.path.join(a.gpt2, "encoder.json"), "--merges", os.path.join(a.gpt2, "vocab.bpe"),
                        "--threads", str(a.threads), "--shard-tokens", "2000000000"], capture_output=True, text=True)
    if r.returncode != 0: sys.exit(r.stderr)
    m = re.search(r"encoded ([\d.]+) MB in ([\d.]+) s", r.stdout)
    tokens = re.search(r"(\d+) train tokens, (\d+) val tokens", r.stdout)
    ts = float(m.group(2)); n_ts = int(tokens.group(1)) + int(tokens.group(2)) - 1   # minus the leading <|endoftext|>
    # llm.c shards: 256 int32 of header, then uint16 ids; the document opens with <|endoftext|>.
    ours = np.concatenate([np.fromfile(os.path.join(out, "d", f), dtype=np.uint16)[512:]
                           for f in sorted(os.listdir(out + "/d")) if f.startswith("train_")]
                          + [np.fromfile(os.path.join(out, "d", f), dtype=np.uint16)[512:]
                             for f in sorted(os.listdir(out + "/d")) if f.startswith("val_")])[1:]
    same = len(ours) == len(reference) and bool((ours == reference).all())
print(f"file: {a.text}, {mb:.1f} MB, {a.threads} threads")
print(f"tiktoken {tiktoken.__version__} encode_ordinary_batch: {n_tik} tokens in {tt:.2f} s = {mb / tt:.1f} MB/s")
print(f"tessera prepare --tokenizer gpt2:      {n_ts} tokens in {ts:.2f} s = {mb / ts:.1f} MB/s")
print(f"ratio tessera / tiktoken: {tt / ts:.2f}x; ids " + ("identical" if same else "DIFFER"))
sys.exit(0 if same else 1)
