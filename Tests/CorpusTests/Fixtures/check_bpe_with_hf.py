#!/usr/bin/env python3
"""A BPE vocabulary that tessera learns loads in Hugging Face `tokenizers` and encodes to the
same ids as tessera.

Runs `tessera prepare --tokenizer bpe` on TEXT, loads the vocab.json + merges.txt it wrote
with `tokenizers` (BPE model, GPT-2's byte-level pre-tokenizer), encodes TEXT, and compares
with the ids in tessera's shards. With --write-fixture it also records Hugging Face's ids
for the test that checks, without Python, that tessera still learns and encodes the same
(bpe-hf-reference.json; TEXT must then be gpt2-torture.txt at --vocab-size 400).

usage: check_bpe_with_hf.py TEXT [--vocab-size 400] [--tessera .build/release/tessera] [--write-fixture]
"""
import argparse, json, os, subprocess, sys, tempfile
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

p = argparse.ArgumentParser()
p.add_argument("text")
p.add_argument("--vocab-size", type=int, default=400)
p.add_argument("--tessera", default=".build/release/tessera")
p.add_argument("--write-fixture", action="store_true")
a = p.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "d")
    r = subprocess.run([a.tessera, "prepare", "--input", a.text, "--out", out, "--tokenizer", "bpe",
                        "--vocab-size", str(a.vocab_size), "--shard-tokens", "2000000000"], capture_output=True, text=True)
    if r.returncode: sys.exit(r.stderr)
    print(r.stdout.strip())
    tok = Tokenizer(models.BPE.from_file(os.path.join(out, "vocab.json"), os.path.join(out, "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    text = open(a.text, encoding="utf-8", newline="").read()
    hf = tok.encode(text).ids
    shard = lambda s: np.fromfile(os.path.join(out, f"{s}_000000.bin"), dtype=np.uint16)[512:]
    ours = np.concatenate([shard("train"), shard("val")])[1:].tolist()   # the document opens with <|endoftext|>
    print(f"Hugging Face tokenizers loaded vocab.json ({tok.get_vocab_size()} ids) and merges.txt; "
          f"{len(hf)} ids, tessera {len(ours)}: " + ("identical" if hf == ours else "DIFFERENT"))
    assert tok.decode(hf) == text, "decoding does not invert encoding"
    if a.write_fixture:
        here = os.path.dirname(os.path.abspath(__file__))
        json.dump({"vocabSize": a.vocab_size, "ids": hf}, open(os.path.join(here, "bpe-hf-reference.json"), "w"),
                  separators=(",", ":"))
    sys.exit(0 if hf == ours else 1)
