#!/usr/bin/env bash
# Checks that shards tessera wrote pass llm.c's own loader. Needs an llm.c checkout:
#   LLMC_DIR=/path/to/llm.c Tests/CorpusTests/Fixtures/llmc/check_with_llmc.sh DATA_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${LLMC_DIR:?set LLMC_DIR to an llm.c checkout}"
data=${1:?usage: check_with_llmc.sh DATA_DIR}
bin=$(mktemp -d)/check
cc -O1 -I "$LLMC_DIR" "$here/check_with_llmc.c" -o "$bin" -lm
"$bin" "$data/train_*.bin"
"$bin" "$data/val_*.bin"
