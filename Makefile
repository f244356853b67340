# Tessera: `make run` trains a small model on 2 ranks; `make test` runs every test.
SHELL := /bin/bash
APT_PACKAGES := libopenblas-dev libopenmpi-dev openmpi-bin libzstd-dev libdnnl-dev pkg-config fortunes iproute2 librsvg2-bin
BIN := .build/release/tessera
RUN_DIR ?= runs/demo
DATA_DIR ?= data/default

.PHONY: setup build test fuzz run bench bench-network bench-reference-setup fixture clean

# Installs only what is missing; a second call does nothing.
setup:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "setup: installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	else echo "setup: all system packages present"; fi

build: setup
	swift build -c release

test: build
	swift test -c release

# A long run of the fuzz test's mutator (make test runs a few hundred mutations); a crashing
# input is kept in the temporary directory and named in the output. FUZZ_SCALE × ~340
# mutations, FUZZ_SEED picks the sequence.
FUZZ_SCALE ?= 30
FUZZ_SEED ?= $(shell date +%s)
fuzz: build
	TESSERA_FUZZ_SCALE=$(FUZZ_SCALE) TESSERA_FUZZ_SEED=$(FUZZ_SEED) swift test -c release --filter FuzzTests 2>&1 | grep -a -E "fuzz:|error:|Executed"

$(DATA_DIR)/train_000000.bin: | build
	launch/default-data.sh data/default.txt
	$(BIN) prepare --input data/default.txt --out $(DATA_DIR)

run: build $(DATA_DIR)/train_000000.bin
	launch/local.sh -n 2 -- train --data $(DATA_DIR) --out $(RUN_DIR) \
	  --n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --batch-size 12 --max-steps 3000 \
	  --lr 1e-3 --min-lr 1e-4 --warmup-steps 100 --beta2 0.99 --no-bias --eval-every 500 --log-every 250 --overwrite
	@echo "--- a sample from the trained model:"
	$(BIN) generate --checkpoint $(RUN_DIR) --prompt "The " --max-new-tokens 200 --seed 1
	@echo "--- the whole validation split:"
	$(BIN) eval --checkpoint $(RUN_DIR)
	$(BIN) plot $(RUN_DIR)
	@echo "--- curves: open $(RUN_DIR)/loss.svg in a browser, or: tensorboard --logdir $(RUN_DIR)/tb"

# Benchmarks: tessera's configurations on 1 rank × 2 threads and 2 ranks × 1 thread, weak
# scaling (1 vs 2 ranks, same per-rank batch), and the PyTorch eager reference when
# `make bench-reference-setup` has installed it. JSON lines go to bench/results.jsonl.
BENCH_CONFIGS ?= --config tiny --config small --config gpt2 --config gpt2-1k
BENCH_STEPS ?= --warmup 2 --steps 5
REF_PY := .venv-ref/bin/python
# nanoGPT's own model.py for the reference, when a checkout sits beside the repository.
NANOGPT ?= ../nanogpt
REF = $(REF_PY) Benchmarks/reference/torch_gpt.py --threads 2 $(BENCH_CONFIGS) --precision fp32 --precision bf16 \
  --warmup 3 $$( [ -f $(NANOGPT)/model.py ] && echo --nanogpt $(NANOGPT) ) | tee -a bench/reference.jsonl
bench: build
	@mkdir -p bench; rm -f bench/results.jsonl bench/reference.jsonl
	@echo "machine: $$(lscpu | sed -n 's/^Model name: *//p'), $$(nproc) cores, $$(free -g | awk '/Mem:/{print $$2}') GiB"
	@if [ -x $(REF_PY) ]; then echo "--- PyTorch eager reference (2 threads), run 1"; $(REF); \
	else echo "--- (no PyTorch reference: run 'make bench-reference-setup' to compare)"; fi
	@echo "--- 1 rank × 2 threads"
	$(BIN) bench $(BENCH_CONFIGS) --precision fp32 --precision bf16 $(BENCH_STEPS) --threads 2 \
	  --json bench/results.jsonl --reference bench/reference.jsonl
	@if [ -x $(REF_PY) ]; then echo "--- PyTorch eager reference, run 2 (after tessera's)"; $(REF); \
	  echo "--- tessera against PyTorch's best run"; $(REF_PY) Benchmarks/reference/compare.py; fi
	@echo "--- 2 ranks × 1 thread (same global batch)"
	launch/local.sh -n 2 -- bench $(BENCH_CONFIGS) --precision fp32 --precision bf16 $(BENCH_STEPS) --threads 1 \
	  --json bench/results.jsonl
	@echo "--- weak scaling: 1 rank × 1 thread vs 2 ranks × 1 thread, same per-rank batch (DDP)"
	$(BIN) bench --config small --precision fp32 $(BENCH_STEPS) --threads 1 --json bench/results.jsonl
	launch/local.sh -n 2 -- bench --config small --precision fp32 $(BENCH_STEPS) --threads 1 --per-rank-batch --json bench/results.jsonl
	@echo "--- activation recomputation: none, selective, full (small, 1 rank × 2 threads)"
	$(BIN) bench --config small --precision fp32 --recompute none --recompute selective --recompute full $(BENCH_STEPS) \
	  --threads 2 --json bench/results.jsonl
	@echo "--- attention: fused, unfused (small and gpt2-1k, 1 rank × 2 threads)"
	$(BIN) bench --config small --config gpt2-1k --precision fp32 --attention fused --attention unfused $(BENCH_STEPS) \
	  --threads 2 --json bench/results.jsonl
	@echo "results: bench/results.jsonl"

# DDP, ZeRO-3, local SGD and PowerSGD across two network-namespace hosts at unlimited,
# 1 Gbit/s and 100 Mbit/s links, then DDP, ZeRO-3 and hybrid sharding on 2 hosts × 2 ranks
# (root; about 40 minutes on 2 cores; BENCH_NETWORK_MODES=powersgd,shard-group runs a subset).
bench-network: build
	Benchmarks/network.sh

# PyTorch for the benchmark reference only (never needed by tessera or CI).
bench-reference-setup:
	python3 -m venv .venv-ref && .venv-ref/bin/pip install -q torch numpy

# Regenerates the PyTorch reference fixture (needs network access to PyPI; never run by CI).
fixture: bench-reference-setup
	.venv-ref/bin/python Tests/reference/make_fixture.py

clean:
	rm -rf .build runs data
