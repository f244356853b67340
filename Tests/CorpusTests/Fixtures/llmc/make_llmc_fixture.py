#!/usr/bin/env python3
"""Writes tiny_train.bin and tiny_val.bin with llm.c's own writer (`write_datafile` from
llm.c's dev/data/data_common.py), for the test that tessera reads llm.c's shards.

Tokens: 1,000 (train) and 300 (val) ids of the sequence (i * 7919) % 50257, so the test can
recompute them. Needs an llm.c checkout (LLMC_DIR) and numpy, requests, tqdm (its imports).

    LLMC_DIR=/path/to/llm.c python3 Tests/CorpusTests/Fixtures/llmc/make_llmc_fixture.py
"""
import os, sys
sys.path.insert(0, os.path.join(os.environ["LLMC_DIR"], "dev", "data"))
from data_common import write_datafile

here = os.path.dirname(os.path.abspath(__file__))
write_datafile(os.path.join(here, "tiny_train.bin"), [(i * 7919) % 50257 for i in range(1000)])
write_datafile(os.path.join(here, "tiny_val.bin"), [(i * 7919) % 50257 for i in range(1000, 1300)])
