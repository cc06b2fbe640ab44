# make demo  — pretrain SimCLR on Fashion-MNIST, probe with 100 labels, compare with a CNN
# make test  — the test suite
# make bench — throughput benchmarks
# make bench-peers — kerassl's train step side by side with PyTorch + lightly (issue 15).
#   Creates a SEPARATE venv, .venv-peers, with torch, torchvision and lightly from PyPI
#   (benchmarks/peers/requirements.txt): never a kerassl dependency, never run by CI.
#   PyPI's torch wheels are CUDA builds of several GB (5.5 GB installed; PyPI has no
#   CPU-only wheel); they run on the CPU. Takes ~30-40 min on 2 cores.
# Each target creates .venv and installs kerassl into it on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: demo test bench bench-peers data lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist when apt is usable; otherwise kerassl
# falls back to $$KERASSL_DATA_DIR or TFDS (see README, "Where data comes from").
data:
	@if [ ! -d $(FASHION) ] && command -v apt-get >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	    || echo "note: could not install dataset-fashion-mnist; kerassl will look in KERASSL_DATA_DIR or TFDS"; \
	fi

demo: $(VENV)/.installed data
	$(PY) -m kerassl.train simclr --dataset fashion_mnist --labels 100 --time-budget 3m --run-name demo-$$(date +%Y%m%d-%H%M%S)

test: $(VENV)/.installed data
	$(PY) -m pytest -q

bench: $(VENV)/.installed data
	$(PY) benchmarks/throughput.py

PEERS ?= .venv-peers

$(PEERS)/.installed: benchmarks/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS)
	echo '*' > $(PEERS)/.gitignore  # git never sees the 5.5 GB venv
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -r benchmarks/peers/requirements.txt
	touch $@

bench-peers: $(VENV)/.installed $(PEERS)/.installed
	$(PY) benchmarks/peers/run.py --peer-python $(PEERS)/bin/python $(BENCH_PEERS_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check kerassl tests benchmarks
	$(VENV)/bin/ruff format --check kerassl tests benchmarks

clean:
	rm -rf $(VENV) $(PEERS) runs build *.egg-info
