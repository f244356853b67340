# Tessera: `make run` trains a small model on 2 ranks; `make test` runs every test.
SHELL := /bin/bash
APT_PACKAGES := libopenblas-dev libopenmpi-dev openmpi-bin libzstd-dev pkg-config fortunes
BIN := .build/release/tessera
RUN_DIR ?= runs/demo
DATA_DIR ?= data/default

.PHONY: setup build test run bench fixture clean

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

$(DATA_DIR)/train.bin: | build
	launch/default-data.sh data/default.txt
	$(BIN) prepare --input data/default.txt --out $(DATA_DIR)

run: build $(DATA_DIR)/train.bin
	launch/local.sh -n 2 -- train --data $(DATA_DIR) --out $(RUN_DIR) \
	  --n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --batch-size 12 --max-steps 600 \
	  --lr 1e-3 --min-lr 1e-4 --warmup-steps 50 --beta2 0.99 --no-bias --eval-every 200 --log-every 50
	@echo "--- a sample from the trained model:"
	$(BIN) generate --checkpoint $(RUN_DIR) --prompt "The " --max-new-tokens 200 --seed 1

# Regenerates the PyTorch reference fixture (needs network access to PyPI; never run by CI).
fixture:
	python3 -m venv .venv-ref && .venv-ref/bin/pip install -q torch numpy
	.venv-ref/bin/python Tests/reference/make_fixture.py

clean:
	rm -rf .build runs data
