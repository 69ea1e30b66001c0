# pneumoscan: `make test` and `make demo` build their own environment from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PNEUMOSCAN_DATA ?= data/chest_xray
RUN_DIR ?= runs/demo
DEMO_MINUTES ?= 11
REFERENCE_MINUTES ?= 3
BEST_EPOCHS ?= 6
BEST_SIZE ?= 192
BEST_ETIOLOGY_LITE0_EPOCHS ?= 6
BEST_ETIOLOGY_LITE2_EPOCHS ?= 3
REFERENCE_DIR ?= runs/reference
FHIR_VALIDATOR := .cache/fhir-validator
export PNEUMOSCAN_DATA

.PHONY: env test typecheck demo demo-etiology demo-best demo-best-etiology reference bench browser pacs-server dicom-tools systemd rate-limit-store fhir-validator docs clean

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

# The PACS test runs a real Orthanc with its DICOMweb plugin; a missing server is a test failure, so install it here.
pacs-server:
	@(command -v Orthanc >/dev/null || test -x /usr/sbin/Orthanc) && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null)

# The DICOM conformance test validates every object pneumoscan writes with dicom3tools' dciodvfy and dcmtk's dsrdump,
# and the codec tests make HTJ2K films with OpenJPH's ojph_compress (no Python plugin encodes HTJ2K); a missing tool is
# a test failure, so install them here.
dicom-tools:
	@command -v dciodvfy >/dev/null && command -v dsrdump >/dev/null && command -v ojph_compress >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools dcmtk openjph-tools >/dev/null)

# The unit test checks deploy/pneumoscan.service with systemd's own systemd-analyze (verify, security); a missing one
# is a test failure, so install it here.
systemd:
	@command -v systemd-analyze >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null)

# The rate-limit test counts two services' allowances in a real Redis server (serve --rate-limit-storage); a missing
# server is a test failure, so install it here (the server alone, without the packages it recommends).
rate-limit-store:
	@command -v redis-server >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get --no-install-recommends install -y -qq redis-server >/dev/null)

# The FHIR conformance test validates every FHIR resource pneumoscan writes with FHIR's JSON Schemas (R4, R4B), FHIR.js
# and HL7's FHIRPath engine over the invariants of HL7's R4B core package, npm packages at the versions
# tests/fhir/package-lock.json pins; a missing validator is a test failure, so install them here (Node.js from Debian
# where there is none).
fhir-validator: $(FHIR_VALIDATOR)/node_modules/.installed

$(FHIR_VALIDATOR)/node_modules/.installed: tests/fhir/package.json tests/fhir/package-lock.json
	@command -v npm >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null)
	mkdir -p $(FHIR_VALIDATOR) && cp tests/fhir/package.json tests/fhir/package-lock.json $(FHIR_VALIDATOR)/
	npm ci --prefix $(FHIR_VALIDATOR) --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# One worker a CPU (tests/conftest.py); worksteal keeps them busy to the end though a few tests take 30 s. Bytecode
# is cached even where the shell sets PYTHONDONTWRITEBYTECODE: each worker, and each of the suite's many fresh
# interpreters, would otherwise compile the package's and the tests' sources again (5 s a worker's collection).
test: env browser pacs-server dicom-tools systemd rate-limit-store fhir-validator
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -q -n auto --dist worksteal

# mypy --strict over docs/python.md as a user's script, against the package's annotations (pneumoscan/py.typed),
# alone: `make test` runs it too.
typecheck: env
	$(BIN)/pytest -q tests/test_docs.py::test_the_python_page_type_checks_against_the_package

# audit -> train the default recipe -> evaluate on the patient-grouped validation split -> HTML report;
# then the full-size originals in val/ read with and without the training-source step, and the validation
# split with every film changed the same way (exposure, contrast, blur, grain, ...).
demo: env
	$(BIN)/pneumoscan audit "$(PNEUMOSCAN_DATA)" --figure $(RUN_DIR)/audit.png --json-out $(RUN_DIR)/audit.json
	$(BIN)/pneumoscan train --data "$(PNEUMOSCAN_DATA)" --task pneumonia --time-budget $(DEMO_MINUTES) --out $(RUN_DIR)/pneumonia
	$(BIN)/pneumoscan evaluate $(RUN_DIR)/pneumonia/bundle $(RUN_DIR)/pneumonia/split.csv --split val --out $(RUN_DIR)/pneumonia/eval-val
	$(BIN)/python benchmarks/bench_source.py $(RUN_DIR)/pneumonia/bundle
	$(BIN)/python benchmarks/bench_shift.py $(RUN_DIR)/pneumonia/bundle $(RUN_DIR)/pneumonia/split.csv

# The same recipe on bacterial vs viral pneumonia (the second stage of predict and serve).
demo-etiology: env
	$(BIN)/pneumoscan train --data "$(PNEUMOSCAN_DATA)" --task etiology --youden --time-budget $(DEMO_MINUTES) --out $(RUN_DIR)/etiology
	$(BIN)/pneumoscan evaluate $(RUN_DIR)/etiology/bundle $(RUN_DIR)/etiology/split.csv --split val --out $(RUN_DIR)/etiology/eval-val

