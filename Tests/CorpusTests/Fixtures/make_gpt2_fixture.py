#!/usr/bin/env python3
"""Regenerates gpt2-reference.json: tiktoken's GPT-2 ids for gpt2-torture.txt (all of them)
and for tinyshakespeare (count, FNV-1a 64 of the ids as little-endian uint32, first 64 ids).

Needs tiktoken (pip) and ../shared/data/gpt2 beside the repo; nothing is downloaded.
Run from the repo root:  python3 Tests/CorpusTests/Fixtures/make_gpt2_fixture.py
"""
import json, os, struct, sys
import tiktoken, tiktoken.load

here = os.path.dirname(os.path.abspath(__file__))
shared = os.path.join(here, "..", "..", "..", "..", "shared", "data")
gpt2 = os.path.join(shared, "gpt2")
if not os.path.exists(os.path.join(gpt2, "encoder.json")) or not os.path.exists(os.path.join(shared, "tinyshakespeare.txt")):
    # ../shared sits beside CI's checkout only; the committed fixture stays as it is.
    print(f"skipped: {gpt2}/encoder.json or {shared}/tinyshakespeare.txt is absent (../shared is beside CI's checkout only)")
    sys.exit(0)
ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(os.path.join(gpt2, "vocab.bpe"), os.path.join(gpt2, "encoder.json"))
enc = tiktoken.Encoding(name="gpt2", explicit_n_vocab=50257, mergeable_ranks=ranks,
    pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    special_tokens={"<|endoftext|>": 50256})

def fnv(ids):
    h = 0xcbf29ce484222325
    for b in b"".join(struct.pack("<I", i) for i in ids):
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h

torture = open(os.path.join(here, "gpt2-torture.txt"), encoding="utf-8", newline="").read()
out = {"torture": enc.encode_ordinary(torture), "hello": enc.encode_ordinary("Hello world")}
shakespeare = os.path.join(shared, "tinyshakespeare.txt")
ids = enc.encode_ordinary(open(shakespeare, encoding="utf-8", newline="").read())
out["tinyshakespeare"] = {"count": len(ids), "fnv1a64": str(fnv(ids)), "first": ids[:64]}
json.dump(out, open(os.path.join(here, "gpt2-reference.json"), "w"), separators=(",", ":"))
print("torture", len(out["torture"]), "tinyshakespeare", len(ids))
