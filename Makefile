# clipserve: `make demo` runs the main job on the bundled sample dataset, `make test` runs the suite.
# Both create the virtual environment (.venv) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/sample-k400
# e.g. make demo DEMO_ARGS=--keep-serving (the page stays up until Ctrl-C)
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: all venv demo test bench bench-long image clean

all: venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision first, pinned to the builds this machine has on disk (see README)
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[test,dali]"
	touch $(STAMP)

demo: venv
	$(BIN)/python -m clipserve.demo --root $(DEMO_DIR) $(DEMO_ARGS)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the quick CPU benchmarks (each prints JSON and a one-line summary; figures in docs/benchmarks.md)
bench: venv
	$(BIN)/python benchmarks/index.py
	$(BIN)/python benchmarks/index_memory.py
	$(BIN)/python benchmarks/augment.py
	$(BIN)/python benchmarks/cpu_executor.py --quick
	$(BIN)/python benchmarks/ring.py
	$(BIN)/python benchmarks/service.py

# longer runs: learning (--quick: 11 min on 2 cores, a smoke run; the full table is 24 min), REST load, memory over 10,000 batches
bench-long: venv
	$(BIN)/python benchmarks/learning.py --quick
	$(BIN)/python benchmarks/load.py
	$(BIN)/python benchmarks/memory.py

# the container image (docker/Dockerfile) built with buildah and run once inside (as root; minutes and ~12 GB;
# not part of `make test`): a debootstrap base and this machine's wheel indexes, see docs/docker.md
image:
	bash docker/build-image.sh
	bash docker/smoke-image.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
