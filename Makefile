# make demo  — pretrain SimCLR on Fashion-MNIST, probe with 100 labels, compare with a CNN
# make test  — the test suite
# make bench — throughput benchmarks
# Each target creates .venv and installs kerassl into it on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: demo test bench data lint clean

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

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check kerassl tests benchmarks
	$(VENV)/bin/ruff format --check kerassl tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