# The stronger pneumonia recipe (about 2 h 15 min on 2 cores): 5-fold patient-grouped cross-validation of
# `make demo`'s recipe (BEST_SIZE px, at most BEST_EPOCHS epochs in DEMO_MINUTES a fold) and, on the same folds, of
# efficientnet_lite2 (192 px, BEST_EPOCHS epochs), then one ensemble bundle of all ten fold bundles calibrated on the
# out-of-fold scores (RUN_DIR/best/bundle): averaged out of fold, the two recipes ranked better than either alone on
# every fold, and better than `make demo`'s recipe with efficientnet_lite0 at 224 px (docs/results.md).
demo-best: env
	$(BIN)/pneumoscan cv --data "$(PNEUMOSCAN_DATA)" --task pneumonia --folds 5 --epochs $(BEST_EPOCHS) --time-budget $(DEMO_MINUTES) --image-size $(BEST_SIZE) --out $(RUN_DIR)/best/cv5-lite0
	$(BIN)/pneumoscan cv --data "$(PNEUMOSCAN_DATA)" --task pneumonia --folds 5 --epochs $(BEST_EPOCHS) --model efficientnet_lite2 --out $(RUN_DIR)/best/cv5-lite2
	$(BIN)/pneumoscan ensemble --cv $(RUN_DIR)/best/cv5-lite0 $(RUN_DIR)/best/cv5-lite2 --out $(RUN_DIR)/best/bundle

# The same for bacterial vs viral pneumonia (about 95 minutes): five folds with Youden's J thresholds, twice on the
# same folds (efficientnet_lite0 at 192 px for BEST_ETIOLOGY_LITE0_EPOCHS epochs, efficientnet_lite2 at 224 px for
# BEST_ETIOLOGY_LITE2_EPOCHS), then one ensemble bundle of all ten fold bundles calibrated on the out-of-fold scores
# (RUN_DIR/best-etiology/bundle): the two recipes err on different films (averaged out of fold, they ranked better
# than lite0 alone on every fold and than lite2 alone on four of five), and lite0's six epochs instead of three
# lifted the pair on four folds of five (docs/results.md).
demo-best-etiology: env
	$(BIN)/pneumoscan cv --data "$(PNEUMOSCAN_DATA)" --task etiology --youden --folds 5 --epochs $(BEST_ETIOLOGY_LITE0_EPOCHS) --out $(RUN_DIR)/best-etiology/cv5-lite0-192
	$(BIN)/pneumoscan cv --data "$(PNEUMOSCAN_DATA)" --task etiology --youden --folds 5 --epochs $(BEST_ETIOLOGY_LITE2_EPOCHS) --model efficientnet_lite2 --image-size 224 --out $(RUN_DIR)/best-etiology/cv5-lite2-224
	$(BIN)/pneumoscan ensemble --cv $(RUN_DIR)/best-etiology/cv5-lite0-192 $(RUN_DIR)/best-etiology/cv5-lite2-224 --out $(RUN_DIR)/best-etiology/bundle

# Every configs/reference/*.yaml trained for REFERENCE_MINUTES each into REFERENCE_DIR/NAME, then one table and
# one ROC figure of their validation figures (REFERENCE_DIR/compare.csv, compare.png). A config whose ImageNet
# weights can be neither read from the cache nor downloaded (train exits 3) is trained from scratch instead, into
# REFERENCE_DIR/NAME-scratch, and said so; a config that cannot train at all is named at the end and the target
# fails after comparing the rest.
reference: env
	@train() { $(BIN)/pneumoscan train --config "$$cfg" --data "$(PNEUMOSCAN_DATA)" --time-budget $(REFERENCE_MINUTES) "$$@"; }; \
	failed=""; runs=""; for cfg in configs/reference/*.yaml; do name=$$(basename $$cfg .yaml); \
	  out=$(REFERENCE_DIR)/$$name; train --out $$out; status=$$?; \
	  if [ $$status -eq 3 ]; then echo "$$name: no ImageNet weights here; training it from scratch as $$name-scratch" >&2; \
	    out=$(REFERENCE_DIR)/$$name-scratch; train --no-pretrained --out $$out; status=$$?; fi; \
	  if [ $$status -eq 0 ]; then runs="$$runs $$out"; else failed="$$failed $$name"; fi; done; \
	[ -z "$$runs" ] || $(BIN)/pneumoscan compare $$runs --out $(REFERENCE_DIR); \
	if [ -n "$$failed" ]; then echo "not trained:$$failed" >&2; exit 1; fi

bench: env
	$(BIN)/python benchmarks/bench_resample.py
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_precision.py
	$(BIN)/python benchmarks/bench_ci_coverage.py
	$(BIN)/python benchmarks/bench_startup.py
	$(BIN)/python benchmarks/bench_huffman.py
	$(BIN)/python benchmarks/bench_scale.py

# The user documentation (docs/, mkdocs.yml) as a static site in site/; a broken link or anchor fails the build.
docs: env
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site .pytest_cache
