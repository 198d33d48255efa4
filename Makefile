# medres: `make demo` sets up and runs the main job; `make test` sets up and runs all tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT := demo-out
DEMO_PORT ?= 8501
DEMO_PASSWORD := $(shell $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(9))")
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test lint format clean chromium services

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV): pip, torch 2.13.0 (the CPU wheel), then medres with its dev extra"
	$(BIN)/pip install --progress-bar off --upgrade pip
	$(BIN)/pip install --progress-bar off torch==2.13.0
	$(BIN)/pip install --progress-bar off -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/medres ingest examples/chest_xray_small --labels examples/chest_xray_small/labels.csv \
		-o $(DEMO_OUT)/cohort.parquet
	$(BIN)/medres split $(DEMO_OUT)/cohort.parquet --keep-column split \
		-o $(DEMO_OUT)/cohort_split.parquet
	$(BIN)/medres audit $(DEMO_OUT)/cohort_split.parquet
	$(BIN)/medres train --cohort $(DEMO_OUT)/cohort_split.parquet --epochs 15 \
		--set class_names=0=normal,1=pneumonia -o $(DEMO_OUT)/bundle
	$(BIN)/medres evaluate $(DEMO_OUT)/bundle $(DEMO_OUT)/cohort_split.parquet --split test \
		-o $(DEMO_OUT)/report
	mkdir -p $(DEMO_OUT)/incoming
	cp examples/chest_xray_small/test/*.png examples/broken_scans/* $(DEMO_OUT)/incoming/
	$(BIN)/medres predict $(DEMO_OUT)/bundle $(DEMO_OUT)/incoming -o $(DEMO_OUT)/predictions --explain
	@echo "demo done: bundle in $(DEMO_OUT)/bundle (model_card.md), test report in $(DEMO_OUT)/report (report.md),"
	@echo "predictions in $(DEMO_OUT)/predictions (predictions.csv, failures.csv, explain/ heatmaps)"
	$(BIN)/medres review load $(DEMO_OUT)/predictions --store $(DEMO_OUT)/review.db
	@printf '%s\n' "$(DEMO_PASSWORD)" | $(BIN)/medres review add-user demo \
		--store $(DEMO_OUT)/review.db --password-stdin
	@echo ""
	@echo "review app: http://127.0.0.1:$(DEMO_PORT)   sign in as: demo   password: $(DEMO_PASSWORD)"
	@echo "(Ctrl-C stops the server)"
	$(BIN)/medres review serve --store $(DEMO_OUT)/review.db --port $(DEMO_PORT)

lint: $(STAMP)
	$(BIN)/ruff check medres tests app benchmarks
	$(BIN)/ruff format --check medres tests app benchmarks
	$(BIN)/lint-imports  # the layering contract in pyproject.toml [tool.importlinter]

# the browser test drives Debian's chromium (Playwright cannot download a browser here)
chromium:
	test -x /usr/bin/chromium || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

# the PACS tests start Debian's Orthanc (with its DICOMweb plugin), DCMTK's storescu/echoscu as an
# independent client, and dicom3tools' dciodvfy as the validator of every object medres writes;
# the review store's tests start a PostgreSQL server (Unix socket only) from Debian's postgresql
services:
	test -x /usr/sbin/Orthanc -a -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so \
		-a -x /usr/bin/storescu -a -x /usr/bin/dciodvfy -a -d /usr/lib/postgresql \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y orthanc orthanc-dicomweb \
		dcmtk dicom3tools postgresql)

test: lint chromium services
	$(BIN)/pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix medres tests app benchmarks
	$(BIN)/ruff format medres tests app benchmarks

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache .import_linter_cache
