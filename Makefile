# pneumoscan: `make test` and `make demo` build their own environment from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PNEUMOSCAN_DATA ?= data/chest_xray
RUN_DIR ?= runs/demo
export PNEUMOSCAN_DATA

.PHONY: env test demo bench browser clean

env: $(VENV)/.installed

# torch/torchvision are pinned to the releases this project is tested with (pip finds them on local disk here).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The browser test drives Debian's Chromium; a missing browser is a test failure, so install it here.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: env browser
	$(BIN)/pytest -q

demo: env
	$(BIN)/pneumoscan audit "$(PNEUMOSCAN_DATA)" --figure $(RUN_DIR)/audit.png --json-out $(RUN_DIR)/audit.json
	$(BIN)/pneumoscan train --data "$(PNEUMOSCAN_DATA)" --task pneumonia --out $(RUN_DIR)/pneumonia
	$(BIN)/pneumoscan evaluate $(RUN_DIR)/pneumonia/bundle $(RUN_DIR)/pneumonia/split.csv --split val --out $(RUN_DIR)/pneumonia/eval-val

bench: env
	$(BIN)/python benchmarks/bench_cache.py

clean:
	rm -rf $(VENV) runs .pytest_cache
